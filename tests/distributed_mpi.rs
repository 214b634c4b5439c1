//! Training over MPI ranks, through real `mpirun` runs of `examples/distributed_step.rs`: 2
//! ranks (and 3, oversubscribed on 2 cores) train as one process does on the same global
//! batch, data- and class-parallel; a rank with bad data, a rank that panics and ranks started
//! with different settings stop every rank with a clear message. Every run is bounded by
//! `timeout`, so a hang fails the test instead of blocking CI.
//!
//! Needs the `mpi` feature and Open MPI (`mpirun`); build the example first:
//! `cargo build --release --features mpi --example distributed_step`.
#![cfg(feature = "mpi")]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

/// Seconds any one run may take (they take well under one).
const LIMIT: &str = "120";

/// The built example (target/<profile>/deps/<test> → target/<profile>/examples/<name>).
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let path = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("distributed_step");
    assert!(
        path.exists(),
        "{} is not built: run `cargo build --release --features mpi --example distributed_step`",
        path.display()
    );
    path
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

/// Runs `ranks` copies of the example with `args` under `mpirun` (`ranks = 0`: one process
/// without `mpirun`), killed after [`LIMIT`] seconds.
fn run(ranks: usize, args: &[&str]) -> Output {
    let mut command = Command::new("timeout");
    command.args(["--kill-after=10", LIMIT]);
    if ranks > 0 {
        command
            .args(["mpirun", "--oversubscribe", "-n", &ranks.to_string()])
            .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
            .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    }
    let output = command.arg(example()).args(args).output().unwrap();
    assert_ne!(
        output.status.code(),
        Some(124),
        "the run hung and was killed after {LIMIT} s: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn temp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("margrad-mpi-{}-{name}", std::process::id()))
}

/// Trains on `ranks` ranks and returns rank 0's `--out`.
fn train(ranks: usize, mode: &str) -> Value {
    let out = temp(&format!("{mode}-{ranks}.json"));
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

/// `max |a − b| / max |b|`.
fn relative(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    diff / scale.max(1e-30)
}

/// Every loss, every parameter tensor and the gathered centres within `1e-6` relative of one
/// process's. Not bitwise: the sums are split differently (each rank's part of the batch
/// summed on its own, then the ranks' sums added by MPI; the log-sum-exp over the classes
/// visited shard by shard), and f32 rounds each split differently.
fn assert_same_training(many: &Value, one: &Value, what: &str) {
    let (l, l1) = (numbers(&many["losses"]), numbers(&one["losses"]));
    assert_eq!(l.len(), 8);
    assert!(relative(&l, &l1) < 1e-6, "{what}: losses {l:?} vs {l1:?}");
    let (p, p1) = (
        many["params"].as_array().unwrap(),
        one["params"].as_array().unwrap(),
    );
    assert_eq!(p.len(), p1.len());
    for (i, (a, b)) in p.iter().zip(p1).enumerate() {
        let r = relative(&numbers(a), &numbers(b));
        assert!(r < 1e-6, "{what}: parameter {i} differs by {r:e} relative");
    }
    let r = relative(&numbers(&many["centres"]), &numbers(&one["centres"]));
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
        let out = temp(&format!("bad-{mode}.json"));
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
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=10", LIMIT, "mpirun", "-n", "1"])
        .arg(example())
        .args(SMALL)
        .args([":", "-n", "1"])
        .arg(example())
        .args(SMALL)
        .args(["--seed", "1"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    let output = command.output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert_ne!(output.status.code(), Some(124), "hung: {stderr}");
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
        let out = temp(&format!("diverged-{mode}.json"));
        let mut args = [SMALL, &["--mode", mode, "--out", out.to_str().unwrap()]].concat();
        let lr = args.iter().position(|&a| a == "--lr").unwrap();
        args[lr + 1] = "1e30";
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
        let out = temp(&format!("short-{mode}.json"));
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
