//! The blocked large-class head: the same loss and gradients as the dense path (normalise,
//! matmul, fused margin loss) for every loss and several block sizes, gradchecked, the same
//! bits on 1 and 2 threads, class sampling, and clear errors.

mod common;
use common::rng;
use margrad::loss::{
    ArcFallback, BlockedHead, ClassSample, HEAD_NORM_EPS, MarginLoss, margin_cross_entropy,
};
use margrad::{Element, Error, GradcheckOptions, Graph, Labels, Tensor, gradcheck_with};

/// The losses of the family a cosine head trains with.
fn catalogue() -> Vec<MarginLoss> {
    vec![
        MarginLoss::normface(16.0).unwrap(),
        MarginLoss::am(30.0, 0.35).unwrap(),
        MarginLoss::am(64.0, 0.35).unwrap(),
        MarginLoss::enhanced(30.0, 0.35).unwrap(),
        MarginLoss::enhanced_margin_only(30.0, 0.35).unwrap(),
        MarginLoss::enhanced_scaling_only(30.0, 0.35).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::None).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::EasyMargin).unwrap(),
        MarginLoss::combined(30.0, 1.0, 0.3, 0.2, ArcFallback::Threshold).unwrap(),
        MarginLoss::combined(30.0, 1.35, 0.2, 0.1, ArcFallback::None).unwrap(),
    ]
}

/// A problem: features `[B, D]`, centres `[C, D]`, labels.
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

/// Loss, ∂x and ∂W.
type Outcome<F> = (F, Tensor<F>, Tensor<F>);

/// The dense path: `margin_cross_entropy(x̂ · Ŵᵀ)`.
fn dense<F: Element>(p: &Problem<F>, loss: &MarginLoss) -> Outcome<F> {
    let g = Graph::new();
    let (x, w) = (g.leaf(p.x.clone()), g.leaf(p.w.clone()));
    let eps = F::from_f64(HEAD_NORM_EPS);
    let cos = x.normalize_rows(eps).matmul_nt(w.normalize_rows(eps));
    let l = margin_cross_entropy(cos, &p.labels, loss).unwrap();
    let value = l.item();
    let grads = l.backward();
    (
        value,
        grads.wrt(x).unwrap().clone(),
        grads.wrt(w).unwrap().clone(),
    )
}

/// The fused step with an update that only records the centres' gradient.
fn fused<F: Element>(p: &Problem<F>, head: &BlockedHead) -> Outcome<F> {
    let d = p.x.shape()[1];
    let mut w = p.w.clone();
    let mut dw = Tensor::<F>::full(p.w.shape(), F::from_f64(f64::NAN));
    let g = Graph::new();
    let x = g.leaf(p.x.clone());
    let l = head
        .step(x, &mut w, &p.labels, None, |first, _, grad| {
            dw.data_mut()[first * d..first * d + grad.len()].copy_from_slice(grad);
        })
        .unwrap();
    assert_eq!(w.data(), p.w.data(), "an update that changes nothing");
    let value = l.item();
    let dx = l.backward().wrt(x).unwrap().clone();
    (value, dx, dw)
}

/// The blocked loss on the tape, with both inputs.
fn taped<F: Element>(p: &Problem<F>, head: &BlockedHead) -> Outcome<F> {
    let g = Graph::new();
    let (x, w) = (g.leaf(p.x.clone()), g.leaf(p.w.clone()));
    let l = head.loss(x, w, &p.labels).unwrap();
    let value = l.item();
    let grads = l.backward();
    (
        value,
        grads.wrt(x).unwrap().clone(),
        grads.wrt(w).unwrap().clone(),
    )
}

/// The largest absolute difference over the largest entry of `reference`.
fn relative<F: Element>(a: &Tensor<F>, reference: &Tensor<F>) -> f64 {
    let top = reference
        .data()
        .iter()
        .fold(0.0f64, |m, v| m.max(v.to_f64().abs()));
    a.max_abs_diff(reference) / top
}

