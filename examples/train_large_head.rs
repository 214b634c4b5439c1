//! Trains an MLP embedder and a blocked margin head over many synthetic identities (made on
//! demand, nothing stored), saves the checkpoint streaming, and verifies on identities never
//! trained on.
//!
//! `cargo run --release --example train_large_head -- --identities 1000000 --steps 2000
//! --sample-rate 0.1 --checkpoint-every 500 --out runs/million`; the same command with
//! `--resume` continues from the last checkpoint in `--out`, ending bit for bit where the
//! uninterrupted run would.
//!
//! Over MPI ranks (built with `--features mpi`), the head class-parallel:
//! `mpirun -n 2 target/release/examples/train_large_head --distributed --threads 1 …`; rank 0
//! prints and writes `--out`, and the checkpoint resumes on any number of ranks.

use clap::Parser;
use margrad::data::IdentitiesConfig;
use margrad::distributed::{Traffic, World};
use margrad::loss::MarginLoss;
use margrad::train::{LargeHeadConfig, LargeHeadEvent, train_large_head_distributed};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser, Debug)]
#[command(about = "Trains an embedder and a blocked margin head over many synthetic identities")]
struct Args {
    /// Identities trained on (the head's classes).
    #[arg(long, default_value_t = 100_000)]
    identities: usize,
    /// Identities never trained on, verified.
    #[arg(long, default_value_t = 1000)]
    unseen: usize,
    /// Training samples per identity (sample indices drawn from 0..N).
    #[arg(long, default_value_t = 40)]
    train_samples: u64,
    /// Classes per block of the head.
    #[arg(long, default_value_t = 4096)]
    block: usize,
    /// The class sampling rate r in (0, 1] (Partial FC; 1: the full head).
    #[arg(long, default_value_t = 1.0)]
    sample_rate: f64,
    /// Training steps.
    #[arg(long, default_value_t = 1000)]
    steps: u64,
    /// Samples per step.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Embedding dimension (the centres' width).
    #[arg(long, default_value_t = 128)]
    embed_dim: usize,
    /// Hidden widths of the MLP, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "256")]
    hidden: Vec<usize>,
    /// Learning rate of embedder and centres.
    #[arg(long, default_value_t = 0.1)]
    lr: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = 0.9)]
    momentum: f64,
    /// AM-Softmax scale s.
    #[arg(long, default_value_t = 30.0)]
    scale: f64,
    /// AM-Softmax margin m.
    #[arg(long, default_value_t = 0.35)]
    margin: f64,
    /// Seed of the data and the model.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Where to write checkpoint.margrad and report.json (nothing is saved without it).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Writes the checkpoint every N steps too (0: at the end only).
    #[arg(long, default_value_t = 0)]
    checkpoint_every: u64,
    /// Continues the run from the checkpoint in --out (the same settings; --steps the total).
    #[arg(long, requires = "out")]
    resume: bool,
    /// Prints the mean loss every N steps (default: a twentieth of the steps).
    #[arg(long)]
    report_every: Option<u64>,
    /// Trains over the ranks started by mpirun, the head's classes sharded over them (needs
    /// the `mpi` cargo feature).
    #[arg(long)]
    distributed: bool,
    /// Prints, on every rank, the CPU time per step (from /proc/self/stat, 10 ms ticks), the
    /// time in collectives and the bytes handed to them, from the first report to the last.
    #[arg(long)]
    timing: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let launched = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse::<usize>().ok());
    if let Some(ranks) = launched.filter(|&n| n > 1 && !args.distributed) {
        // independent runs, each writing the same --out
        eprintln!(
            "error: started as one of {ranks} ranks by an MPI launcher: add --distributed to \
             train together"
        );
        return ExitCode::from(2);
    }
    let world = match world(args.distributed) {
        Ok(world) => world,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let result = run(&args, &world);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // one line in one write: the ranks' lines do not interleave
            let line = match world.size() {
                1 => format!("error: {e}\n"),
                n => format!("rank {} of {n}: error: {e}\n", world.rank()),
            };
            let _ = std::io::Write::write_all(&mut std::io::stderr(), line.as_bytes());
            ExitCode::FAILURE
        }
    }
    // the world is dropped here: MPI is finalised before the exit
}

/// The ranks `mpirun` started (with `--distributed`), or a world of one.
fn world(distributed: bool) -> Result<World, String> {
    if !distributed {
        return Ok(World::single());
    }
    #[cfg(feature = "mpi")]
    return World::mpi().map_err(|e| e.to_string());
    #[cfg(not(feature = "mpi"))]
    Err(
        "--distributed needs the `mpi` cargo feature: build with `cargo build --release \
         --features mpi --example train_large_head` (see docs/distributed.md)"
            .into(),
    )
}

type Failure = Box<dyn std::error::Error>;

fn run(args: &Args, world: &World) -> Result<(), Failure> {
    // what can fail on one rank alone is agreed before the first collective of the run
    let prepared = prepare(args, world.is_root());
    let status = prepared
        .as_ref()
        .map(|_| ())
        .map_err(|e| margrad::Error::Io {
            source: "the run's settings and output folder".into(),
            message: e.to_string(),
        });
    if let Err(e) = world.agree(status) {
        return Err(prepared.err().unwrap_or_else(|| e.into()));
    }
    let (config, checkpoint) = prepared?;
    train(args, world, &config, checkpoint)
}

