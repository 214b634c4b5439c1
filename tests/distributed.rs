//! Distributed training without MPI: the class-parallel head's arithmetic, sharded over threads
//! that stand for ranks, against the dense head on the same global batch; the class-parallel
//! head and the data-parallel helpers in a world of one.

mod common;
use common::rng;
use margrad::distributed::{
    ClassParallelHead, Sampling, Shard, World, parameter_checksum, reduce_gradients,
};
use margrad::loss::{
    ArcFallback, BlockedHead, ClassSample, HEAD_NORM_EPS, MarginLoss, ShardExchange,
    margin_cross_entropy,
};
use margrad::{Element, Error, Graph, Labels, Params, Tensor};
use std::sync::{Arc, Barrier, Mutex};

/// Features `[B, D]`, centres `[C, D]`, labels.
struct Problem<F: Element> {
    x: Tensor<F>,
    w: Tensor<F>,
    labels: Labels,
}

fn problem<F: Element>(b: usize, d: usize, c: usize, seed: u64) -> Problem<F> {
    let mut rng = rng(seed);
    let x = Tensor::<f64>::randn(&[b, d], 0.0, 1.0, &mut rng).cast();
    let w = Tensor::<f64>::randn(&[c, d], 0.0, 0.3, &mut rng).cast();
    let labels = Labels::new((0..b).map(|i| (i * 7 + 3) % c).collect(), c).unwrap();
    Problem { x, w, labels }
}

/// Loss, ∂x and ∂W of the dense head: `margin_cross_entropy(x̂ · Ŵᵀ)`.
fn dense<F: Element>(p: &Problem<F>, loss: &MarginLoss) -> (F, Tensor<F>, Tensor<F>) {
    let g = Graph::new();
    let (x, w) = (g.leaf(p.x.clone()), g.leaf(p.w.clone()));
    let eps = F::from_f64(HEAD_NORM_EPS);
    let cos = x.normalize_rows(eps).matmul_nt(w.normalize_rows(eps));
    let l = margin_cross_entropy(cos, &p.labels, loss).unwrap();
    let grads = l.backward();
    (
        l.item(),
        grads.wrt(x).unwrap().clone(),
        grads.wrt(w).unwrap().clone(),
    )
}

/// Ranks as threads: each puts its buffer in its slot, and after a barrier every one reads
/// all of them.
struct ThreadExchange<F> {
    rank: usize,
    barrier: Arc<Barrier>,
    slots: Arc<Mutex<Vec<Vec<F>>>>,
}

impl<F: Element> ThreadExchange<F> {
    /// Every rank's `mine`, in rank order.
    fn gather(&self, mine: Vec<F>) -> Vec<Vec<F>> {
        self.slots.lock().unwrap()[self.rank] = mine;
        self.barrier.wait();
        let all = self.slots.lock().unwrap().clone();
        self.barrier.wait();
        all
    }
}

impl<F: Element> ShardExchange<F> for ThreadExchange<F> {
    fn combine_rows(&mut self, max: &mut [F], sum: &mut [F], target: &mut [F]) {
        let b = max.len();
        let all = self.gather([&*max, &*sum, &*target].concat());
        for r in 0..b {
            let m = all
                .iter()
                .map(|s| s[r])
                .fold(
                    F::from_f64(f64::NEG_INFINITY),
                    |a, v| {
                        if v > a { v } else { a }
                    },
                );
            max[r] = m;
            sum[r] = all
                .iter()
                .map(|s| {
                    if s[b + r] == F::ZERO {
                        F::ZERO
                    } else {
                        s[b + r] * (s[r] - m).exp()
                    }
                })
                .sum();
            target[r] = all.iter().map(|s| s[2 * b + r]).sum();
        }
    }

    fn sum_features_grad(&mut self, grad: &mut [F]) {
        let all = self.gather(grad.to_vec());
        for (i, g) in grad.iter_mut().enumerate() {
            *g = all.iter().map(|s| s[i]).sum();
        }
    }
}

