//! The large-head trainer over MPI ranks (`examples/train_large_head.rs --distributed`, the
//! head class-parallel), through real `mpirun` runs: 2 and 3 ranks (3 oversubscribed on 2
//! cores) train as one process does on the same global batches, with every class and with
//! Partial FC's sampling; a checkpoint written by 2 ranks resumes on 3 and in one process and
//! ends where the uninterrupted run ends; a divergence and bad input on one rank stop every
//! rank with a clear message. Every run is bounded by `timeout`, so a hang fails the test
//! ([`common::mpi`]).
//!
//! Needs the `mpi` feature and Open MPI (`mpirun`); build the example first:
//! `cargo build --release --features mpi --example train_large_head`.
#![cfg(feature = "mpi")]

mod common;

use common::mpi::{Program, rank_errors, with_value};
use margrad::checkpoint;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;

/// The built example, given `--distributed` when started under `mpirun`.
fn example() -> Program {
    Program::example("train_large_head").flag_under_mpirun("--distributed")
}

/// 1,000 identities (shards of 334, 333, 333 on 3 ranks) in blocks of 64, 8-d embeddings,
/// global batch 12 (a multiple of 1, 2 and 3), 8 steps, a loss reported at every step.
const SMALL: &[&str] = &[
    "--identities",
    "1000",
    "--unseen",
    "50",
    "--train-samples",
    "8",
    "--block",
    "64",
    "--batch",
    "12",
    "--embed-dim",
    "8",
    "--hidden",
    "16",
    "--lr",
    "0.02",
    "--scale",
    "10",
    "--threads",
    "1",
    "--report-every",
    "1",
];

/// Runs the example with `args` on `ranks` ranks under `mpirun` (with `--distributed`), or as
/// one process without it (`ranks = 0`).
fn run(ranks: usize, args: &[&str]) -> Output {
    example().run(ranks, args)
}

/// A path `name` in a scratch folder of its own, removed when the returned guard drops.
fn out_dir(name: &str) -> (common::Scratch, PathBuf) {
    common::scratch_path("lh-mpi", name)
}

/// A finished run: every step's loss and every parameter of its checkpoint (the embedder's
/// and the whole head's centres).
struct Run {
    losses: Vec<f64>,
    params: Vec<(String, Vec<f32>)>,
}

