//! Training steps over several processes, timed: an MLP embedder trained data-parallel with
//! either a dense cosine head (`--mode data`: every rank holds every centre, gradients
//! all-reduced) or a class-parallel head (`--mode class`: each rank holds `C/N` centres).
//!
//! ```sh
//! # one process
//! cargo run --release --example distributed_step -- --mode data --batch 128
//! # two ranks of one thread each, twice the global batch (built with the mpi feature)
//! cargo build --release --features mpi --example distributed_step
//! mpirun -n 2 target/release/examples/distributed_step --mode data --batch 256 --threads 1
//! ```
//!
//! `--batch` is the global batch, cut evenly over the ranks; the data are seeded synthetic
//! samples, the same on every rank, each rank reading its own shard. Rank 0 prints the
//! samples per second, the time per step and the part of it spent in collectives, and the
//! bytes each rank hands to collectives per step; `--out FILE` writes the losses and the final
//! parameters (centres gathered) as JSON, for comparing runs on different numbers of ranks.
//! `--corrupt-rank R` gives rank R a label out of range at step 2 and `--panic-rank R` makes
//! rank R panic there (`--panic-at-exit R`: after MPI is finalised), and `--short-rank R`
//! gives rank R one sample fewer (in its data set, or in its batch at step 2), to see every
//! rank stop. A non-finite loss or gradient (a learning rate far too large) stops every rank
//! with an error, and no results are written.
//!
//! Built without the `mpi` feature, the example refuses to run under `mpirun` with more than
//! one rank (it would run independent worlds of one, all writing the same `--out`).

use clap::{Parser, ValueEnum};
use margrad::distributed::{
    ClassParallelHead, Shard, Traffic, World, parameter_checksum, reduce_gradients,
};
use margrad::loss::{BlockedHead, HEAD_NORM_EPS, MarginLoss, margin_cross_entropy};
use margrad::{Error, Graph, Labels, ParamId, Params, Tensor, Var, seeded_rng};
use serde::Serialize;
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, Serialize)]
enum Mode {
    /// Data parallel, the dense head's centres a parameter like any other.
    Data,
    /// Data parallel embedder, class-parallel head.
    Class,
}

#[derive(Parser, Debug, Serialize)]
#[command(about = "Timed training steps over MPI ranks (data- or class-parallel)")]
struct Args {
    #[arg(long, value_enum, default_value = "data")]
    mode: Mode,
    /// Global batch (all ranks together); a multiple of the number of ranks.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Timed steps (after the warm-up).
    #[arg(long, default_value_t = 20)]
    steps: usize,
    /// Untimed steps first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Input width (784: MNIST's).
    #[arg(long, default_value_t = 784)]
    input: usize,
    /// Hidden width of the MLP.
    #[arg(long, default_value_t = 256)]
    hidden: usize,
    /// Embedding width D.
    #[arg(long, default_value_t = 128)]
    embed: usize,
    /// Classes C.
    #[arg(long, default_value_t = 10)]
    classes: usize,
    /// Classes per block of the class-parallel head.
    #[arg(long, default_value_t = 4096)]
    block: usize,
    /// SGD learning rate.
    #[arg(long, default_value_t = 0.1)]
    lr: f32,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Worker threads per rank.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// Writes the losses and final parameters here (rank 0).
    #[arg(long)]
    #[serde(skip)]
    out: Option<std::path::PathBuf>,
    /// Checks after every step that every rank holds the same parameters.
    #[arg(long)]
    check: bool,
    /// Waits for every rank (a barrier) before the gradients' all-reduce, and reports apart
    /// the CPU time of the waiting and of the all-reduce itself
    #[arg(long)]
    split_wait: bool,
    /// This rank gets a label out of range at step 2.
    #[arg(long)]
    corrupt_rank: Option<usize>,
    /// This rank panics at step 2.
    #[arg(long)]
    #[serde(skip)]
    panic_rank: Option<usize>,
    /// This rank panics at the end, after MPI is finalised.
    #[arg(long)]
    #[serde(skip)]
    panic_at_exit: Option<usize>,
    /// This rank holds one sample fewer: in its data set (data mode) or in its batch of step
    /// 2 (class mode).
    #[arg(long)]
    #[serde(skip)]
    short_rank: Option<usize>,
}