/// `shard_step` on `size` threads, each owning its shard of the centres: the loss (from each
/// shard), `∂x` (from each shard) and `∂W` assembled from the shards' updates.
fn sharded<F: Element>(
    p: &Problem<F>,
    head: &BlockedHead,
    size: usize,
    sampling: Option<Sampling>,
) -> Vec<(F, Tensor<F>, Tensor<F>)> {
    let [c, d] = [p.w.shape()[0], p.w.shape()[1]];
    let barrier = Arc::new(Barrier::new(size));
    let slots = Arc::new(Mutex::new(vec![Vec::new(); size]));
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..size)
            .map(|rank| {
                let mut exchange = ThreadExchange {
                    rank,
                    barrier: barrier.clone(),
                    slots: slots.clone(),
                };
                s.spawn(move || {
                    let shard = ClassParallelHead::shard_of(c, size, rank);
                    let rows = shard.start * d..shard.end * d;
                    let mut w =
                        Tensor::from_vec(p.w.data()[rows].to_vec(), &[shard.len(), d]).unwrap();
                    let mut dw = Tensor::<F>::full(p.w.shape(), F::from_f64(f64::NAN));
                    let sample = sampling.map(|s| {
                        ClassSample::draw_keyed(&p.labels, c, shard.clone(), s.rate, s.key).unwrap()
                    });
                    let (loss, dx) = head
                        .shard_step(
                            p.x.data(),
                            &mut w,
                            shard.start,
                            &p.labels,
                            sample.as_ref(),
                            &mut exchange,
                            |first, _, grad| {
                                dw.data_mut()[first * d..first * d + grad.len()]
                                    .copy_from_slice(grad);
                            },
                        )
                        .unwrap();
                    (loss, Tensor::from_vec(dx, p.x.shape()).unwrap(), dw, shard)
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        // every shard's loss and ∂x, each with ∂W put together from every shard's rows
        let mut dw = Tensor::<F>::zeros(p.w.shape());
        for (_, _, part, shard) in &results {
            let rows = shard.start * d..shard.end * d;
            dw.data_mut()[rows.clone()].copy_from_slice(&part.data()[rows]);
        }
        results
            .into_iter()
            .map(|(loss, dx, _, _)| (loss, dx, dw.clone()))
            .collect()
    })
}

fn relative(a: &Tensor<impl Element>, b: &Tensor<impl Element>) -> f64 {
    let scale = b
        .data()
        .iter()
        .map(|v| v.to_f64().abs())
        .fold(0.0, f64::max);
    let diff = a
        .data()
        .iter()
        .zip(b.data())
        .map(|(x, y)| (x.to_f64() - y.to_f64()).abs())
        .fold(0.0, f64::max);
    diff / scale.max(1e-30)
}

#[test]
fn the_class_parallel_head_is_the_dense_head_on_the_global_batch() {
    let losses = [
        MarginLoss::am(30.0, 0.35).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).unwrap(),
        MarginLoss::enhanced(30.0, 0.35).unwrap(),
    ];
    for loss in &losses {
        for (size, block) in [(1, 4), (2, 3), (3, 100), (4, 1)] {
            let p = problem::<f64>(12, 8, 11, 1);
            let head = BlockedHead::new(loss.clone(), block).unwrap();
            let (l, dx, dw) = dense(&p, loss);
            for (rank, (ls, dxs, dws)) in sharded(&p, &head, size, None).iter().enumerate() {
                let what = format!("{:?} on {size} shards, rank {rank}", loss.kind);
                assert!(
                    (ls - l).abs() <= 1e-13 * l.abs(),
                    "{what}: loss {ls} vs {l}"
                );
                assert!(relative(dxs, &dx) < 1e-12, "{what}: ∂x");
                assert!(relative(dws, &dw) < 1e-12, "{what}: ∂W");
            }
        }
    }
    // in f32, to the precision the brief asks of the MPI runs
    let loss = &losses[0];
    let p = problem::<f32>(24, 16, 40, 2);
    let p64 = Problem {
        x: p.x.cast::<f64>(),
        w: p.w.cast::<f64>(),
        labels: p.labels.clone(),
    };
    let (l, dx, dw) = dense(&p64, loss);
    for (ls, dxs, dws) in sharded(&p, &BlockedHead::new(loss.clone(), 8).unwrap(), 3, None) {
        assert!((f64::from(ls) - l).abs() <= 1e-6 * l.abs(), "{ls} vs {l}");
        assert!(relative(&dxs, &dx) < 1e-5 && relative(&dws, &dw) < 1e-5);
    }
}