fn agrees_with_dense<F: Element>(tolerance: f64) {
    let (b, d, c) = (6, 8, 12);
    for loss in catalogue() {
        let p = problem::<F>(b, d, c, 1);
        let (l0, dx0, dw0) = dense(&p, &loss);
        for block in [1, 4, 5, 12, 100] {
            let head = BlockedHead::new(loss.clone(), block).unwrap();
            let fused = fused(&p, &head);
            let taped = taped(&p, &head);
            for (how, (l, dx, dw)) in [("step", &fused), ("loss", &taped)] {
                let what = format!("{} {how}, block {block}, {}", loss.name(), F::NAME);
                let gap = ((l.to_f64() - l0.to_f64()) / l0.to_f64()).abs();
                assert!(gap <= tolerance, "{what}: loss {l:?} vs dense {l0:?}");
                let gap = relative(dx, &dx0);
                assert!(gap <= tolerance, "{what}: ∂x off by {gap:e}");
                let gap = relative(dw, &dw0);
                assert!(gap <= tolerance, "{what}: ∂W off by {gap:e}");
            }
            // the fused step and the op on the tape run the same arithmetic
            assert_eq!(fused.0, taped.0);
            assert_eq!(fused.1.data(), taped.1.data());
            assert_eq!(fused.2.data(), taped.2.data());
        }
    }
}

#[test]
fn every_loss_and_block_size_agrees_with_the_dense_path_in_f64() {
    agrees_with_dense::<f64>(1e-12);
}

#[test]
fn every_loss_and_block_size_agrees_with_the_dense_path_in_f32() {
    agrees_with_dense::<f32>(1e-6);
}

#[test]
fn one_block_holding_every_class_is_the_dense_loss_bit_for_bit() {
    // with one block, the row statistics are summed in the dense kernel's order
    let p = problem::<f32>(5, 16, 9, 2);
    let loss = MarginLoss::am(64.0, 0.35).unwrap();
    let head = BlockedHead::new(loss.clone(), 9).unwrap();
    assert_eq!(taped(&p, &head).0, dense(&p, &loss).0);
}

#[test]
fn gradients_of_features_and_centres_pass_gradcheck() {
    let options = GradcheckOptions::default();
    for loss in catalogue() {
        for block in [1, 3, 7] {
            let p = problem::<f64>(4, 5, 7, 3);
            let head = BlockedHead::new(loss.clone(), block).unwrap();
            let labels = p.labels.clone();
            gradcheck_with(&[p.x.clone(), p.w.clone()], &options, |_, v| {
                head.loss(v[0], v[1], &labels).unwrap()
            })
            .unwrap_or_else(|e| panic!("{} block {block}: {e}", loss.name()));
        }
    }
}

#[test]
fn the_features_gradient_of_the_step_scales_with_the_outputs_gradient() {
    let p = problem::<f64>(4, 6, 10, 4);
    let head = BlockedHead::new(
        MarginLoss::arcface(32.0, 0.5, ArcFallback::None).unwrap(),
        3,
    );
    let head = head.unwrap();
    let (_, dx, _) = fused(&p, &head);
    let g = Graph::new();
    let x = g.leaf(p.x.clone());
    let l = head
        .step(x, &mut p.w.clone(), &p.labels, None, |_, _, _| {})
        .unwrap();
    let tripled = (l * 3.0).backward().wrt(x).unwrap().clone();
    let expected: Vec<f64> = dx.data().iter().map(|v| 3.0 * v).collect();
    assert_eq!(tripled.data(), &expected[..]);
}

/// SGD with momentum and weight decay (PyTorch's: `v ← μv + g + λw`, `w ← w − lr·v`), over
/// the rows the head hands it.
struct Sgd {
    velocity: Vec<f32>,
    lr: f32,
    momentum: f32,
    decay: f32,
    dim: usize,
}

impl Sgd {
    fn new(classes: usize, dim: usize, decay: f32) -> Self {
        Sgd {
            velocity: vec![0.0; classes * dim],
            lr: 0.1,
            momentum: 0.9,
            decay,
            dim,
        }
    }

    fn update(&mut self, first: usize, rows: &mut [f32], grad: &[f32]) {
        let v = &mut self.velocity[first * self.dim..first * self.dim + rows.len()];
        for ((w, v), &g) in rows.iter_mut().zip(v).zip(grad) {
            *v = self.momentum * *v + g + self.decay * *w;
            *w -= self.lr * *v;
        }
    }
}