/// Trains on `ranks` ranks with `args` into `out` and reads what it wrote.
fn trained(ranks: usize, out: &Path, args: &[&str]) -> Run {
    let output = run(
        ranks,
        &[SMALL, args, &["--out", out.to_str().unwrap()]].concat(),
    );
    assert!(
        output.status.success(),
        "{ranks} ranks, {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    read(out)
}

fn read(out: &Path) -> Run {
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    let losses = report["reported_losses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| pair[1].as_f64().unwrap())
        .collect();
    let loaded = checkpoint::load::<f32>(&out.join("checkpoint.margrad")).unwrap();
    let params = loaded
        .params
        .ids()
        .map(|id| {
            let name = loaded.params.name(id).to_string();
            (name, loaded.params.get(id).data().to_vec())
        })
        .collect();
    Run { losses, params }
}

/// The losses, every embedder parameter and the centres within `1e-6` relative (to each
/// tensor's largest value) of `one`'s (measured: at most 5.7·10⁻⁷). Not bitwise: the sums are
/// split differently (each rank's part of the batch summed on its own for the embedder's
/// gradients, then the ranks' sums added by MPI; the log-sum-exp over the classes and the
/// features' gradient summed shard by shard), and f32 rounds each split differently; training
/// carries the differences on. A logit of size `s` carries `s·2⁻²⁴` of rounding, so each
/// softmax probability differs by about that much relative: hence `s = 10` here (at the
/// default `s = 30` the centres differ by up to 1.4·10⁻⁶).
fn assert_same_run(many: &Run, one: &Run, what: &str) {
    assert_eq!(many.losses.len(), one.losses.len(), "{what}");
    let r = common::relative(&many.losses, &one.losses);
    eprintln!("{what}: losses {r:e}");
    assert!(r < 1e-6, "{what}: losses differ by {r:e} relative");
    assert_eq!(many.params.len(), one.params.len(), "{what}");
    for ((name, a), (_, b)) in many.params.iter().zip(&one.params) {
        let widen = |v: &[f32]| v.iter().map(|&x| f64::from(x)).collect::<Vec<_>>();
        let r = common::relative(&widen(a), &widen(b));
        eprintln!("{what}: {name} {r:e}");
        assert!(r < 1e-6, "{what}: {name} differs by {r:e} relative");
    }
}

#[test]
fn two_and_three_ranks_train_as_one_process_with_every_class_and_sampled() {
    for rate in ["1", "0.25"] {
        let args = ["--steps", "8", "--sample-rate", rate];
        let one = trained(0, &out_dir(&format!("one-{rate}")).1, &args);
        assert_eq!(one.losses.len(), 8);
        assert!(one.losses.iter().all(|l| l.is_finite() && *l > 0.0));
        for ranks in [2, 3] {
            let many = trained(ranks, &out_dir(&format!("{ranks}-{rate}")).1, &args);
            assert_same_run(&many, &one, &format!("{ranks} ranks, r = {rate}"));
        }
    }
    // sampling changes the run: the comparison above is not of two full heads
    let full = trained(0, &out_dir("full").1, &["--steps", "8"]);
    let sampled = trained(
        0,
        &out_dir("sampled").1,
        &["--steps", "8", "--sample-rate", "0.25"],
    );
    assert!(common::relative(&sampled.losses, &full.losses) > 1e-3);
}

#[test]
fn a_checkpoint_written_by_two_ranks_resumes_on_three_and_in_one_process() {
    let args = ["--sample-rate", "0.25"];
    let whole = trained(
        2,
        &out_dir("resume-whole").1,
        &[&args[..], &["--steps", "8"]].concat(),
    );
    let (_scratch, first) = out_dir("resume-first");
    trained(2, &first, &[&args[..], &["--steps", "4"]].concat());
    for ranks in [3, 0] {
        let (_scratch, out) = out_dir(&format!("resume-on-{ranks}"));
        std::fs::create_dir_all(&out).unwrap();
        std::fs::copy(
            first.join("checkpoint.margrad"),
            out.join("checkpoint.margrad"),
        )
        .unwrap();
        let resumed = trained(
            ranks,
            &out,
            &[&args[..], &["--steps", "8", "--resume"]].concat(),
        );
        // the report holds the steps run after the resume: the last four
        let tail = Run {
            losses: whole.losses[4..].to_vec(),
            params: whole.params.clone(),
        };
        assert_same_run(&resumed, &tail, &format!("resumed on {ranks} ranks"));
    }
}

#[test]
fn a_diverging_run_stops_every_rank_naming_the_step_and_writes_nothing() {
    let (_scratch, out) = out_dir("diverged");
    // η = 1e30: the first step's update sends the embedder's weights so far that the second
    // step's features overflow, and the loss over the global batch is a NaN on every rank
    let args = with_value(
        &[SMALL, &["--steps", "8", "--out", out.to_str().unwrap()]].concat(),
        "--lr",
        "1e30",
    );
    let output = run(2, &args);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for message in rank_errors(&stderr, 2) {
        assert!(
            message.starts_with("training diverged at step 2: "),
            "{message}\n{stderr}"
        );
    }
    assert!(!out.join("checkpoint.margrad").exists());
    assert!(!out.join("report.json").exists());
}

/// Two ranks started by one `mpirun` with arguments of their own (MPMD).
fn run_two(args0: &[&str], args1: &[&str]) -> Output {
    example().run_each(&[args0, args1])
}

#[test]
fn bad_input_on_one_rank_stops_every_rank_with_its_message() {
    // rank 1 resumes from a truncated copy of the checkpoint (each rank reads its own --out)
    let (_scratch, good) = out_dir("bad-good");
    trained(2, &good, &["--steps", "4"]);
    let (_scratch, bad) = out_dir("bad-truncated");
    std::fs::create_dir_all(&bad).unwrap();
    let bytes = std::fs::read(good.join("checkpoint.margrad")).unwrap();
    std::fs::write(bad.join("checkpoint.margrad"), &bytes[..bytes.len() / 2]).unwrap();
    let resume = [SMALL, &["--steps", "8", "--resume", "--out"]].concat();
    let output = run_two(
        &[&resume[..], &[good.to_str().unwrap()]].concat(),
        &[&resume[..], &[bad.to_str().unwrap()]].concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let errors = rank_errors(&stderr, 2);
    assert!(errors[0].contains("rank 1 of 2 failed: "), "{stderr}");
    let own = errors[1].as_str();
    assert!(
        errors[0].ends_with(own),
        "rank 0 carries rank 1's message: {stderr}"
    );
    // nothing written: rank 0's checkpoint is the one it resumed from
    assert_eq!(
        std::fs::read(good.join("checkpoint.margrad")).unwrap(),
        bytes
    );

    // ranks started with different settings are refused at start, on every rank
    let (_scratch, out) = out_dir("bad-settings");
    let args = [SMALL, &["--steps", "4", "--out", out.to_str().unwrap()]].concat();
    let output = run_two(&args, &[&args[..], &["--seed", "1"]].concat());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    for message in rank_errors(&stderr, 2) {
        assert!(
            message.contains("different settings"),
            "{message}\n{stderr}"
        );
    }
    assert!(!out.join("checkpoint.margrad").exists());
}

#[test]
fn a_save_that_fails_on_rank_0_stops_every_rank_with_its_message_and_none_waits() {
    // the checkpoint's path is a directory: rank 0 receives every rank's rows into its
    // temporary file, then cannot rename it over the directory
    let (_scratch, out) = out_dir("save-fails");
    std::fs::create_dir_all(out.join("checkpoint.margrad")).unwrap();
    let args = ["--steps", "8", "--checkpoint-every", "4"];
    let output = run(
        3,
        &[SMALL, &args, &["--out", out.to_str().unwrap()]].concat(),
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    let errors = rank_errors(&stderr, 3);
    assert!(errors[0].contains("checkpoint.margrad"), "{stderr}");
    for other in &errors[1..] {
        assert!(
            other.contains("rank 0 of 3 failed: ") && other.ends_with(&errors[0]),
            "every rank carries rank 0's message: {stderr}"
        );
    }
    assert!(!out.join("report.json").exists());
    let left: Vec<_> = std::fs::read_dir(&out).unwrap().collect();
    assert_eq!(left.len(), 1, "no temporary file is left: {left:?}");
}
