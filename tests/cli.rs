//! The command-line programs (`train`, `verify`, `compare_losses`) as a careless or hostile user
//! meets them, through real processes: malformed, misspelt, non-UTF-8 and conflicting flags,
//! values too large for memory, a closed or full standard output, and an output folder in use.
//! Each run is small (the digits, one epoch) and takes well under a second.

mod common;

use margrad::loss::LossKind;
use margrad::train::CHECKPOINT_FILE;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// The built example `name`: `cargo test` builds the examples beside the tests
/// (target/<profile>/deps/<test> → target/<profile>/examples/<name>).
fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        path.exists(),
        "{} is not built: run `cargo test` without --test, or `cargo build --examples` first",
        path.display()
    );
    path
}

/// A path `name` in a scratch folder of its own, removed when the returned guard drops.
fn temp(name: &str) -> (common::Scratch, PathBuf) {
    common::scratch_path("cli", name)
}

fn command(name: &str, args: &[&str]) -> Command {
    let mut command = Command::new(example(name));
    command.args(args).stdin(Stdio::null());
    command
}

/// The exit code, standard output and standard error of `name` run with `args`.
fn finish(out: Output) -> (i32, String, String) {
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run(name: &str, args: &[&str]) -> (i32, String, String) {
    finish(command(name, args).output().unwrap())
}

/// The flags of a run that takes a fraction of a second.
const SMALL: [&str; 6] = ["--epochs", "1", "--hidden", "16", "--embed-dim", "8"];

fn small_run(out: &Path, more: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = SMALL.iter().map(|s| s.to_string()).collect();
    args.extend(["--out".to_string(), out.display().to_string()]);
    args.extend(more.iter().map(|s| s.to_string()));
    args
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Asserts exit code `code` and that standard error contains `message`, and no panic.
fn assert_refused(name: &str, args: &[&str], code: i32, message: &str) {
    let (status, _, stderr) = run(name, args);
    assert_eq!(status, code, "{name} {args:?}: {stderr}");
    assert!(stderr.contains(message), "{name} {args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{name} {args:?}: {stderr}");
}

fn status_of(out: &Path) -> String {
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    json["status"].as_str().unwrap().to_string()
}

#[test]
fn malformed_and_misspelt_flags_are_usage_errors_with_a_hint() {
    let cases: [(&[&str], &str); 8] = [
        (&["--bogus"], "unexpected argument '--bogus'"),
        (&["--epoch", "3"], "a similar argument exists: '--epochs'"),
        (
            &["--epochs", "ten"],
            "invalid value 'ten' for '--epochs <N>'",
        ),
        (&["--loss", "arcfce"], "a similar value exists: 'arcface'"),
        (&["--data", "mnist"], "--data-dir <PATH>"),
        (&["--epochs"], "a value is required for '--epochs <N>'"),
        (&["--resume"], "a value is required for '--resume <PATH>'"),
        (&["--hidden", "64,x"], "\"x\" is not a whole number"),
    ];
    for (args, message) in cases {
        assert_refused("train", args, 2, message);
    }
    assert_refused("verify", &[], 2, "--model <PATH>");
    assert_refused("verify", &["--model", "m", "--jsn"], 2, "'--json'");
    assert_refused("compare_losses", &["--seed", "2"], 2, "'--seeds'");
    assert_refused(
        "compare_losses",
        &["--losses", "am,tripplet"],
        2,
        "'tripplet'",
    );
    // runtime failures are not usage errors
    assert_refused(
        "train",
        &[
            "--data",
            "mnist",
            "--data-dir",
            "/nonexistent",
            "--epochs",
            "1",
        ],
        1,
        "/nonexistent/train-images-idx3-ubyte",
    );
    assert_refused(
        "train",
        &[
            "--resume",
            "/nonexistent/checkpoint.margrad",
            "--epochs",
            "1",
        ],
        1,
        "cannot resume from /nonexistent/checkpoint.margrad: /nonexistent/checkpoint.margrad:",
    );
    assert_refused(
        "verify",
        &["--model", "/nonexistent/checkpoint.margrad"],
        1,
        "error:",
    );
}

#[test]
fn an_argument_that_is_not_utf8_is_a_clear_error() {
    for name in ["train", "verify", "compare_losses"] {
        let (status, _, stderr) = finish(
            Command::new(example(name))
                .arg("--pairs")
                .arg(OsString::from_vec(b"6\xff00".to_vec()))
                .output()
                .unwrap(),
        );
        assert_eq!(status, 2, "{name}: {stderr}");
        assert!(stderr.contains("invalid UTF-8"), "{name}: {stderr}");
    }
    // a path need not be UTF-8
    let (status, _, stderr) = finish(
        Command::new(example("verify"))
            .arg("--model")
            .arg(OsString::from_vec(b"/nonexistent/\xff.bin".to_vec()))
            .output()
            .unwrap(),
    );
    assert_eq!(status, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn help_lists_every_loss_and_every_flag_with_its_default() {
    let (status, stdout, _) = run("train", &["--help"]);
    assert_eq!(status, 0);
    for kind in LossKind::ALL {
        assert!(stdout.contains(kind.name()), "{}: {stdout}", kind.name());
    }
    for flag in [
        "--loss <NAME>",
        "--m-nt <X>",
        "--big-m <X>",
        "--m1 <X>",
        "--fallback",
        "--hidden <LIST>",
        "--embed-dim <N>",
        "--batch-norm",
        "--momentum <X>",
        "--threads <N>",
        "--out <DIR>",
        "--overwrite",
        "--resume <PATH>",
        "--data <DATA>",
        "--holdout-classes <N>",
        "--test-per-identity <N>",
        "[default: runs/latest]",
        "[default: 6000]",
        "--adaface-h <X>",
        "--state-momentum <X>",
        "--magface-norms <LO,HI>",
        "--magface-margins <LO,HI>",
        "--lambda-g <X>",
        "--subcenters <K>",
        "--sphereface2-lambda <X>",
        "--sphereface2-t <X>",
        "--margin-std <X>",
        "[default: 0.333]",
        "[default: 10,110]",
    ] {
        assert!(stdout.contains(flag), "{flag}: {stdout}");
    }
    for name in ["verify", "compare_losses"] {
        let (status, stdout, _) = run(name, &["--help"]);
        assert_eq!(status, 0);
        assert!(stdout.contains("--data-dir <PATH>"), "{name}: {stdout}");
    }
}

#[test]
fn a_flag_the_run_would_not_read_is_refused_naming_the_conflict() {
    let cases: [(&[&str], &str); 10] = [
        (
            &["--data-dir", "/tmp"],
            "--data-dir is read only with --data mnist",
        ),
        (
            &["--data", "synthetic", "--data-dir", "/tmp"],
            "--data-dir is read only with --data mnist",
        ),
        (
            &["--identities", "50"],
            "--identities is read only with --data synthetic",
        ),
        (
            &[
                "--data",
                "mnist",
                "--data-dir",
                "/tmp",
                "--test-per-identity",
                "5",
            ],
            "--test-per-identity is read only with --data synthetic",
        ),
        (
            &["--m1", "1.2"],
            "--m1 is not read by --loss am: only by combined",
        ),
        (
            &["--loss", "arcface", "--m3", "0.1"],
            "--m3 is not read by --loss arcface: only by combined",
        ),
        (
            &["--m-nt", "0.1"],
            "--m-nt is not read by --loss am: only by enhanced",
        ),
        (
            &["--loss", "enhanced-margin-only", "--big-m", "2"],
            "--big-m is not read by --loss enhanced-margin-only: only by enhanced",
        ),
        (
            &["--fallback", "easy"],
            "--fallback is not read by --loss am: only by arcface, combined",
        ),
        (
            &["--momentum", "0.5"],
            "--momentum is read only by --optimizer sgd, not adam",
        ),
    ];
    for (args, message) in cases {
        assert_refused("train", args, 2, message);
    }
    assert_refused(
        "train",
        &["--hidden", "", "--dropout", "0.1"],
        2,
        "--dropout is read only with hidden layers, and --hidden is empty",
    );
    assert_refused(
        "train",
        &["--hidden=", "--batch-norm"],
        2,
        "--batch-norm is read only with hidden layers",
    );
    assert_refused(
        "train",
        &["--loss", "softmax", "--margin", "0.2"],
        2,
        "--margin is not read by --loss softmax",
    );
    assert_refused(
        "train",
        &["--overwrite", "--resume", "x"],
        2,
        "'--overwrite' cannot be used with '--resume <PATH>'",
    );
    assert_refused(
        "verify",
        &["--model", "m", "--identities", "3"],
        2,
        "--identities is read only with --data synthetic",
    );
    assert_refused(
        "compare_losses",
        &["--losses", "softmax,normface", "--margin", "0.2"],
        2,
        "--margin is not read by any of --losses softmax,normface",
    );
    // a flag meaningful to some of the losses compared is accepted: the runs below start
    let (_scratch, out) = temp("compare-some-read");
    let (status, _, stderr) = run(
        "compare_losses",
        &[
            "--losses",
            "normface,am",
            "--margin",
            "0.2",
            "--seeds",
            "1",
            "--epochs",
            "1",
            "--out",
        ]
        .iter()
        .copied()
        .chain([out.to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert_eq!(status, 0, "{stderr}");
    // and every flag a run reads is accepted with its loss
    let (_scratch, out) = temp("read");
    for (loss, flags) in [
        ("enhanced", &["--m-nt", "0.2", "--big-m", "1.5"][..]),
        (
            "combined",
            &[
                "--m1",
                "1.1",
                "--m2",
                "0.2",
                "--m3",
                "0.1",
                "--fallback",
                "easy",
            ],
        ),
        ("arcface", &["--fallback", "none", "--margin", "0.3"]),
    ] {
        let dir = out.join(loss);
        let mut args = small_run(&dir, &["--loss", loss]);
        args.extend(flags.iter().map(|s| s.to_string()));
        let (status, _, stderr) = run("train", &strs(&args));
        assert_eq!(status, 0, "{loss}: {stderr}");
    }
    let sgd = small_run(
        &out.join("sgd"),
        &["--optimizer", "sgd", "--momentum", "0.5"],
    );
    assert_eq!(run("train", &strs(&sgd)).0, 0);
}

#[test]
fn every_example_checks_its_settings_as_the_library_does() {
    // one rule for the pairs, wherever they are given
    assert_refused(
        "train",
        &["--pairs", "10"],
        2,
        "invalid pairs = 10: must be at least 20",
    );
    assert_refused(
        "verify",
        &[
            "--model",
            "/nonexistent/checkpoint.margrad",
            "--pairs",
            "10",
        ],
        2,
        "invalid pairs = 10: must be at least 20",
    );
    assert_refused(
        "compare_losses",
        &["--pairs", "10"],
        2,
        "invalid pairs = 10: must be at least 20",
    );
    assert_refused(
        "train",
        &["--margin", "-1"],
        2,
        "invalid cosine margin m = -1: must be non-negative",
    );
    assert_refused("train", &["--dropout", "1"], 2, "invalid dropout = 1");
    assert_refused("train", &["--hidden", "64,0"], 2, "error:");
    // invalid settings stop compare_losses before any run, with a usage error
    assert_refused(
        "compare_losses",
        &["--margin", "-1", "--losses", "am"],
        2,
        "invalid cosine margin m = -1",
    );
    assert_refused("compare_losses", &["--seeds", "0"], 2, "invalid seeds = 0");
    // a loss named twice would refuse its own output folder on the second run
    assert_refused(
        "compare_losses",
        &["--losses", "am,arcface,am"],
        2,
        "--losses names am twice",
    );
    assert_refused(
        "compare_losses",
        &["--epochs", "0"],
        2,
        "invalid epochs = 0",
    );
}

#[test]
fn values_too_large_for_memory_are_errors_naming_the_flag_not_panics() {
    let (_scratch, out) = temp("too-large");
    let cases: [(&[&str], &str); 6] = [
        (
            &["--threads", "100000000"],
            "threads = 100000000 is too large",
        ),
        (
            &["--embed-dim", "10000000000"],
            "embed_dim = 10000000000 is too large",
        ),
        (
            &["--hidden", "18446744073709551615"],
            "hidden = 18446744073709551615 is too large",
        ),
        (
            &[
                "--data",
                "synthetic",
                "--test-per-identity",
                "18446744073709551615",
            ],
            "test_per_identity = 18446744073709551615 is too large",
        ),
        (
            &["--pairs", "18446744073709551615"],
            "pairs = 18446744073709551615 is too large",
        ),
        (&["--pairs", "1000000000000"], "GiB) available"),
    ];
    for (args, message) in cases {
        let mut all = args.to_vec();
        all.extend(["--epochs", "1", "--out", out.to_str().unwrap()]);
        assert_refused("train", &all, 1, message);
        assert!(!out.exists(), "{args:?}: nothing written");
    }
    let mut verify = vec!["--model", "/nonexistent/checkpoint.margrad"];
    verify.extend(["--pairs", "18446744073709551615"]);
    assert_refused(
        "verify",
        &verify,
        1,
        "pairs = 18446744073709551615 is too large",
    );
}

/// A pipe whose reading end is already closed, as `| head -1` leaves it.
fn closed_pipe() -> std::io::PipeWriter {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    writer
}

#[test]
fn a_closed_stdout_stops_the_printing_not_the_run() {
    let (_scratch, out) = temp("closed-pipe");
    let args = small_run(&out, &[]);
    let result = command("train", &strs(&args))
        .stdout(closed_pipe())
        .output()
        .unwrap();
    let (status, _, stderr) = finish(result);
    assert_eq!(status, 0, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(status_of(&out), "complete");
    assert!(out.join(CHECKPOINT_FILE).exists());

    let model = out.join(CHECKPOINT_FILE);
    let result = command("verify", &["--model", model.to_str().unwrap()])
        .stdout(closed_pipe())
        .output()
        .unwrap();
    let (status, _, stderr) = finish(result);
    assert_eq!((status, stderr.as_str()), (0, ""));

    let (_scratch, compared) = temp("closed-pipe-compare");
    let result = command(
        "compare_losses",
        &["--losses", "am", "--seeds", "1", "--epochs", "1", "--out"],
    )
    .arg(&compared)
    .stdout(closed_pipe())
    .output()
    .unwrap();
    let (status, _, stderr) = finish(result);
    assert_eq!((status, stderr.as_str()), (0, ""));
    assert_eq!(status_of(&compared.join("am-seed0")), "complete");
}

#[test]
fn a_full_stdout_is_reported_once_and_fails_after_the_run_is_saved() {
    let Ok(full) = std::fs::File::create("/dev/full") else {
        eprintln!("note: no /dev/full here, not checked");
        return;
    };
    let (_scratch, out) = temp("dev-full");
    let args = small_run(&out, &[]);
    let result = command("train", &strs(&args))
        .stdout(full.try_clone().unwrap())
        .output()
        .unwrap();
    let (status, _, stderr) = finish(result);
    assert_eq!(status, 1, "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        stderr.matches("cannot write to standard output").count(),
        1,
        "{stderr}"
    );
    assert_eq!(status_of(&out), "complete");
    let model = out.join(CHECKPOINT_FILE);
    for (name, args) in [
        ("verify", vec!["--model", model.to_str().unwrap()]),
        ("verify", vec!["--model", model.to_str().unwrap(), "--json"]),
    ] {
        let result = command(name, &args)
            .stdout(full.try_clone().unwrap())
            .output()
            .unwrap();
        let (status, _, stderr) = finish(result);
        assert_eq!(status, 1, "{name}: {stderr}");
        assert!(
            stderr.contains("cannot write to standard output"),
            "{stderr}"
        );
    }
    let (_scratch, compared) = temp("dev-full-compare");
    let result = command(
        "compare_losses",
        &["--losses", "am", "--seeds", "1", "--epochs", "1", "--out"],
    )
    .arg(&compared)
    .stdout(full)
    .output()
    .unwrap();
    let (status, _, stderr) = finish(result);
    assert_eq!(status, 1, "{stderr}");
    assert_eq!(status_of(&compared.join("am-seed0")), "complete");
}

#[test]
fn a_run_owns_its_output_folder() {
    let (_scratch, out) = temp("owned");
    let first = small_run(&out, &[]);
    assert_eq!(run("train", &strs(&first)).0, 0);
    let model = std::fs::read(out.join(CHECKPOINT_FILE)).unwrap();
    // the same command again: refused, the first run's files untouched
    let (status, _, stderr) = run("train", &strs(&first));
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert!(stderr.contains("--overwrite"), "{stderr}");
    assert_eq!(std::fs::read(out.join(CHECKPOINT_FILE)).unwrap(), model);
    // told to overwrite, it replaces them
    let overwrite = small_run(&out, &["--overwrite", "--seed", "1"]);
    let (status, _, stderr) = run("train", &strs(&overwrite));
    assert_eq!(status, 0, "{stderr}");
    assert_ne!(std::fs::read(out.join(CHECKPOINT_FILE)).unwrap(), model);
    // a user's file in the folder: the overwrite is refused and deletes nothing
    std::fs::write(out.join("notes.txt"), b"mine").unwrap();
    let (status, _, stderr) = run("train", &strs(&overwrite));
    assert_eq!(status, 1, "{stderr}");
    assert!(
        stderr.contains("it holds notes.txt, which no run writes"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
    assert!(out.join("metrics.json").exists());
    // resuming continues in the folder
    let checkpoint = out.join(CHECKPOINT_FILE);
    let resume = small_run(
        &out,
        &[
            "--seed",
            "1",
            "--epochs",
            "2",
            "--resume",
            checkpoint.to_str().unwrap(),
        ],
    );
    let (status, stdout, stderr) = run("train", &strs(&resume));
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains("resumed from"), "{stdout}");
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"mine");
    // compare_losses' runs own theirs too
    let (_scratch, compared) = temp("owned-compare");
    let args = ["--losses", "am", "--seeds", "1", "--epochs", "1", "--out"];
    let compare = |more: &[&str]| {
        let result = command("compare_losses", &args)
            .arg(&compared)
            .args(more)
            .output()
            .unwrap();
        finish(result)
    };
    assert_eq!(compare(&[]).0, 0);
    let (status, stdout, stderr) = compare(&[]);
    assert_eq!(status, 1, "{stderr}");
    assert!(stderr.contains("is not empty"), "{stderr}");
    assert!(!stdout.contains("did not converge"), "{stdout}");
    assert_eq!(compare(&["--overwrite"]).0, 0);
}

#[test]
fn the_benchmark_and_demonstration_examples_parse_as_the_others_do() {
    let dir = std::env::temp_dir().to_string_lossy().into_owned();
    assert_refused(
        "reference_step",
        &[&dir, "64", "10", "100000000"],
        2,
        "100000000 is not in 1..=1024",
    );
    assert_refused(
        "reference_step",
        &[&dir, "64", "ten", "1"],
        2,
        "invalid value 'ten'",
    );
    assert_refused(
        "reference_head_step",
        &[&dir, "8", "100", "1", "--sample-rate", "2"],
        2,
        "must be in (0, 1], found 2",
    );
    assert_refused(
        "reference_head_step",
        &[&dir, "8", "100", "1", "--block", "0"],
        2,
        "invalid value '0' for '--block <N>'",
    );
    assert_refused("lenet_mnist", &[&dir, "0"], 2, "invalid value '0'");
    // a missing data folder is an error naming it, after parsing
    let missing = format!("{dir}/margrad-no-such-folder");
    assert_refused(
        "reference_step",
        &[&missing, "64", "10", "1"],
        1,
        "margrad-no-such-folder",
    );
}

#[test]
fn the_cnn_step_refuses_bad_arguments_and_data_files() {
    let (_scratch, dir) = temp("cnn-step");
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    assert_refused("reference_cnn_step", &[d, "0", "10", "1"], 2, "0 is not in");
    assert_refused(
        "reference_cnn_step",
        &[d, "64", "10", "0"],
        2,
        "0 is not in 1..=1024",
    );
    assert_refused(
        "reference_cnn_step",
        &[d, "64", "ten", "1"],
        2,
        "invalid value 'ten'",
    );
    assert_refused(
        "reference_cnn_step",
        &[d, "64", "10", "1", "--bogus"],
        2,
        "'--bogus'",
    );
    // a missing file is named
    assert_refused("reference_cnn_step", &[d, "1", "2", "1"], 1, "c1w.f32");
    // every file of a batch of 1 over 2 classes, zeros, then one broken at a time
    let files: [(&str, usize); 13] = [
        ("c1w", 32 * 9),
        ("c1b", 32),
        ("c2w", 32 * 32 * 9),
        ("c2b", 32),
        ("c3w", 64 * 32 * 9),
        ("c3b", 64),
        ("c4w", 64 * 64 * 9),
        ("c4b", 64),
        ("Wf", 3136 * 128),
        ("bf", 128),
        ("W", 128 * 2),
        ("x", 28 * 28),
        ("y", 1),
    ];
    for (name, n) in files {
        let ext = if name == "y" { "i32" } else { "f32" };
        std::fs::write(dir.join(format!("{name}.{ext}")), vec![0u8; 4 * n]).unwrap();
    }
    // a file whose size does not fit its shape is refused before it is read
    std::fs::write(dir.join("c3w.f32"), [0u8; 7]).unwrap();
    assert_refused(
        "reference_cnn_step",
        &[d, "1", "2", "1"],
        1,
        "c3w.f32: 7 bytes, expected 73728",
    );
    std::fs::write(dir.join("c3w.f32"), vec![0u8; 4 * 64 * 32 * 9]).unwrap();
    // as is a label out of range, negative or too large
    std::fs::write(dir.join("y.i32"), (-1i32).to_le_bytes()).unwrap();
    assert_refused(
        "reference_cnn_step",
        &[d, "1", "2", "1"],
        1,
        "a negative label -1",
    );
    std::fs::write(dir.join("y.i32"), 2i32.to_le_bytes()).unwrap();
    assert_refused("reference_cnn_step", &[d, "1", "2", "1"], 1, "y.i32");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_model_is_chosen_by_name_and_checked_against_the_data_and_the_flags() {
    let (status, stdout, _) = run("train", &["--help"]);
    assert_eq!(status, 0);
    assert!(
        stdout.contains("--model <NAME>") && stdout.contains("lenet++"),
        "{stdout}"
    );
    assert!(
        stdout.contains("--augment") && stdout.contains("--erase <P>"),
        "{stdout}"
    );
    let cases: [(&[&str], &str); 7] = [
        (
            &["--model", "lenet++"],
            "the data does not fit the model: --model lenet++ takes 28×28 grey images, --data \
             digits gives 8×8 images",
        ),
        (
            &["--model", "resnet", "--data", "synthetic"],
            "--data synthetic gives features, not images",
        ),
        (
            &["--model", "resnet", "--hidden", "64"],
            "--hidden is read only by --model mlp, not resnet",
        ),
        (
            &["--model", "lenet++", "--batch-norm"],
            "--batch-norm is read only by --model mlp, not lenet++",
        ),
        (
            &["--model", "vgg"],
            "invalid value 'vgg' for '--model <NAME>'",
        ),
        (&["--erase", "0.5"], "--erase is read only with --augment"),
        (
            &["--augment", "--data", "synthetic"],
            "invalid augment = 1: must be used with image data only",
        ),
    ];
    for (args, message) in cases {
        assert_refused("train", args, 2, message);
    }
    assert_refused(
        "train",
        &["--augment", "--translate", "8"],
        2,
        "invalid translate = 8: must be smaller than the image's side",
    );
    assert_refused(
        "compare_losses",
        &["--model", "lenet++", "--losses", "am"],
        2,
        "--model lenet++ takes 28×28 grey images",
    );
    assert_refused(
        "compare_losses",
        &["--model", "resnet", "--dropout", "0.1"],
        2,
        "--dropout is read only by --model mlp, not resnet",
    );
}

#[test]
fn a_cnn_trained_from_the_command_line_verifies_to_the_same_figures() {
    let (_scratch, data) = temp("tiny-mnist");
    common::write_tiny_mnist(&data);
    let (_scratch, out) = temp("lenet");
    let data_flags = [
        "--data",
        "mnist",
        "--data-dir",
        data.to_str().unwrap(),
        "--pairs",
        "40",
    ];
    let mut args = vec!["--model", "lenet++", "--embed-dim", "8", "--epochs", "2"];
    args.extend(["--batch", "16", "--augment", "--erase", "0.2", "--out"]);
    args.push(out.to_str().unwrap());
    args.extend(data_flags);
    let (status, stdout, stderr) = run("train", &args);
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains("training lenet++ with am"), "{stdout}");
    let checkpoint = out.join(CHECKPOINT_FILE);
    let mut verify = vec!["--model", checkpoint.to_str().unwrap(), "--json"];
    verify.extend(data_flags);
    let (status, json, stderr) = run("verify", &verify);
    assert_eq!(status, 0, "{stderr}");
    let verified: serde_json::Value = serde_json::from_str(&json).unwrap();
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(verified, metrics["final"]);
    assert_eq!(metrics["config"]["model"], "lenet++");
    assert_eq!(metrics["config"]["augment"]["erase"], 0.2);
    // the model's images are not the digits'
    assert_refused(
        "verify",
        &["--model", checkpoint.to_str().unwrap()],
        1,
        "the model takes 784 features",
    );
}

#[test]
fn a_newer_loss_trains_resumes_and_verifies_from_the_command_line_with_its_papers_defaults() {
    let (_scratch, out) = temp("curricularface");
    let mut args = small_run(&out, &["--loss", "curricularface", "--epochs", "2"]);
    let (status, stdout, stderr) = run("train", &strs(&args));
    assert_eq!(status, 0, "{stderr}");
    // the paper's s and m when --scale and --margin are not given
    assert!(
        stdout.contains("with curricularface (s = 64, m = 0.5)"),
        "{stdout}"
    );
    let metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(metrics["config"]["loss"]["kind"], "curricularface");
    assert_eq!(metrics["config"]["loss"]["extra"]["state_momentum"], 0.01);
    assert_eq!(metrics["model"]["head"]["Extended"]["classes"], 10);
    // continued for a third epoch from the checkpoint, its t included
    let checkpoint = out.join(CHECKPOINT_FILE);
    args.extend(["--epochs", "3", "--resume"].map(String::from));
    args.push(checkpoint.display().to_string());
    let (status, stdout, stderr) = run("train", &strs(&args));
    assert_eq!(status, 0, "{stderr}");
    assert!(stdout.contains("resumed from"), "{stdout}");
    let (status, _, stderr) = run("verify", &["--model", checkpoint.to_str().unwrap()]);
    assert_eq!(status, 0, "{stderr}");
}

#[test]
fn the_newer_losses_flags_are_refused_where_not_read_or_out_of_range() {
    let cases: [(&[&str], i32, &str); 7] = [
        (
            &["--loss", "adaface", "--subcenters", "2"],
            2,
            "--subcenters is not read by --loss adaface: only by subcenter-arcface",
        ),
        (
            &["--state-momentum", "0.1"],
            2,
            "--state-momentum is not read by --loss am: only by adaface, curricularface",
        ),
        (
            &["--loss", "magface", "--margin", "0.3"],
            2,
            "--margin is not read by --loss magface",
        ),
        (
            &["--loss", "elasticface-cos", "--lambda-g", "10"],
            2,
            "--lambda-g is not read by --loss elasticface-cos: only by magface",
        ),
        (
            &["--loss", "sphereface2", "--sphereface2-lambda", "1.5"],
            2,
            "invalid SphereFace2 λ = 1.5: must be in (0, 1)",
        ),
        (
            &["--loss", "magface", "--magface-norms", "10"],
            2,
            "\"10\" is not two numbers LO,HI",
        ),
        (
            &["--loss", "subcenter-arcface", "--subcenters", "0"],
            2,
            "invalid sub-centres per class K = 0: must be at least 1",
        ),
    ];
    for (args, code, message) in cases {
        assert_refused("train", args, code, message);
    }
    // compare_losses names the new losses too, and checks its flags against each
    assert_refused(
        "compare_losses",
        &["--losses", "magface,sphereface2", "--margin", "-1"],
        2,
        "sphereface2: invalid SphereFace2 margin m = -1",
    );
}