/// Two training steps of the centres; returns the losses, ∂x of each, the centres and the
/// velocity after them.
fn train(
    p: &Problem<f32>,
    head: &BlockedHead,
    samples: &[Option<ClassSample>],
    decay: f32,
) -> (Vec<f32>, Vec<Tensor<f32>>, Tensor<f32>, Vec<f32>) {
    let (c, d) = (p.w.shape()[0], p.w.shape()[1]);
    let mut w = p.w.clone();
    let mut sgd = Sgd::new(c, d, decay);
    let (mut losses, mut dxs) = (Vec::new(), Vec::new());
    for sample in samples {
        let g = Graph::new();
        let x = g.leaf(p.x.clone());
        let update = |first, rows: &mut [f32], grad: &[f32]| sgd.update(first, rows, grad);
        let l = head
            .step(x, &mut w, &p.labels, sample.as_ref(), update)
            .unwrap();
        losses.push(l.item());
        dxs.push(l.backward().wrt(x).unwrap().clone());
    }
    (losses, dxs, w, sgd.velocity)
}

#[test]
fn one_and_two_threads_give_the_same_bits() {
    // large enough for every parallel path: B·block ≥ 2^15 and GEMMs over 2^20 multiply-adds
    let p = problem::<f32>(64, 64, 3000, 5);
    let head = BlockedHead::new(MarginLoss::enhanced(64.0, 0.35).unwrap(), 1024).unwrap();
    let sample = ClassSample::draw(&p.labels, 3000, 0.5, &mut rng(6)).unwrap();
    let run = |threads| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| train(&p, &head, &[None, Some(sample.clone())], 5e-4))
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.0, two.0);
    for (a, b) in one.1.iter().zip(&two.1) {
        assert_eq!(a.data(), b.data());
    }
    assert_eq!(one.2.data(), two.2.data());
    assert_eq!(one.3, two.3);
}

#[test]
fn sampling_every_class_is_the_full_head_bit_for_bit() {
    let p = problem::<f32>(8, 16, 50, 7);
    let head = BlockedHead::new(MarginLoss::am(64.0, 0.35).unwrap(), 7).unwrap();
    let all = ClassSample::draw(&p.labels, 50, 1.0, &mut rng(8)).unwrap();
    assert_eq!(all.classes(), (0..50).collect::<Vec<_>>());
    let full = train(&p, &head, &[None, None], 5e-4);
    let sampled = train(&p, &head, &[Some(all.clone()), Some(all)], 5e-4);
    assert_eq!(full.0, sampled.0);
    assert_eq!(full.1[1].data(), sampled.1[1].data());
    assert_eq!(full.2.data(), sampled.2.data());
    assert_eq!(full.3, sampled.3);
}

#[test]
fn a_sample_holds_every_batch_class_and_uniform_negatives_up_to_the_rate() {
    let (c, rate) = (1000, 0.1);
    let labels = Labels::new(vec![3, 999, 3, 500, 0, 17], c).unwrap();
    let a = ClassSample::draw(&labels, c, rate, &mut rng(9)).unwrap();
    assert_eq!(a.classes().len(), 100);
    assert!(
        a.classes().windows(2).all(|w| w[0] < w[1]),
        "sorted, unique"
    );
    for l in labels.values() {
        assert!(a.classes().binary_search(l).is_ok(), "label {l} sampled");
    }
    // seeded: the same generator state gives the same sample; another seed another one
    assert_eq!(a, ClassSample::draw(&labels, c, rate, &mut rng(9)).unwrap());
    assert_ne!(
        a,
        ClassSample::draw(&labels, c, rate, &mut rng(10)).unwrap()
    );
    // uniform: over many draws, every negative class is drawn about as often
    let mut counts = vec![0usize; c];
    let mut generator = rng(11);
    let draws = 400;
    for _ in 0..draws {
        for &k in ClassSample::draw(&labels, c, rate, &mut generator)
            .unwrap()
            .classes()
        {
            counts[k] += 1;
        }
    }
    let negatives: Vec<f64> = (0..c)
        .filter(|k| !labels.values().contains(k))
        .map(|k| counts[k] as f64)
        .collect();
    let expected = draws as f64 * (100.0 - 5.0) / (c as f64 - 5.0); // 5 distinct labels
    let mean = negatives.iter().sum::<f64>() / negatives.len() as f64;
    assert!((mean - expected).abs() < 1e-9, "{mean} vs {expected}");
    let spread = negatives
        .iter()
        .fold(0.0f64, |m, &n| m.max((n - expected).abs()));
    // binomial(400, 0.0956): sd 5.9; 5 sd over 995 classes
    assert!(
        spread < 30.0,
        "a class drawn {spread} times off the expected {expected}"
    );
    // more batch classes than the rate allows: the batch's classes alone
    let few = ClassSample::draw(&labels, c, 0.002, &mut rng(12)).unwrap();
    assert_eq!(few.classes(), &[0, 3, 17, 500, 999]);
}