/// The settings, with the threads set and (on rank 0) the output folder made.
fn prepare(args: &Args, root: bool) -> Result<(LargeHeadConfig, Option<PathBuf>), Failure> {
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    let config = LargeHeadConfig {
        identities: IdentitiesConfig {
            trained: args.identities,
            unseen: args.unseen,
            train_samples: args.train_samples,
            seed: args.seed,
            ..IdentitiesConfig::default()
        },
        hidden: args.hidden.clone(),
        embed_dim: args.embed_dim,
        loss: MarginLoss::am(args.scale, args.margin)?,
        block: args.block,
        sample_rate: args.sample_rate,
        batch: args.batch,
        steps: args.steps,
        lr: args.lr,
        momentum: args.momentum,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        ..LargeHeadConfig::default()
    };
    let checkpoint = match &args.out {
        Some(dir) => {
            // rank 0 alone writes
            if root {
                std::fs::create_dir_all(dir)?;
            }
            Some(dir.join("checkpoint.margrad"))
        }
        None => None,
    };
    Ok((config, checkpoint))
}

fn train(
    args: &Args,
    world: &World,
    config: &LargeHeadConfig,
    checkpoint: Option<PathBuf>,
) -> Result<(), Failure> {
    let speaks = world.is_root();
    let every = args.report_every.unwrap_or(args.steps / 20).max(1);
    // at each report: the step, this process's CPU time, the collectives since the last one
    let mut marks: Vec<(u64, Option<Duration>, Traffic)> = Vec::new();
    let mut on_event = |event| {
        let LargeHeadEvent::Steps {
            step,
            loss,
            steps_per_sec,
        } = event;
        if args.timing {
            marks.push((step, cpu_time(), world.take_traffic()));
        }
        if speaks {
            println!("step {step:>7}  loss {loss:8.4}  {steps_per_sec:7.2} steps/s");
        }
    };
    let from = checkpoint.as_deref().filter(|_| args.resume);
    let report = train_large_head_distributed(
        world,
        config,
        from,
        checkpoint.as_deref(),
        every,
        &mut on_event,
    )?;
    if let (Some(first), Some(last)) = (marks.first(), marks.last())
        && last.0 > first.0
    {
        // from the first report to the last: steps only
        let steps = (last.0 - first.0) as f64;
        let cpu = match (first.1, last.1) {
            (Some(a), Some(b)) => format!("{:.1} ms", (b - a).as_secs_f64() * 1e3 / steps),
            _ => "unknown".into(),
        };
        let (bytes, time) = marks[1..].iter().fold((0, Duration::ZERO), |(b, t), m| {
            (b + m.2.bytes, t + m.2.time)
        });
        let collectives = match world.size() {
            1 => String::new(),
            _ => format!(
                ", collectives {:.1} ms per step (wall), {:.0} bytes per step",
                time.as_secs_f64() * 1e3 / steps,
                bytes as f64 / steps,
            ),
        };
        // one write per line: the ranks' lines do not interleave
        let line = format!(
            "rank {} of {}: steps {}-{}: CPU {cpu} per step (this process, every \
             thread){collectives}\n",
            world.rank(),
            world.size(),
            first.0 + 1,
            last.0,
        );
        std::io::Write::write_all(&mut std::io::stdout(), line.as_bytes())?;
    }
    if !speaks {
        return Ok(());
    }
    let v = &report.verification;
    let figure = |x: Option<f64>| x.map_or("undefined".to_string(), |x| format!("{x:.4}"));
    println!(
        "trained {} identities in {:.1} s ({:.2} steps/s); memory counted before allocating: \
         {:.0} MiB",
        args.identities,
        report.train_seconds,
        report.steps_run as f64 / report.train_seconds,
        report.footprint_bytes as f64 / (1 << 20) as f64
    );
    println!(
        "loss {:.4} (first tenth) -> {:.4} (last tenth); closed-set accuracy among all {} \
         identities: {:.4}",
        report.first_loss, report.last_loss, args.identities, report.accuracy
    );
    println!(
        "verification on {} unseen identities ({} pairs): accuracy {}, EER {}, TAR@FAR=1e-3 {}, \
         TAR@FAR=1e-2 {}, AUC {}",
        args.unseen,
        v.pairs,
        figure(v.accuracy_mean),
        figure(v.eer),
        figure(v.tar_at_far_1e3),
        figure(v.tar_at_far_1e2),
        figure(v.auc)
    );
    if let Some(dir) = &args.out {
        println!("checkpoint written in {:.1} s", report.save_seconds);
        std::fs::write(
            dir.join("report.json"),
            serde_json::to_string_pretty(&report)?,
        )?;
    }
    Ok(())
}

/// This process's CPU time (user and system, every thread) from `/proc/self/stat`, in ticks of
/// 10 ms (Linux's `USER_HZ` = 100); `None` where it cannot be read.
fn cpu_time() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // the fields after the command name (in parentheses): utime and stime are the 12th and 13th
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_millis(ticks * 10))
}