#[test]
fn sampled_shards_make_the_sampled_blocked_head_whatever_the_number_of_shards() {
    let (c, d) = (40, 8);
    let mut p = problem::<f64>(12, d, c, 5);
    let sampling = Sampling { rate: 0.5, key: 77 };
    let whole = ClassSample::draw_keyed(&p.labels, c, 0..c, sampling.rate, sampling.key).unwrap();
    let kept = whole.classes();
    // every label, and some of the other classes, not all
    assert!(p.labels.values().iter().all(|l| kept.contains(l)));
    let positives = (0..c).filter(|k| p.labels.values().contains(k)).count();
    assert!(kept.len() > positives && kept.len() < c, "{kept:?}");
    // the shards' parts are the whole sample, however the classes are cut
    for size in [2, 3, 4, 7] {
        let union: Vec<usize> = (0..size)
            .flat_map(|rank| {
                let shard = ClassParallelHead::shard_of(c, size, rank);
                ClassSample::draw_keyed(&p.labels, c, shard, sampling.rate, sampling.key)
                    .unwrap()
                    .classes()
                    .to_vec()
            })
            .collect();
        assert_eq!(union, kept, "{size} shards");
    }
    // a centre left out is not read: NaN there changes nothing
    for row in (0..c).filter(|k| !kept.contains(k)) {
        p.w.data_mut()[row * d..(row + 1) * d].fill(f64::NAN);
    }
    // the single-process blocked head over the same sample
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 3).unwrap();
    let g = Graph::new();
    let x = g.leaf(p.x.clone());
    let mut w = p.w.clone();
    let mut dw = Tensor::<f64>::full(p.w.shape(), f64::NAN);
    let l = head
        .step(x, &mut w, &p.labels, Some(&whole), |first, _, grad| {
            dw.data_mut()[first * d..first * d + grad.len()].copy_from_slice(grad)
        })
        .unwrap();
    let (l, dx) = (l.item(), l.backward().wrt(x).unwrap().clone());
    assert!(l.is_finite());
    for size in [1, 2, 3, 4] {
        for (rank, (ls, dxs, dws)) in sharded(&p, &head, size, Some(sampling)).iter().enumerate() {
            let what = format!("{size} shards, rank {rank}");
            assert!(
                (ls - l).abs() <= 1e-13 * l.abs(),
                "{what}: loss {ls} vs {l}"
            );
            assert!(relative(dxs, &dx) < 1e-12, "{what}: ∂x");
            // a centre left out is handed to no update, as in the blocked head
            for row in 0..c {
                let (a, b) = (&dws.data()[row * d..][..d], &dw.data()[row * d..][..d]);
                let sampled = kept.contains(&row);
                assert_eq!(a.iter().all(|v| v.is_nan()), !sampled, "{what}: row {row}");
                assert_eq!(b.iter().all(|v| v.is_nan()), !sampled, "row {row}");
                if sampled {
                    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
                    let diff = a
                        .iter()
                        .zip(b)
                        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
                    assert!(diff <= 1e-12 * scale.max(1e-30), "{what}: ∂W row {row}");
                }
            }
        }
    }
}

#[test]
fn a_keyed_sample_holds_the_rate_in_expectation_and_every_class_at_rate_one() {
    let labels = Labels::new(vec![3, 3, 90, 500], 1000).unwrap();
    let all = ClassSample::draw_keyed(&labels, 1000, 100..200, 1.0, 1).unwrap();
    assert_eq!(all.classes(), (100..200).collect::<Vec<_>>());
    // ⌊0.1·1000⌋ = 100 expected: binomial over 997 negatives at q = 97/997, sd ≈ 9.4
    let sizes: Vec<usize> = (0..20)
        .map(|key| {
            let s = ClassSample::draw_keyed(&labels, 1000, 0..1000, 0.1, key).unwrap();
            assert!([3, 90, 500].iter().all(|p| s.classes().contains(p)));
            s.classes().len()
        })
        .collect();
    let mean = sizes.iter().sum::<usize>() as f64 / 20.0;
    assert!((mean - 100.0).abs() < 10.0, "{sizes:?}");
    // new keys, new samples
    assert!(sizes.windows(2).any(|w| w[0] != w[1]));
    for bad in [0.0, 1.5, f64::NAN] {
        assert!(ClassSample::draw_keyed(&labels, 1000, 0..1000, bad, 1).is_err());
    }
    assert!(ClassSample::draw_keyed(&labels, 1000, 900..1001, 0.5, 1).is_err());
    let wrong = Labels::new(vec![1000], 1001).unwrap();
    assert!(ClassSample::draw_keyed(&wrong, 1000, 0..1000, 0.5, 1).is_err());
}

