//! The blocked head with its centres in bfloat16 beside the same head in f32: memory, speed and
//! what the rounding does to training.
//!
//! Both heads train on one fixed batch (features `[B, D]`, random labels) from the same
//! centres (drawn in f32, rounded to bf16 for both, so they start equal) with SGD and momentum
//! 0.9 (learning rate 0.1; the velocity in f32 for both). Their steps alternate, each timed by
//! the CPU time this process used (run it with `--threads 1` on a shared machine: that is then
//! the stepping thread's time). Printed: the bytes of centres and momentum, each step's loss
//! for both, and the mean step time of each.
//!
//! `cargo run --release --example head_bf16 -- --classes 100000 --steps 10 --threads 1`

use clap::Parser;
use margrad::loss::{Bf16Centres, BlockLoss, BlockedHead, MarginLoss};
use margrad::optim::{sgd_momentum_update, sgd_momentum_update_bf16};
use margrad::{Graph, Labels, Tensor, seeded_rng};
use rand::RngExt;

#[derive(Parser, Debug)]
#[command(about = "The blocked head's centres in bf16 beside f32: memory, speed, training")]
struct Args {
    /// Classes C.
    #[arg(long, default_value_t = 100_000)]
    classes: usize,
    /// Feature width D.
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Batch B.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Classes per block.
    #[arg(long, default_value_t = 1024)]
    block: usize,
    /// Steps of each head.
    #[arg(long, default_value_t = 10)]
    steps: usize,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
}

/// CPU time used by the process so far (user and system), in seconds, from /proc/self/stat.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("Linux /proc");
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .expect("a stat line")
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| fields[i].parse::<f64>().expect("a number");
    (ticks(11) + ticks(12)) / 100.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    if let Some(threads) = args.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()?;
    }
    let (c, d, b) = (args.classes, args.dim, args.batch);
    let mut rng = seeded_rng(0);
    let x = Tensor::<f32>::randn(&[b, d], 0.0, 1.0, &mut rng);
    let labels = Labels::new((0..b).map(|_| rng.random_range(0..c)).collect(), c)?;
    let mut narrow = Bf16Centres::from_f32(&Tensor::randn(&[c, d], 0.0, 0.3, &mut rng))?;
    let mut wide = narrow.to_f32();
    let (mut v_narrow, mut v_wide) = (vec![0.0f32; c * d], vec![0.0f32; c * d]);
    let head = BlockedHead::new(MarginLoss::am(64.0, 0.35)?, args.block)?;
    let mib = |bytes: usize| bytes as f64 / (1 << 20) as f64;
    println!(
        "C = {c}, D = {d}, B = {b}; rounding on AVX-512 BF16: {}",
        Bf16Centres::uses_avx512_bf16()
    );
    println!(
        "centres: f32 {:.0} MiB, bf16 {:.0} MiB; with the f32 momentum: {:.0} against {:.0} MiB",
        mib(4 * c * d),
        mib(narrow.bytes()),
        mib(8 * c * d),
        mib(narrow.bytes() + 4 * c * d)
    );
    let (mut t_wide, mut t_narrow) = (0.0, 0.0);
    println!("step  loss f32     loss bf16    difference");
    for step in 0..args.steps {
        let start = cpu_seconds();
        let g = Graph::new();
        let loss_wide = head
            .step(
                g.leaf(x.clone()),
                &mut wide,
                &labels,
                None,
                |first, w, grad| {
                    let v = &mut v_wide[first * d..first * d + w.len()];
                    sgd_momentum_update(w, v, grad, 0.1, 0.9);
                },
            )?
            .item();
        let middle = cpu_seconds();
        let g = Graph::new();
        let margin = BlockLoss::Margin(head.margin_loss());
        let loss_narrow = head
            .step_bf16(
                g.leaf(x.clone()),
                &mut narrow,
                &labels,
                None,
                margin,
                |first, w, grad| {
                    let v = &mut v_narrow[first * d..first * d + w.len()];
                    sgd_momentum_update_bf16(w, v, grad, 0.1, 0.9);
                },
            )?
            .item();
        let end = cpu_seconds();
        t_wide += middle - start;
        t_narrow += end - middle;
        println!(
            "{:>4}  {loss_wide:<11.6}  {loss_narrow:<11.6}  {:+.2e}",
            step + 1,
            loss_narrow - loss_wide
        );
    }
    let n = args.steps as f64;
    println!(
        "CPU seconds per step: f32 {:.3}, bf16 {:.3} (bf16 / f32 = {:.2})",
        t_wide / n,
        t_narrow / n,
        t_narrow / t_wide
    );
    // how far the centres drifted apart
    let apart = wide
        .data()
        .iter()
        .zip(narrow.to_f32().data())
        .fold(0.0f32, |m, (a, b)| m.max((a - b).abs()));
    println!("largest difference between the two heads' centres: {apart:.3e}");
    Ok(())
}