#[test]
fn a_sampled_step_is_the_dense_loss_over_the_sample_and_leaves_the_others_untouched() {
    let (b, d, c) = (6, 8, 40);
    let p = problem::<f32>(b, d, c, 13);
    let loss = MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).unwrap();
    let head = BlockedHead::new(loss.clone(), 4).unwrap();
    let sample = ClassSample::draw(&p.labels, c, 0.3, &mut rng(14)).unwrap();
    let kept = sample.classes();
    assert_eq!(kept.len(), 12);

    // the dense path over the sampled centres only, labels renumbered inside the sample
    let gathered: Vec<f32> = kept
        .iter()
        .flat_map(|&k| p.w.data()[k * d..(k + 1) * d].to_vec())
        .collect();
    let renumbered = p
        .labels
        .values()
        .iter()
        .map(|l| kept.binary_search(l).unwrap())
        .collect();
    let sub = Problem {
        x: p.x.clone(),
        w: Tensor::from_vec(gathered, &[kept.len(), d]).unwrap(),
        labels: Labels::new(renumbered, kept.len()).unwrap(),
    };
    let (l0, dx0, _) = dense(&sub, &loss);

    // two steps with momentum and weight decay, sampled the same way
    let decay = 5e-4;
    let (losses, dxs, w, velocity) = train(
        &p,
        &head,
        &[Some(sample.clone()), Some(sample.clone())],
        decay,
    );
    assert!(
        ((losses[0] - l0) / l0).abs() <= 1e-6,
        "{} vs {l0}",
        losses[0]
    );
    assert!(relative(&dxs[0], &dx0) <= 1e-6);
    for k in 0..c {
        let rows = k * d..(k + 1) * d;
        let (before, after, v) = (
            &p.w.data()[rows.clone()],
            &w.data()[rows.clone()],
            &velocity[rows],
        );
        if kept.contains(&k) {
            assert_ne!(before, after, "sampled centre {k} trained");
            assert!(v.iter().any(|&v| v != 0.0));
        } else {
            // neither momentum nor weight decay touches a centre that was not sampled
            assert_eq!(before, after, "centre {k} not sampled");
            assert!(v.iter().all(|&v| v == 0.0));
        }
    }
}

#[test]
fn bad_settings_and_labels_are_errors() {
    let am = MarginLoss::am(64.0, 0.35).unwrap();
    assert!(matches!(
        BlockedHead::new(am.clone(), 0),
        Err(Error::InvalidSetting {
            name: "class block",
            ..
        })
    ));
    let p = problem::<f32>(3, 4, 5, 15);
    for rate in [0.0, -0.5, 1.5, f64::NAN] {
        assert!(matches!(
            ClassSample::draw(&p.labels, 5, rate, &mut rng(0)),
            Err(Error::InvalidSetting {
                name: "class sampling rate",
                ..
            })
        ));
    }
    // labels of 10 classes against 5 centres
    let head = BlockedHead::new(am, 2).unwrap();
    let labels = Labels::new(vec![1, 7, 2], 10).unwrap();
    let g = Graph::new();
    let x = g.leaf(p.x.clone());
    let mut w = p.w.clone();
    let err = head
        .step(x, &mut w, &labels, None, |_, _, _| {})
        .unwrap_err();
    assert_eq!(
        err,
        Error::LabelOutOfRange {
            index: 1,
            label: 7,
            classes: 5
        }
    );
    assert!(head.loss(x, g.leaf(p.w.clone()), &labels).is_err());
    assert!(ClassSample::draw(&labels, 5, 0.5, &mut rng(0)).is_err());
    // a label outside the sample
    let sample = ClassSample::from_classes(vec![0, 2, 4]);
    let err = head
        .step(x, &mut w, &p.labels, Some(&sample), |_, _, _| {})
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidSetting { name: "label", .. }),
        "{err}"
    );
    // the wrong number of labels
    let two = Labels::new(vec![0, 1], 5).unwrap();
    assert!(matches!(
        head.step(x, &mut w, &two, None, |_, _, _| {}),
        Err(Error::DataLength { .. })
    ));
    assert_eq!(w.data(), p.w.data(), "nothing changed by a refused step");
}