#[test]
fn a_shard_holding_no_target_and_a_shard_of_one_class_still_agree() {
    // every label in the first class: the other shards own no target
    let mut p = problem::<f64>(6, 5, 4, 3);
    p.labels = Labels::new(vec![0; 6], 4).unwrap();
    let loss = MarginLoss::am(30.0, 0.35).unwrap();
    let (l, dx, dw) = dense(&p, &loss);
    for (ls, dxs, dws) in sharded(&p, &BlockedHead::new(loss.clone(), 2).unwrap(), 4, None) {
        assert!((ls - l).abs() <= 1e-13 * l.abs());
        assert!(relative(&dxs, &dx) < 1e-12 && relative(&dws, &dw) < 1e-12);
    }
}

#[test]
fn in_a_world_of_one_the_class_parallel_head_is_the_blocked_head_bit_for_bit() {
    let p = problem::<f32>(16, 8, 30, 4);
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 7).unwrap();
    let world = World::single();
    let parallel = ClassParallelHead::new(head.clone(), 30, &world).unwrap();
    assert_eq!(parallel.shard(), 0..30);
    let sgd = |_: usize, rows: &mut [f32], grad: &[f32]| {
        rows.iter_mut().zip(grad).for_each(|(w, g)| *w -= 0.5 * g);
    };
    let run = |distributed: bool| {
        let mut w = p.w.clone();
        let g = Graph::new();
        let x = g.leaf(p.x.clone());
        let l = if distributed {
            parallel
                .step(&world, x, &mut w, &p.labels, None, sgd)
                .unwrap()
        } else {
            head.step(x, &mut w, &p.labels, None, sgd).unwrap()
        };
        let dx = l.backward().wrt(x).unwrap().clone();
        (l.item().to_bits(), dx.into_vec(), w.into_vec())
    };
    assert_eq!(run(true), run(false));
}

#[test]
fn bad_labels_are_refused_before_anything_moves() {
    let p = problem::<f32>(4, 3, 5, 5);
    let world = World::single();
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 2).unwrap();
    let parallel = ClassParallelHead::new(head.clone(), 5, &world).unwrap();
    let g = Graph::new();
    let mut w = p.w.clone();
    let wrong = Labels::new(vec![0, 1, 7, 2], 9).unwrap();
    let err = parallel
        .step(
            &world,
            g.leaf(p.x.clone()),
            &mut w,
            &wrong,
            None,
            |_, _, _| panic!("no update"),
        )
        .unwrap_err();
    assert_eq!(
        err,
        Error::LabelOutOfRange {
            index: 2,
            label: 7,
            classes: 5
        }
    );
    let short = Labels::new(vec![0, 1], 5).unwrap();
    let err = parallel
        .step(
            &world,
            g.leaf(p.x.clone()),
            &mut w,
            &short,
            None,
            |_, _, _| panic!("no update"),
        )
        .unwrap_err();
    assert!(matches!(err, Error::DataLength { .. }), "{err}");
    assert!(ClassParallelHead::new(head, 0, &world).is_err());
    assert_eq!(w.data(), p.w.data());
}

#[test]
fn gradients_are_reduced_in_place_and_checksums_agree_in_a_world_of_one() {
    let world = World::single();
    let mut rng = rng(6);
    let mut params = Params::<f32>::new();
    let w = params.add("w", Tensor::randn(&[3, 2], 0.0, 1.0, &mut rng));
    let b = params.add("b", Tensor::randn(&[2], 0.0, 1.0, &mut rng));
    let mut grads = {
        let g = Graph::new();
        let x = g.constant(Tensor::randn(&[4, 3], 0.0, 1.0, &mut rng));
        (x.matmul(g.param(&params, w)) + g.param(&params, b))
            .sum()
            .backward()
    };
    let before: Vec<Vec<f32>> = grads.params().map(|(_, t)| t.data().to_vec()).collect();
    reduce_gradients(&world, &mut grads, 0.5).unwrap();
    let after: Vec<Vec<f32>> = grads.params().map(|(_, t)| t.data().to_vec()).collect();
    for (a, b) in after.iter().zip(&before) {
        assert!(a.iter().zip(b).all(|(a, b)| *a == 0.5 * b));
    }
    let sum = parameter_checksum(&world, &params).unwrap();
    params.get_mut(b).data_mut()[0] += 1.0;
    assert_ne!(parameter_checksum(&world, &params).unwrap(), sum);
    // one rank's shard is the whole data set's batches
    let shard = Shard::new(&world, 5, 12).unwrap();
    assert_eq!(shard.steps(), 2);
    assert_eq!(shard.batches(1, 0).concat().len(), 10);
}