/// What `--out` holds.
#[derive(Serialize)]
struct Outcome {
    ranks: usize,
    losses: Vec<f32>,
    /// Every parameter of the embedder (and the dense head), flattened, in id order.
    params: Vec<Vec<f32>>,
    /// The class-parallel head's centres, `[C, D]`, gathered from the ranks.
    centres: Vec<f32>,
}

fn main() {
    let args = Args::parse();
    let (code, rank) = {
        #[cfg(feature = "mpi")]
        let world = match World::mpi() {
            Ok(world) => world,
            Err(e) => {
                eprintln!("error: {e}");
                std::process::exit(1);
            }
        };
        #[cfg(not(feature = "mpi"))]
        let world = match launched_ranks() {
            Some(ranks) if ranks > 1 => {
                eprintln!(
                    "error: started as one of {ranks} ranks, but this build has no MPI: build \
                     with `--features mpi`"
                );
                std::process::exit(2);
            }
            _ => World::single(),
        };
        let code = match run(&args, &world) {
            Ok(()) => 0,
            Err(e) => {
                // one write, so that the ranks' messages do not interleave
                let message = format!("rank {} of {}: error: {e}\n", world.rank(), world.size());
                let _ = std::io::stderr().write_all(message.as_bytes());
                1
            }
        };
        (code, world.rank())
        // the world is dropped here: MPI is finalised before the exit
    };
    if args.panic_at_exit == Some(rank) {
        panic!("rank {rank} panics after the end of the run, as --panic-at-exit asked");
    }
    std::process::exit(code);
}

