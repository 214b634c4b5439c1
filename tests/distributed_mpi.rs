//! Training over MPI ranks, through real `mpirun` runs of `examples/distributed_step.rs` and
//! of the trainer (`examples/train.rs --distributed`): 2 ranks (and 3, oversubscribed on 2
//! cores) train as one process does on the same global batch, data- and class-parallel; a
//! checkpoint saved by 2 ranks resumes on 3 and in one process; a rank with bad data, a rank
//! that panics and ranks started with different settings stop every rank with a clear
//! message. Every run is bounded by `timeout`, so a hang fails the test instead of blocking CI
//! ([`common::mpi`]).
//!
//! Needs the `mpi` feature and Open MPI (`mpirun`); build the examples first:
//! `cargo build --release --features mpi --example distributed_step --example train`.
#![cfg(feature = "mpi")]

mod common;

use common::mpi::{Program, rank_errors, with_value};
use serde_json::Value;
use std::path::PathBuf;
use std::process::Output;

/// The built `distributed_step` example.
fn example() -> Program {
    Program::example("distributed_step")
}

/// A small problem: 20 inputs, 16 hidden, 8-d embedding, 31 classes (shards of unequal sizes)
/// in blocks of 4, global batch 12 (a multiple of 1, 2 and 3), 8 steps of SGD.
const SMALL: &[&str] = &[
    "--batch",
    "12",
    "--steps",
    "8",
    "--warmup",
    "0",
    "--input",
    "20",
    "--hidden",
    "16",
    "--embed",
    "8",
    "--classes",
    "31",
    "--block",
    "4",
    "--lr",
    "0.05",
];

/// Runs the example with `args` on `ranks` ranks under `mpirun` (`ranks = 0`: one process
/// without `mpirun`).
fn run(ranks: usize, args: &[&str]) -> Output {
    example().run(ranks, args)
}

/// A path `name` in a scratch folder of its own, removed when the returned guard drops.
fn temp(name: &str) -> (common::Scratch, PathBuf) {
    common::scratch_path("mpi", name)
}