#[test]
#[should_panic(
    expected = "shape mismatch in blocked head step: features [3, 4] (expected [B, D]), centres [5, 6]"
)]
fn features_and_centres_of_different_widths_panic_naming_both() {
    let p = problem::<f32>(3, 4, 5, 16);
    let head = BlockedHead::new(MarginLoss::am(64.0, 0.35).unwrap(), 2).unwrap();
    let g = Graph::new();
    let mut w = Tensor::<f32>::zeros(&[5, 6]);
    let _ = head.step(g.leaf(p.x.clone()), &mut w, &p.labels, None, |_, _, _| {});
}

#[test]
fn neither_the_step_nor_the_op_records_a_batch_by_classes_tensor() {
    let (b, d, c) = (4, 8, 50);
    let p = problem::<f32>(b, d, c, 17);
    let head = BlockedHead::new(MarginLoss::am(64.0, 0.35).unwrap(), 8).unwrap();
    let g = Graph::new();
    let x = g.leaf(p.x.clone());
    let mut w = p.w.clone();
    head.step(x, &mut w, &p.labels, None, |_, _, _| {}).unwrap();
    assert_eq!(g.node_sizes(), vec![b * d, 1], "the features and the loss");
    let g = Graph::new();
    let (x, w) = (g.leaf(p.x.clone()), g.leaf(p.w.clone()));
    head.loss(x, w, &p.labels).unwrap();
    assert_eq!(g.node_sizes(), vec![b * d, c * d, 1]);
}

#[test]
fn a_non_finite_feature_or_centre_is_refused_before_any_centre_is_updated() {
    let p = problem::<f32>(3, 4, 5, 18);
    let head = BlockedHead::new(MarginLoss::am(64.0, 0.35).unwrap(), 2).unwrap();
    for (row, in_centres) in [(1, false), (4, true), (0, true)] {
        let (mut x, mut w) = (p.x.clone(), p.w.clone());
        let poisoned = if in_centres { &mut w } else { &mut x };
        poisoned.data_mut()[row * 4 + 2] = f32::NAN;
        let before = w.clone();
        let g = Graph::new();
        let mut calls = 0;
        let err = head
            .step(g.leaf(x), &mut w, &p.labels, None, |_, _, _| calls += 1)
            .unwrap_err();
        assert!(matches!(err, Error::NonFinite { .. }), "{err}");
        assert_eq!(calls, 0, "no update");
        let bits = |t: &Tensor<f32>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&w), bits(&before), "centres untouched");
    }
}

#[test]
fn steps_after_others_give_the_same_bits_as_the_first_steps_of_a_thread() {
    // the passes' block buffers are lent from a per-thread pool and handed back unzeroed: the
    // steps of another problem, and one that stops on a NaN, leave their numbers in them, which
    // the next steps must overwrite before reading (B·block and block·D at least the pool's
    // smallest length, so that every buffer is pooled)
    let p = problem::<f32>(64, 64, 600, 8);
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 256).unwrap();
    let sample = ClassSample::draw(&p.labels, 600, 0.7, &mut rng(9)).unwrap();
    let steps = [None, Some(sample)];
    let on_new_thread = |before: &(dyn Fn() + Sync)| {
        std::thread::scope(|s| {
            s.spawn(|| {
                before();
                train(&p, &head, &steps, 0.0)
            })
            .join()
        })
        .expect("the steps")
    };
    let fresh = on_new_thread(&|| {});
    let after_others = on_new_thread(&|| {
        let other = problem::<f32>(64, 64, 600, 77);
        train(&other, &head, &steps, 0.0);
        let mut bad = problem::<f32>(64, 64, 600, 78);
        bad.x.data_mut().fill(f32::NAN);
        bad.w.data_mut().fill(f32::NAN);
        let g = Graph::new();
        let failed = head.step(g.leaf(bad.x), &mut bad.w, &p.labels, None, |_, _, _| {});
        assert!(matches!(failed, Err(Error::NonFinite { .. })));
    });
    assert_eq!(fresh.0, after_others.0);
    for (a, b) in fresh.1.iter().zip(&after_others.1) {
        assert_eq!(a.data(), b.data());
    }
    assert_eq!(fresh.2.data(), after_others.2.data());
    assert_eq!(fresh.3, after_others.3);
}