#[test]
fn a_whole_head_cuts_into_the_shards_of_any_world_and_gathers_back() {
    let all = Tensor::<f32>::from_fn(&[10, 3], |i| i as f32);
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 4).unwrap();
    for size in 1..=4 {
        let shards: Vec<Tensor<f32>> = (0..size)
            .map(|rank| {
                ClassParallelHead::for_rank(head.clone(), 10, rank, size)
                    .unwrap()
                    .take_shard(&all)
                    .unwrap()
            })
            .collect();
        let joined: Vec<f32> = shards.iter().flat_map(|s| s.data().to_vec()).collect();
        assert_eq!(joined, all.data(), "{size} ranks");
    }
    let world = World::single();
    let one = ClassParallelHead::new(head.clone(), 10, &world).unwrap();
    let shard = one.take_shard(&all).unwrap();
    assert_eq!(one.gather(&world, &shard).unwrap(), all);
    let wrong = Tensor::<f32>::zeros(&[9, 3]);
    assert!(matches!(
        one.take_shard(&wrong),
        Err(Error::DataLength { .. })
    ));
    assert!(ClassParallelHead::for_rank(head, 10, 2, 2).is_err());
}

#[test]
fn a_non_finite_gradient_is_refused_and_nothing_is_changed() {
    let world = World::single();
    let mut params = Params::<f32>::new();
    let v = params.add("v", Tensor::from_vec(vec![1.0, 2.0, 3.0], &[3]).unwrap());
    let w = params.add("w", Tensor::from_vec(vec![1.0, f32::NAN], &[2]).unwrap());
    for factor in [1.0, 0.5] {
        let mut grads = {
            let g = Graph::new();
            let (v, w) = (g.param(&params, v), g.param(&params, w));
            ((v * v).sum() + (w * w).sum()).backward()
        };
        let before: Vec<f32> = grads
            .params()
            .flat_map(|(_, t)| t.data().to_vec())
            .collect();
        match reduce_gradients(&world, &mut grads, factor) {
            // w's second element, after v's three: the flattened gradients' index 4
            Err(Error::NonFinite {
                index: 4, value, ..
            }) if value.is_nan() => {}
            other => panic!("factor {factor}: expected a NaN at element 4, got {other:?}"),
        }
        let after: Vec<f32> = grads
            .params()
            .flat_map(|(_, t)| t.data().to_vec())
            .collect();
        assert_eq!(
            after[..4],
            before[..4],
            "factor {factor}: the gradients changed"
        );
    }
}

/// Built without MPI, the example is a world of one: started by a launcher as one of several
/// ranks it refuses to run, instead of running independent copies that write the same output.
#[cfg(not(feature = "mpi"))]
#[test]
fn without_mpi_the_example_refuses_to_run_as_one_of_several_ranks() {
    let exe = std::env::current_exe().unwrap();
    let example = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("distributed_step");
    assert!(
        example.exists(),
        "{} is not built: run `cargo test` without --test, or `cargo build --examples` first",
        example.display()
    );
    let (_scratch, out) = common::scratch_path("no-mpi", "out.json");
    for launcher in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        let output = std::process::Command::new(&example)
            .args([
                "--steps",
                "1",
                "--warmup",
                "0",
                "--out",
                out.to_str().unwrap(),
            ])
            .env(launcher, "2")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{launcher}: {stderr}");
        assert!(
            stderr.contains("build with `--features mpi`"),
            "{launcher}: {stderr}"
        );
        assert!(
            !out.exists(),
            "{launcher}: the refused run wrote its results"
        );
    }
    // a launcher's world of one is a world of one
    let output = std::process::Command::new(&example)
        .args(["--steps", "1", "--warmup", "0", "--batch", "8"])
        .env("OMPI_COMM_WORLD_SIZE", "1")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
}

// ---- the trainer in a world of one ----

/// A run of the trainer that takes a fraction of a second: the digits, a 16-wide MLP, SGD.
fn small_config(epochs: usize) -> margrad::train::TrainConfig {
    margrad::train::TrainConfig {
        hidden: vec![16],
        embed_dim: 8,
        dropout: 0.1,
        epochs,
        batch: 24,
        optimizer: margrad::train::MethodName::Sgd,
        lr: 0.05,
        momentum: 0.9,
        // the test process's pool is rayon's global one, already running
        threads: None,
        ..Default::default()
    }
}

/// A path `name` in a scratch folder of its own, removed when the returned guard drops.
fn run_dir(name: &str) -> (common::Scratch, std::path::PathBuf) {
    common::scratch_path("dist", name)
}