fn run(args: &Args, world: &World) -> Result<(), Error> {
    let config = serde_json::to_vec(args).expect("settings serialise");
    world.check_same_config("settings", &config)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(args.threads)
        .build_global()
        .expect("the thread pool is built once");
    let (size, rank) = (world.size(), world.rank());
    if args.batch == 0 || !args.batch.is_multiple_of(size) {
        return Err(Error::InvalidSetting {
            name: "batch",
            value: args.batch as f64,
            requirement: "a positive multiple of the number of ranks",
        });
    }
    let local = args.batch / size;
    let total = args.warmup + args.steps;

    // the same data and initial parameters on every rank, from the seed
    let mut rng = seeded_rng(args.seed);
    let n = args.batch * total;
    let short = args.short_rank == Some(rank);
    let samples = n - usize::from(short && args.mode == Mode::Data);
    let shard = Shard::new(world, local, samples)?;
    let x_all = Tensor::<f32>::randn(&[n, args.input], 0.0, 1.0, &mut rng);
    let y_all: Vec<usize> = (0..n).map(|i| (i * 7 + i / 3) % args.classes).collect();
    let mut params = Params::<f32>::new();
    let w1 = params.add(
        "w1",
        Tensor::randn(
            &[args.input, args.hidden],
            0.0,
            (2.0 / args.input as f64).sqrt(),
            &mut rng,
        ),
    );
    let b1 = params.add("b1", Tensor::zeros(&[args.hidden]));
    let w2 = params.add(
        "w2",
        Tensor::randn(
            &[args.hidden, args.embed],
            0.0,
            (1.0 / args.hidden as f64).sqrt(),
            &mut rng,
        ),
    );
    let b2 = params.add("b2", Tensor::zeros(&[args.embed]));
    let all_centres = Tensor::<f32>::randn(&[args.classes, args.embed], 0.0, 1.0, &mut rng);
    let loss = MarginLoss::am(30.0, 0.35)?;
    let parallel = ClassParallelHead::new(
        BlockedHead::new(loss.clone(), args.block)?,
        args.classes,
        world,
    )?;
    let (dense_centres, mut centres) = match args.mode {
        Mode::Data => (
            Some(params.add("centres", all_centres)),
            Tensor::zeros(&[0]),
        ),
        Mode::Class => (None, parallel.take_shard(&all_centres)?),
    };
    let model = Model { w1, b1, w2, b2 };

    let batches = shard.batches(args.seed, 0);
    let mut losses = Vec::new();
    let (mut busy, mut cpu_start) = (Duration::ZERO, cpu_time());
    let (mut wait_cpu, mut reduce_cpu) = (Duration::ZERO, Duration::ZERO);
    for (step, mut indices) in batches.iter().map(Vec::as_slice).take(total).enumerate() {
        if step == args.warmup {
            world.barrier();
            world.take_traffic();
            busy = Duration::ZERO;
            cpu_start = cpu_time();
        }
        let start = Instant::now();
        if step == 2 && short && args.mode == Mode::Class {
            indices = &indices[1..];
        }
        let rows: Vec<f32> = indices
            .iter()
            .flat_map(|&i| {
                x_all.data()[i * args.input..(i + 1) * args.input]
                    .iter()
                    .copied()
            })
            .collect();
        let x = Tensor::from_vec(rows, &[indices.len(), args.input])?;
        let mut labels: Vec<usize> = indices.iter().map(|&i| y_all[i]).collect();
        if step == 2 && args.corrupt_rank == Some(rank) {
            labels[0] = args.classes + 5;
        }
        if step == 2 && args.panic_rank == Some(rank) {
            panic!("rank {rank} panics at step 2, as --panic-rank asked");
        }
        let labels = Labels::new(labels, args.classes + 10).expect("in range of the wider set");
        let lr = args.lr;
        let (value, mut grads) = {
            let g = Graph::new();
            let f = model.forward(&g, &params, x);
            let l = match args.mode {
                Mode::Data => {
                    let w = g.param(&params, dense_centres.expect("data mode"));
                    let eps = HEAD_NORM_EPS as f32;
                    let cos = f.normalize_rows(eps).matmul_nt(w.normalize_rows(eps));
                    let labels = Labels::new(labels.values().to_vec(), args.classes);
                    world.agree(
                        labels
                            .and_then(|l| margin_cross_entropy(cos, &l, &loss))
                            .and_then(finite),
                    )?
                }
                Mode::Class => {
                    // refuses a non-finite loss itself, on every rank
                    parallel.step(world, f, &mut centres, &labels, None, |_, rows, grad| {
                        rows.iter_mut().zip(grad).for_each(|(w, g)| *w -= lr * g);
                    })?
                }
            };
            (l.item(), l.backward())
        };
        // each rank's loss is its own batch's mean (data) or already the global batch's (class)
        let factor = match args.mode {
            Mode::Data => 1.0 / size as f32,
            Mode::Class => 1.0,
        };
        if args.split_wait && step >= args.warmup {
            let before = thread_cpu_time();
            world.barrier();
            let synced = thread_cpu_time();
            reduce_gradients(world, &mut grads, factor)?;
            let after = thread_cpu_time();
            wait_cpu += synced.saturating_sub(before);
            reduce_cpu += after.saturating_sub(synced);
        } else {
            reduce_gradients(world, &mut grads, factor)?;
        }
        let updates: Vec<(ParamId, Tensor<f32>)> = grads
            .params()
            .map(|(id, g)| {
                let p = params.get(id);
                let data = p.data().iter().zip(g.data()).map(|(w, g)| w - lr * g);
                (
                    id,
                    Tensor::from_vec(data.collect(), p.shape()).expect("shape"),
                )
            })
            .collect();
        params.apply(updates);
        losses.push(value);
        if args.check {
            parameter_checksum(world, &params)?;
        }
        if step >= args.warmup {
            busy += start.elapsed();
        }
    }
    let traffic = world.take_traffic();
    let cpu = cpu_time().zip(cpu_start).map(|(end, start)| end - start);
    report(args, world, busy, cpu, traffic);
    if args.split_wait {
        let steps = args.steps.max(1) as f64;
        let mut split = [
            wait_cpu.as_secs_f64() / steps,
            reduce_cpu.as_secs_f64() / steps,
        ];
        world.all_reduce_max(&mut split);
        if world.is_root() {
            println!(
                "  CPU per step in the barrier before the all-reduce (waiting for the other \
                 ranks) {:.2} ms, in the gradients' all-reduce {:.2} ms (slowest rank)",
                split[0] * 1e3,
                split[1] * 1e3
            );
        }
    }
    if args.mode == Mode::Data {
        // each rank's loss is its own batch's: the global batch's is their mean
        world.all_reduce_sum(&mut losses);
        losses.iter_mut().for_each(|l| *l /= size as f32);
    }
    if let Some(path) = &args.out {
        let outcome = Outcome {
            ranks: size,
            losses,
            params: params
                .ids()
                .map(|id| params.get(id).data().to_vec())
                .collect(),
            centres: match args.mode {
                Mode::Data => Vec::new(),
                Mode::Class => parallel
                    .gather(world, &centres)
                    .map_or_else(Vec::new, Tensor::into_vec),
            },
        };
        if world.is_root() {
            let json = serde_json::to_string(&outcome).expect("numbers serialise");
            std::fs::write(path, json).map_err(|e| Error::Io {
                source: path.display().to_string(),
                message: e.to_string(),
            })?;
        }
    }
    Ok(())
}