/// Trains on `ranks` ranks and returns rank 0's `--out`.
fn train(ranks: usize, mode: &str) -> Value {
    let (_scratch, out) = temp(&format!("{mode}-{ranks}.json"));
    let path = out.to_str().unwrap();
    let output = run(
        ranks,
        &[&["--mode", mode, "--check", "--out", path], SMALL].concat(),
    );
    assert!(
        output.status.success(),
        "{ranks} ranks, {mode}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    std::fs::remove_file(&out).unwrap();
    value
}

fn numbers(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// Every loss, every parameter tensor and the gathered centres within `1e-6` relative of one
/// process's. Not bitwise: the sums are split differently (each rank's part of the batch
/// summed on its own, then the ranks' sums added by MPI; the log-sum-exp over the classes
/// visited shard by shard), and f32 rounds each split differently.
fn assert_same_training(many: &Value, one: &Value, what: &str) {
    let (l, l1) = (numbers(&many["losses"]), numbers(&one["losses"]));
    assert_eq!(l.len(), 8);
    assert!(
        common::relative(&l, &l1) < 1e-6,
        "{what}: losses {l:?} vs {l1:?}"
    );
    let (p, p1) = (
        many["params"].as_array().unwrap(),
        one["params"].as_array().unwrap(),
    );
    assert_eq!(p.len(), p1.len());
    for (i, (a, b)) in p.iter().zip(p1).enumerate() {
        let r = common::relative(&numbers(a), &numbers(b));
        assert!(r < 1e-6, "{what}: parameter {i} differs by {r:e} relative");
    }
    let r = common::relative(&numbers(&many["centres"]), &numbers(&one["centres"]));
    assert!(r < 1e-6, "{what}: centres differ by {r:e} relative");
}

#[test]
fn two_and_three_ranks_train_as_one_process_does() {
    for mode in ["data", "class"] {
        let one = train(0, mode);
        assert_eq!(one["ranks"], 1);
        for ranks in [2, 3] {
            let many = train(ranks, mode);
            assert_eq!(many["ranks"], ranks);
            assert_same_training(&many, &one, &format!("{mode}-parallel on {ranks} ranks"));
        }
    }
}

#[test]
fn a_rank_with_bad_data_stops_every_rank_with_its_message() {
    for mode in ["data", "class"] {
        let (_scratch, out) = temp(&format!("bad-{mode}.json"));
        let args = [
            &[
                "--mode",
                mode,
                "--corrupt-rank",
                "1",
                "--out",
                out.to_str().unwrap(),
            ],
            SMALL,
        ]
        .concat();
        let output = run(2, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{mode}: {stderr}");
        let label = "label out of range: sample 0 has label 36, expected 0..31";
        assert!(
            stderr.contains(&format!("rank 1 of 2: error: {label}")),
            "{mode}: {stderr}"
        );
        assert!(
            stderr.contains(&format!(
                "rank 0 of 2: error: distributed run stopped: rank 1 of 2 failed: {label}"
            )),
            "{mode}: {stderr}"
        );
        assert!(!out.exists(), "{mode}: a failed run wrote its results");
    }
}

#[test]
fn a_rank_that_panics_ends_the_run_instead_of_leaving_the_others_waiting() {
    let output = run(
        2,
        &[&["--mode", "class", "--panic-rank", "1"], SMALL].concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("rank 1 of 2 panicked: aborting every rank"),
        "{stderr}"
    );
}

#[test]
fn ranks_started_with_different_settings_are_refused_at_start() {
    let output = example().run_each(&[SMALL, &[SMALL, &["--seed", "1"]].concat()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for rank in 0..2 {
        assert!(
            stderr.contains(&format!(
                "rank {rank} of 2: error: distributed run stopped: the ranks were started with \
                 different settings: rank(s) 1 differ from rank 0"
            )),
            "{stderr}"
        );
    }
}

#[test]
fn a_non_finite_loss_stops_every_rank_and_writes_no_results() {
    for mode in ["data", "class"] {
        let (_scratch, out) = temp(&format!("diverged-{mode}.json"));
        let args = with_value(
            &[SMALL, &["--mode", mode, "--out", out.to_str().unwrap()]].concat(),
            "--lr",
            "1e30",
        );
        let output = run(2, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{mode}: {stderr}");
        for rank in 0..2 {
            assert!(
                stderr.contains(&format!("rank {rank} of 2: error: ")),
                "{mode}: {stderr}"
            );
        }
        assert!(stderr.contains("non-finite value in "), "{mode}: {stderr}");
        assert!(!out.exists(), "{mode}: a diverged run wrote its results");
    }
}

#[test]
fn a_panic_after_mpi_is_finalised_is_an_ordinary_panic() {
    let output = run(
        2,
        &[&["--mode", "data", "--panic-at-exit", "1"], SMALL].concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains("rank 1 panics after the end of the run"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("aborting every rank") && !stderr.contains("MPI_Abort"),
        "the panic hook outlived MPI: {stderr}"
    );
}

#[test]
fn ranks_holding_different_numbers_of_samples_stop_with_a_clear_error() {
    for (mode, what) in [
        (
            "data",
            "the ranks hold data sets of different lengths (95 to 96 samples)",
        ),
        ("class", "the ranks hold different batch sizes: 5 to 6"),
    ] {
        let (_scratch, out) = temp(&format!("short-{mode}.json"));
        let args = [
            &[
                "--mode",
                mode,
                "--short-rank",
                "1",
                "--out",
                out.to_str().unwrap(),
            ],
            SMALL,
        ]
        .concat();
        let output = run(2, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{mode}: {stderr}");
        for rank in 0..2 {
            assert!(
                stderr.contains(&format!(
                    "rank {rank} of 2: error: distributed run stopped: {what}"
                )),
                "{mode}: {stderr}"
            );
        }
        assert!(!out.exists(), "{mode}: a failed run wrote its results");
    }
}

// ---- the trainer: `train --distributed` under mpirun ----

/// The built `train` example (built with `--features mpi`).
fn trainer() -> Program {
    Program::example("train")
}

/// A small run of the trainer on the digits: global batch 24 (a multiple of 1, 2 and 3), 59
/// steps per epoch, SGD with momentum, no dropout.
const TRAIN: &[&str] = &[
    "--distributed",
    "--hidden",
    "16",
    "--embed-dim",
    "8",
    "--batch",
    "24",
    "--optimizer",
    "sgd",
    "--lr",
    "0.05",
    "--momentum",
    "0.9",
    "--dropout",
    "0",
    "--threads",
    "1",
];

/// Runs the trainer with `args` on `ranks` ranks under `mpirun` (`ranks = 0`: one process
/// without `mpirun`).
fn run_trainer(ranks: usize, args: &[&str]) -> Output {
    trainer().run(ranks, args)
}

/// A fresh folder for a run's outputs.
fn out_dir(name: &str) -> (common::Scratch, PathBuf) {
    temp(name)
}

/// Trains on `ranks` ranks with `args` into `out`; returns metrics.json's per-epoch losses and
/// the checkpoint's parameters.
fn trained(ranks: usize, out: &std::path::Path, args: &[&str]) -> (Vec<f64>, Vec<Vec<f64>>) {
    let output = run_trainer(
        ranks,
        &[TRAIN, args, &["--out", out.to_str().unwrap()]].concat(),
    );
    assert!(
        output.status.success(),
        "{ranks} ranks: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    // on several ranks, rank 0 reports each epoch's collectives per step (from the first
    // epoch trained: a resumed run starts later)
    let stdout = String::from_utf8_lossy(&output.stdout);
    let reported = stdout
        .lines()
        .any(|l| l.contains(", rank 0: collectives") && l.contains("bytes per step"));
    assert_eq!(reported, ranks > 1, "{ranks} ranks: {stdout}");
    let metrics: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let losses = metrics["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["loss"].as_f64().unwrap())
        .collect();
    let saved = margrad::checkpoint::load::<f32>(&out.join("checkpoint.margrad")).unwrap();
    let params = saved
        .params
        .ids()
        .map(|id| {
            let data = saved.params.get(id).data();
            data.iter().map(|&v| f64::from(v)).collect()
        })
        .collect();
    (losses, params)
}

/// Losses and every parameter tensor within `1e-6` relative of one process's (not bitwise:
/// see [`assert_same_training`]).
fn assert_same_run(many: &(Vec<f64>, Vec<Vec<f64>>), one: &(Vec<f64>, Vec<Vec<f64>>), what: &str) {
    let r = common::relative(&many.0, &one.0);
    assert!(r < 1e-6, "{what}: losses {:?} vs {:?}", many.0, one.0);
    assert_eq!(many.1.len(), one.1.len());
    for (i, (a, b)) in many.1.iter().zip(&one.1).enumerate() {
        let r = common::relative(a, b);
        assert!(r < 1e-6, "{what}: parameter {i} differs by {r:e} relative");
    }
}

#[test]
fn the_trainer_on_two_and_three_ranks_trains_as_one_process_does() {
    let epochs = ["--epochs", "2"];
    let one = trained(0, &out_dir("train-1").1, &epochs);
    assert_eq!(one.0.len(), 2);
    for ranks in [2, 3] {
        let (_scratch, out) = out_dir(&format!("train-{ranks}"));
        let many = trained(ranks, &out, &epochs);
        assert_same_run(&many, &one, &format!("{ranks} ranks"));
        for file in ["model.safetensors", "loss.svg", "roc.svg"] {
            assert!(out.join(file).exists(), "{ranks} ranks: no {file}");
        }
        std::fs::remove_dir_all(&out).unwrap();
    }
}

#[test]
fn a_checkpoint_saved_by_two_ranks_resumes_on_three_and_in_one_process() {
    let whole = trained(0, &out_dir("resume-whole").1, &["--epochs", "2"]);
    let (_scratch, first) = out_dir("resume-first");
    trained(2, &first, &["--epochs", "1"]);
    for ranks in [3, 0] {
        // each resumed run continues in a copy of the 2-rank run's folder
        let (_scratch, out) = out_dir(&format!("resume-{ranks}"));
        std::fs::create_dir_all(&out).unwrap();
        let checkpoint = out.join("checkpoint.margrad");
        std::fs::copy(first.join("checkpoint.margrad"), &checkpoint).unwrap();
        let resume = ["--epochs", "2", "--resume", checkpoint.to_str().unwrap()];
        let resumed = trained(ranks, &out, &resume);
        assert_same_run(&resumed, &whole, &format!("resumed on {ranks} ranks"));
    }
}

fn as_strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn a_trainer_rank_with_bad_data_stops_every_rank_with_its_message() {
    // rank 0 reads good MNIST files, rank 1 a copy whose training labels are cut short
    let ((_good_scratch, good), (_bad_scratch, bad)) =
        (out_dir("mnist-good"), out_dir("mnist-bad"));
    common::write_tiny_mnist(&good);
    common::write_tiny_mnist(&bad);
    let labels = bad.join("train-labels-idx1-ubyte");
    let bytes = std::fs::read(&labels).unwrap();
    std::fs::write(&labels, &bytes[..bytes.len() - 8]).unwrap();
    let (_scratch, out) = out_dir("bad-data-run");
    let args = |dir: &PathBuf| -> Vec<String> {
        let mut args: Vec<String> = TRAIN.iter().map(|s| s.to_string()).collect();
        args.extend(["--epochs", "1", "--data", "mnist"].map(String::from));
        args.extend([
            "--data-dir".into(),
            dir.display().to_string(),
            "--out".into(),
            out.display().to_string(),
        ]);
        args
    };
    let (args0, args1) = (args(&good), args(&bad));
    let output = trainer().run_each(&[&as_strs(&args0), &as_strs(&args1)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let errors = rank_errors(&stderr, 2);
    let own = errors[1].as_str();
    assert!(own.contains("train-labels-idx1-ubyte"), "{stderr}");
    assert_eq!(
        errors[0].strip_prefix("distributed run stopped: rank 1 of 2 failed: "),
        Some(own),
        "{stderr}"
    );
    assert!(
        !out.exists(),
        "a failed run claimed its output folder: {stderr}"
    );
}

#[test]
fn trainer_ranks_started_with_different_settings_are_refused_at_start() {
    let (_scratch, out) = out_dir("different-settings");
    let args = [TRAIN, &["--epochs", "1", "--out", out.to_str().unwrap()]].concat();
    let output = trainer().run_each(&[&args, &[&args[..], &["--seed", "1"]].concat()]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for rank in 0..2 {
        assert!(
            stderr.contains(&format!(
                "rank {rank} of 2: error: distributed run stopped: the ranks were started with \
                 different settings: rank(s) 1 differ from rank 0"
            )),
            "{stderr}"
        );
    }
    assert!(!out.exists(), "{stderr}");
}

#[test]
fn a_diverging_distributed_run_stops_every_rank_and_writes_no_metrics() {
    let (_scratch, out) = out_dir("diverged-run");
    let args = with_value(
        &[TRAIN, &["--epochs", "1", "--out", out.to_str().unwrap()]].concat(),
        "--lr",
        "1e30",
    );
    let output = run_trainer(2, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for rank in 0..2 {
        assert!(
            stderr.contains(&format!(
                "rank {rank} of 2: error: training diverged at epoch 1"
            )),
            "{stderr}"
        );
    }
    assert!(!out.join("metrics.json").exists(), "{stderr}");
}

#[test]
fn a_nan_on_one_rank_only_is_a_divergence_at_its_step_on_every_rank() {
    // at η = 3·10¹⁷ the parameters grow until, at step 6, rank 1's half of the global batch
    // makes its loss a NaN while rank 0's stays finite
    let (_scratch, out) = out_dir("diverged-one-rank");
    let args = with_value(
        &[TRAIN, &["--epochs", "1", "--out", out.to_str().unwrap()]].concat(),
        "--lr",
        "3e17",
    );
    let output = run_trainer(2, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let errors = rank_errors(&stderr, 2);
    assert!(
        errors[1].starts_with("training diverged at epoch 1, step 6: the loss is NaN"),
        "{stderr}"
    );
    // rank 0 diverged too, at the same step, because of rank 1 (not an error of its input)
    assert!(
        errors[0]
            .starts_with("training diverged at epoch 1, step 6: on rank 1 of 2, the loss is NaN"),
        "{stderr}"
    );
    assert!(!out.join("metrics.json").exists(), "{stderr}");
}

#[test]
fn a_batch_the_ranks_cannot_share_is_refused_on_every_rank() {
    let (_scratch, out) = out_dir("odd-batch");
    let mut args = [TRAIN, &["--epochs", "1", "--out", out.to_str().unwrap()]].concat();
    let batch = args.iter().position(|&a| a == "--batch").unwrap();
    args[batch + 1] = "25";
    let output = run_trainer(2, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for rank in 0..2 {
        assert!(
            stderr.contains(&format!("rank {rank} of 2: error: invalid batch = 25")),
            "{stderr}"
        );
    }
    assert!(
        stderr.contains("a multiple of the number of ranks"),
        "{stderr}"
    );
}

#[test]
fn losses_with_batch_statistics_are_refused_on_several_ranks_before_training() {
    for loss in ["adaface", "curricularface"] {
        let (_scratch, out) = out_dir(&format!("batch-stats-{loss}"));
        let args = [
            TRAIN,
            &[
                "--loss",
                loss,
                "--epochs",
                "1",
                "--out",
                out.to_str().unwrap(),
            ],
        ]
        .concat();
        let output = run_trainer(2, &args);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{loss}: {stderr}");
        for rank in 0..2 {
            assert!(
                stderr.contains(&format!("rank {rank} of 2: error: ")),
                "{loss}: {stderr}"
            );
        }
        assert!(
            stderr.contains("train it in one process"),
            "{loss}: {stderr}"
        );
        assert!(!out.join("metrics.json").exists(), "{loss}: {stderr}");
    }
}