/// Every parameter's bits in the checkpoint of the run in `dir`.
fn saved_bits(dir: &std::path::Path) -> Vec<Vec<u32>> {
    let saved =
        margrad::checkpoint::load::<f32>(&dir.join(margrad::train::CHECKPOINT_FILE)).unwrap();
    saved
        .params
        .ids()
        .map(|id| {
            saved
                .params
                .get(id)
                .data()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect()
}

#[test]
fn the_distributed_trainer_in_a_world_of_one_trains_writes_and_resumes_bit_for_bit() {
    use margrad::train::{TrainConfig, train_distributed};
    let world = World::single();
    let mut events = 0;
    let (_scratch, whole) = run_dir("whole");
    let metrics = train_distributed(&world, &small_config(2), &whole, &mut |_| events += 1)
        .unwrap()
        .expect("rank 0 returns the metrics");
    // 1,437 training digits in global batches of 24: 59 steps per epoch, the last 21 left out
    assert_eq!(events, 2 * (59 + 1));
    assert_eq!(metrics.history.len(), 2);
    assert!(metrics.history[1].loss < metrics.history[0].loss);
    assert!(metrics.final_metrics.test_accuracy > 0.5);
    for file in ["metrics.json", "model.safetensors", "loss.svg"] {
        assert!(whole.join(file).exists(), "no {file}");
    }
    // one epoch, then the second from its checkpoint: the same bits
    let (_scratch, part) = run_dir("part");
    train_distributed(&world, &small_config(1), &part, &mut |_| {}).unwrap();
    let resumed = TrainConfig {
        resume: Some(part.join(margrad::train::CHECKPOINT_FILE)),
        ..small_config(2)
    };
    let again = train_distributed(&world, &resumed, &part, &mut |_| {})
        .unwrap()
        .unwrap();
    assert_eq!(saved_bits(&part), saved_bits(&whole));
    let figures = |history: &[margrad::metrics::EpochRecord]| -> Vec<(f64, f64, f64)> {
        history
            .iter()
            .map(|r| (r.loss, r.train_accuracy, r.test_accuracy))
            .collect()
    };
    assert_eq!(figures(&again.history), figures(&metrics.history));
    for dir in [whole, part] {
        std::fs::remove_dir_all(dir).unwrap();
    }
}

/// The built `train` example.
fn train_example() -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let train = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join("train");
    assert!(
        train.exists(),
        "{} is not built: run `cargo test`",
        train.display()
    );
    train
}

/// Started by an MPI launcher as one of several ranks without `--distributed`, the trainer
/// refuses to run (the ranks would train independent copies into the same folder).
#[test]
fn the_trainer_started_as_one_of_several_ranks_needs_distributed() {
    let (_scratch, out) = run_dir("not-distributed");
    for launcher in ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE"] {
        let output = std::process::Command::new(train_example())
            .args(["--epochs", "1", "--out", out.to_str().unwrap()])
            .env(launcher, "2")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{launcher}: {stderr}");
        assert!(
            stderr.contains("started as one of 2 ranks by an MPI launcher: add --distributed"),
            "{launcher}: {stderr}"
        );
        assert!(!out.exists(), "{launcher}: {stderr}");
    }
}

/// Built without MPI, `train --distributed` is refused, naming the feature it needs.
#[cfg(not(feature = "mpi"))]
#[test]
fn without_mpi_the_trainer_refuses_to_run_distributed() {
    let train = train_example();
    let (_scratch, out) = run_dir("refused");
    let output = std::process::Command::new(&train)
        .args([
            "--distributed",
            "--epochs",
            "1",
            "--out",
            out.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--distributed needs the `mpi` cargo feature"),
        "{stderr}"
    );
    assert!(!out.exists(), "{stderr}");
}

#[test]
fn a_global_batch_larger_than_the_training_set_is_refused_before_training() {
    use margrad::train::{TrainConfig, TrainError, train_distributed};
    let world = World::single();
    let (_scratch, out) = run_dir("batch-too-large");
    // 1,437 training digits: a global batch of 1,440 would leave no step in an epoch
    let config = TrainConfig {
        batch: 1440,
        ..small_config(1)
    };
    let err = train_distributed(&world, &config, &out, &mut |_| {}).unwrap_err();
    assert!(
        matches!(
            &err,
            TrainError::Input(margrad::Error::InvalidSetting { name: "batch", .. })
        ),
        "{err}"
    );
    assert!(
        !out.join("metrics.json").exists(),
        "an empty run wrote metrics"
    );
    let _ = std::fs::remove_dir_all(out);
}