/// `loss`, or [`Error::NonFinite`] when its value is a NaN or an infinity.
fn finite(loss: Var<'_, f32>) -> Result<Var<'_, f32>, Error> {
    let value = loss.item();
    if value.is_finite() {
        return Ok(loss);
    }
    Err(Error::NonFinite {
        what: "loss".into(),
        index: 0,
        value: f64::from(value),
    })
}

/// The number of ranks an MPI launcher (Open MPI's or a PMI one) says it started, if any.
#[cfg(not(feature = "mpi"))]
fn launched_ranks() -> Option<usize> {
    ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
}

/// The MLP embedder `x → relu(x·W1 + b1)·W2 + b2`.
struct Model {
    w1: ParamId,
    b1: ParamId,
    w2: ParamId,
    b2: ParamId,
}

impl Model {
    fn forward<'g>(&self, g: &'g Graph<f32>, p: &Params<f32>, x: Tensor<f32>) -> Var<'g, f32> {
        let h = (g.constant(x).matmul(g.param(p, self.w1)) + g.param(p, self.b1)).relu();
        h.matmul(g.param(p, self.w2)) + g.param(p, self.b2)
    }
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

/// The calling thread's CPU time, in nanoseconds, from `/proc/thread-self/schedstat` (zero
/// where it cannot be read).
fn thread_cpu_time() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// Rank 0 prints the figures: the slowest rank's step time sets the pace. The CPU time per
/// step tells the work from the waiting on a machine shared with other jobs.
fn report(args: &Args, world: &World, busy: Duration, cpu: Option<Duration>, traffic: Traffic) {
    let steps = args.steps.max(1) as f64;
    let cpu = cpu.map_or(f64::NAN, |c| c.as_secs_f64() / steps);
    let mut times = [
        busy.as_secs_f64() / steps,
        traffic.time.as_secs_f64() / steps,
        cpu,
    ];
    world.all_reduce_max(&mut times);
    if world.is_root() {
        let [step, comm, cpu] = times;
        println!(
            "mode={:?} ranks={} threads={} global_batch={} classes={} steps={}: {:.0} samples/s, \
             step {:.2} ms (CPU {:.2} ms), communication {:.2} ms/step ({:.1}%), {} collectives \
             and {} bytes per step from each rank",
            args.mode,
            world.size(),
            args.threads,
            args.batch,
            args.classes,
            args.steps,
            args.batch as f64 / step,
            step * 1e3,
            cpu * 1e3,
            comm * 1e3,
            100.0 * comm / step,
            traffic.calls as f64 / steps,
            traffic.bytes as f64 / steps,
        );
    }
}
