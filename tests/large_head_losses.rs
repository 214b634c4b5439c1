//! The blocked head with the losses beyond the margin family (AdaFace, MagFace,
//! CurricularFace, ElasticFace, SphereFace2, and sub-centres in front of any of them): the
//! same loss and gradients (features, centres, SphereFace2's bias) as the dense path —
//! normalise, matmul, max over sub-centres, the dense fused op — for several block sizes, with
//! and without class sampling, the same bits on 1 and 2 threads, and clear errors.

mod common;
use common::rng;
use margrad::loss::{
    AdaFace, AdaFaceNorms, ArcFallback, BlockLoss, BlockedHead, ClassSample, CurricularFace,
    CurricularFaceState, ElasticFace, HEAD_NORM_EPS, MagFace, MarginLoss, Reduction, SphereFace2,
    adaface_loss, curricularface_loss, elasticface_loss, magface_loss, margin_cross_entropy,
    max_over_subcenters, sphereface2_loss,
};
use margrad::{Error, Graph, Labels, Tensor, Var};

/// The losses under test, each with its settings and state.
#[derive(Clone, Debug)]
enum Case {
    Margin(MarginLoss),
    AdaFace(AdaFace, AdaFaceNorms),
    MagFace(MagFace),
    CurricularFace(CurricularFace, CurricularFaceState),
    ElasticFace(ElasticFace, Vec<f64>),
    SphereFace2(SphereFace2, f64),
}

fn cases(batch: usize) -> Vec<Case> {
    let margins = ElasticFace::arc().draw_margins(batch, &mut rng(9)).unwrap();
    let cos_margins = ElasticFace::cos()
        .draw_margins(batch, &mut rng(10))
        .unwrap();
    // norms around the statistics' mean, so that ẑ spans its clamp
    let stats = AdaFaceNorms {
        mean: 1.5,
        std: 0.4,
    };
    vec![
        Case::Margin(MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).unwrap()),
        Case::AdaFace(AdaFace::default(), stats.clone()),
        Case::AdaFace(AdaFace::new(0.4, 1.0, 30.0, 0.01).unwrap(), stats),
        // norms of the features are 1–3: MagFace's range is moved there so that the margin
        // and the regulariser are on their slopes
        Case::MagFace(MagFace {
            lower_norm: 0.5,
            upper_norm: 4.0,
            ..MagFace::default()
        }),
        Case::MagFace(MagFace {
            lower_norm: 0.5,
            upper_norm: 4.0,
            fallback: ArcFallback::Threshold,
            ..MagFace::default()
        }),
        Case::CurricularFace(CurricularFace::default(), CurricularFaceState { t: 0.3 }),
        Case::CurricularFace(CurricularFace::default(), CurricularFaceState { t: -0.2 }),
        Case::ElasticFace(ElasticFace::arc(), margins),
        Case::ElasticFace(ElasticFace::cos(), cos_margins),
        Case::SphereFace2(SphereFace2::default(), -3.0),
        Case::SphereFace2(SphereFace2::new(0.6, 30.0, 0.3, 1.5).unwrap(), 0.7),
    ]
}

/// Features `[B, D]` (norms 1–3), centres `[C·K, D]`, labels.
struct Problem {
    x: Tensor<f64>,
    w: Tensor<f64>,
    labels: Labels,
    k: usize,
}

fn problem(b: usize, d: usize, c: usize, k: usize, seed: u64) -> Problem {
    let mut rng = rng(seed);
    let mut x = Tensor::<f64>::randn(&[b, d], 0.0, 1.0, &mut rng);
    let scales = Tensor::<f64>::rand_uniform(&[b], 1.0, 3.0, &mut rng);
    for (row, &s) in x.data_mut().chunks_mut(d).zip(scales.data()) {
        let norm = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        row.iter_mut().for_each(|v| *v *= s / norm);
    }
    let w = Tensor::<f64>::randn(&[c * k, d], 0.0, 0.3, &mut rng);
    let labels = Labels::new((0..b).map(|i| (i * 7 + 3) % c).collect(), c).unwrap();
    Problem { x, w, labels, k }
}

/// Loss, ∂x, ∂W and SphereFace2's ∂b.
type Outcome = (f64, Tensor<f64>, Tensor<f64>, Option<f64>);

fn norms_of(x: &Tensor<f64>) -> Tensor<f64> {
    let d = x.shape()[1];
    let norms = x
        .data()
        .chunks(d)
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    Tensor::from_vec(norms, &[x.shape()[0]]).unwrap()
}

/// The dense path: `x̂ · Ŵᵀ`, the maximum over each class's sub-centres, the dense fused op.
fn dense(p: &Problem, case: &Case) -> Outcome {
    let g = Graph::new();
    let (x, w) = (g.leaf(p.x.clone()), g.leaf(p.w.clone()));
    let bias = g.leaf(Tensor::scalar(match case {
        Case::SphereFace2(_, b) => *b,
        _ => 0.0,
    }));
    let eps = HEAD_NORM_EPS;
    let cos =
        max_over_subcenters(x.normalize_rows(eps).matmul_nt(w.normalize_rows(eps)), p.k).unwrap();
    let labels = &p.labels;
    let mean = Reduction::Mean;
    let l = match case {
        Case::Margin(loss) => margin_cross_entropy(cos, labels, loss),
        Case::AdaFace(loss, stats) => {
            let norms = g.constant(norms_of(&p.x));
            adaface_loss(cos, norms, labels, loss, stats, mean, None)
        }
        Case::MagFace(loss) => {
            let norms = x.powf(2.0).sum_dim(1).sqrt();
            magface_loss(cos, norms, labels, loss, mean, None)
        }
        Case::CurricularFace(loss, state) => {
            curricularface_loss(cos, labels, loss, state, mean, None)
        }
        Case::ElasticFace(loss, margins) => {
            elasticface_loss(cos, labels, loss, margins, mean, None)
        }
        Case::SphereFace2(loss, _) => sphereface2_loss(cos, bias, labels, loss, mean, None),
    }
    .unwrap();
    let value = l.item();
    let grads = l.backward();
    let dbias = matches!(case, Case::SphereFace2(..)).then(|| grads.wrt(bias).unwrap().item());
    (
        value,
        grads.wrt(x).unwrap().clone(),
        grads.wrt(w).unwrap().clone(),
        dbias,
    )
}

fn head_loss<'a, 'g>(case: &'a Case, bias: Var<'g, f64>) -> BlockLoss<'a, 'g, f64> {
    match case {
        Case::Margin(loss) => BlockLoss::Margin(loss),
        Case::AdaFace(loss, stats) => BlockLoss::AdaFace(loss, stats),
        Case::MagFace(loss) => BlockLoss::MagFace(loss),
        Case::CurricularFace(loss, state) => BlockLoss::CurricularFace(loss, state),
        Case::ElasticFace(loss, margins) => BlockLoss::ElasticFace(loss, margins),
        Case::SphereFace2(loss, _) => BlockLoss::SphereFace2(loss, bias),
    }
}

/// The blocked step with an update that records the centres' gradient (NaN where none came).
fn blocked(p: &Problem, case: &Case, head: &BlockedHead, sample: Option<&ClassSample>) -> Outcome {
    let d = p.x.shape()[1];
    let mut w = p.w.clone();
    let mut dw = Tensor::<f64>::full(p.w.shape(), f64::NAN);
    let g = Graph::new();
    let x = g.leaf(p.x.clone());
    let bias = g.leaf(Tensor::scalar(match case {
        Case::SphereFace2(_, b) => *b,
        _ => 0.0,
    }));
    let l = head
        .step_with(
            x,
            &mut w,
            &p.labels,
            sample,
            head_loss(case, bias),
            |first, _, grad| {
                dw.data_mut()[first * d..first * d + grad.len()].copy_from_slice(grad);
            },
        )
        .unwrap();
    assert_eq!(w.data(), p.w.data(), "an update that changes nothing");
    let value = l.item();
    let grads = l.backward();
    let dbias = matches!(case, Case::SphereFace2(..)).then(|| grads.wrt(bias).unwrap().item());
    (value, grads.wrt(x).unwrap().clone(), dw, dbias)
}

/// The largest absolute difference over the largest entry of `reference`.
fn relative(a: &Tensor<f64>, reference: &Tensor<f64>) -> f64 {
    let top = reference.data().iter().fold(0.0f64, |m, v| m.max(v.abs()));
    a.max_abs_diff(reference) / top
}

fn assert_close(what: &str, got: &Outcome, want: &Outcome, tolerance: f64) {
    let gap = ((got.0 - want.0) / want.0).abs();
    assert!(
        gap <= tolerance,
        "{what}: loss {} vs dense {}",
        got.0,
        want.0
    );
    let gap = relative(&got.1, &want.1);
    assert!(gap <= tolerance, "{what}: ∂x off by {gap:e}");
    let gap = relative(&got.2, &want.2);
    assert!(gap <= tolerance, "{what}: ∂W off by {gap:e}");
    match (got.3, want.3) {
        (None, None) => {}
        (Some(a), Some(b)) => {
            let gap = ((a - b) / b).abs();
            assert!(gap <= tolerance, "{what}: ∂b {a} vs dense {b}");
        }
        other => panic!("{what}: a bias gradient from one side only: {other:?}"),
    }
}

#[test]
fn every_new_loss_with_and_without_subcentres_agrees_with_its_dense_op_in_f64() {
    let (b, d, c) = (6, 8, 12);
    for k in [1, 3] {
        let p = problem(b, d, c, k, 1);
        for case in cases(b) {
            let want = dense(&p, &case);
            // a test that cannot fail is none: the dense side must see both sides of the ops
            assert!(want.0.is_finite() && want.1.data().iter().any(|&v| v != 0.0));
            for block in [1, 4, 5, 12, 100] {
                let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), block)
                    .unwrap()
                    .with_subcenters(k)
                    .unwrap();
                let got = blocked(&p, &case, &head, None);
                assert_close(
                    &format!("{case:?}, K = {k}, block {block}"),
                    &got,
                    &want,
                    1e-12,
                );
            }
        }
    }
}

#[test]
fn magface_gradient_reaches_the_features_through_their_norm() {
    // the norm's share of ∂x is along x̂: without it the blocked ∂x would be orthogonal to x
    // in every row (the normalisation's gradient is), and it is not
    let p = problem(6, 8, 12, 1, 2);
    let case = Case::MagFace(MagFace {
        lower_norm: 0.5,
        upper_norm: 4.0,
        ..MagFace::default()
    });
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 5).unwrap();
    let (_, dx, _, _) = blocked(&p, &case, &head, None);
    let radial: f64 = dx
        .data()
        .chunks(8)
        .zip(p.x.data().chunks(8))
        .map(|(g, x)| g.iter().zip(x).map(|(a, b)| a * b).sum::<f64>().abs())
        .sum();
    assert!(radial > 1e-3, "no gradient along the features: {radial:e}");
}

#[test]
fn a_sampled_step_is_the_dense_loss_over_the_sample_for_every_new_loss() {
    let (b, d, c, k) = (6, 8, 30, 2);
    let p = problem(b, d, c, k, 3);
    let sample = ClassSample::draw(&p.labels, c, 0.4, &mut rng(4)).unwrap();
    let classes = sample.classes();
    // the dense problem over the sampled classes only, labels renumbered
    let mut w = Vec::new();
    for &class in classes {
        w.extend_from_slice(&p.w.data()[class * k * d..(class + 1) * k * d]);
    }
    let renumbered = p
        .labels
        .values()
        .iter()
        .map(|l| classes.binary_search(l).unwrap())
        .collect();
    let sub = Problem {
        x: p.x.clone(),
        w: Tensor::from_vec(w, &[classes.len() * k, d]).unwrap(),
        labels: Labels::new(renumbered, classes.len()).unwrap(),
        k,
    };
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 4)
        .unwrap()
        .with_subcenters(k)
        .unwrap();
    for case in cases(b) {
        let want = dense(&sub, &case);
        let got = blocked(&p, &case, &head, Some(&sample));
        // ∂W of the sampled rows, in the sample's order; every other row got nothing
        let mut dw = Vec::new();
        for (class, rows) in got.2.data().chunks(k * d).enumerate() {
            if classes.binary_search(&class).is_ok() {
                dw.extend_from_slice(rows);
            } else {
                assert!(
                    rows.iter().all(|v| v.is_nan()),
                    "{case:?}: class {class} updated"
                );
            }
        }
        let got = (
            got.0,
            got.1,
            Tensor::from_vec(dw, want.2.shape()).unwrap(),
            got.3,
        );
        assert_close(&format!("{case:?}, sampled"), &got, &want, 1e-12);
    }
}

#[test]
fn one_and_two_threads_give_the_same_bits_for_every_new_loss() {
    // large enough for the parallel paths: B·block ≥ 2^15
    let (b, d, c) = (64, 32, 2000);
    let p = problem(b, d, c, 2, 5);
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 1024)
        .unwrap()
        .with_subcenters(2)
        .unwrap();
    for case in cases(b) {
        let run = |threads| {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            pool.install(|| blocked(&p, &case, &head, None))
        };
        let (one, two) = (run(1), run(2));
        assert_eq!(one.0.to_bits(), two.0.to_bits(), "{case:?}");
        assert_eq!(one.1.data(), two.1.data(), "{case:?}");
        assert_eq!(one.2.data(), two.2.data(), "{case:?}");
        assert_eq!(one.3, two.3, "{case:?}");
    }
}

#[test]
fn curricularface_state_updates_from_the_heads_target_cosines_as_from_the_dense_cosines() {
    let p = problem(6, 8, 12, 3, 6);
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 5)
        .unwrap()
        .with_subcenters(3)
        .unwrap();
    let g = Graph::new();
    let eps = HEAD_NORM_EPS;
    let cos = max_over_subcenters(
        g.constant(p.x.clone())
            .normalize_rows(eps)
            .matmul_nt(g.constant(p.w.clone()).normalize_rows(eps)),
        3,
    )
    .unwrap()
    .to_tensor();
    let (mut dense, mut blocked) = (
        CurricularFaceState::default(),
        CurricularFaceState::default(),
    );
    dense.update(&cos, &p.labels, 0.5).unwrap();
    let targets = head.target_cosines(&p.x, &p.w, &p.labels).unwrap();
    blocked.update_from_targets(&targets, 0.5).unwrap();
    assert!(
        (dense.t - blocked.t).abs() < 1e-15,
        "{} vs {}",
        dense.t,
        blocked.t
    );
    assert!(dense.t != 0.0);
    assert!(matches!(
        blocked.update_from_targets(&[f64::NAN], 0.5),
        Err(Error::NonFinite { .. })
    ));
}

#[test]
fn bad_settings_states_and_margins_are_errors_before_any_centre_moves() {
    let p = problem(6, 8, 12, 1, 7);
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 4).unwrap();
    assert!(matches!(
        head.clone().with_subcenters(0),
        Err(Error::InvalidSetting { .. })
    ));
    let bad = [
        Case::AdaFace(
            AdaFace::default(),
            AdaFaceNorms {
                mean: 1.0,
                std: -1.0,
            },
        ),
        Case::MagFace(MagFace {
            upper_norm: 0.1,
            ..MagFace::default()
        }),
        Case::CurricularFace(CurricularFace::default(), CurricularFaceState { t: 2.0 }),
        Case::ElasticFace(ElasticFace::arc(), vec![0.5; 5]),
        Case::ElasticFace(ElasticFace::arc(), vec![0.5, 0.5, f64::NAN, 0.5, 0.5, 0.5]),
        Case::SphereFace2(
            SphereFace2 {
                lambda: 1.5,
                ..SphereFace2::default()
            },
            0.0,
        ),
    ];
    for case in bad {
        let mut w = p.w.clone();
        let g = Graph::new();
        let x = g.leaf(p.x.clone());
        let bias = g.leaf(Tensor::scalar(0.0));
        let result = head.step_with(
            x,
            &mut w,
            &p.labels,
            None,
            head_loss(&case, bias),
            |_, _, _| panic!("no update on an error"),
        );
        assert!(
            matches!(
                result,
                Err(Error::InvalidSetting { .. }
                    | Error::DataLength { .. }
                    | Error::NonFinite { .. })
            ),
            "{case:?}"
        );
        assert_eq!(w.data(), p.w.data());
    }
}

#[test]
#[should_panic(expected = "SphereFace2's bias must have one element")]
fn a_sphereface2_bias_of_two_elements_is_a_programmer_error() {
    let p = problem(6, 8, 12, 1, 8);
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 4).unwrap();
    let g = Graph::new();
    let bias = g.leaf(Tensor::from_vec(vec![0.0, 0.0], &[2]).unwrap());
    let loss = SphereFace2::default();
    let mut w = p.w.clone();
    let _ = head.step_with(
        g.leaf(p.x.clone()),
        &mut w,
        &p.labels,
        None,
        BlockLoss::SphereFace2(&loss, bias),
        |_, _, _| {},
    );
}

#[test]
#[should_panic(expected = "expected [C·K, D] with K = 3")]
fn centres_that_are_not_whole_classes_of_subcentres_panic() {
    let p = problem(6, 8, 12, 1, 8);
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 4)
        .unwrap()
        .with_subcenters(3)
        .unwrap();
    let g = Graph::new();
    let mut w = Tensor::<f64>::zeros(&[13, 8]);
    let _ = head.step(g.leaf(p.x.clone()), &mut w, &p.labels, None, |_, _, _| {});
}

#[test]
fn every_loss_steps_the_same_bits_on_a_thread_whose_pool_holds_another_problems_numbers() {
    // a pass's block buffers are lent from a per-thread pool and handed back unzeroed: each
    // loss, with and without sub-centres and sampling, must write every buffer before reading
    // it (B·block·K, block·K·D and B at least the pool's smallest length, 4,096, so that every
    // buffer of the pass is pooled)
    let (b, d, c) = (4096, 8, 1200);
    for k in [1, 2] {
        let p = problem(b, d, c, k, 21);
        let other = problem(b, d, c, k, 22);
        let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 600)
            .unwrap()
            .with_subcenters(k)
            .unwrap();
        let sample = ClassSample::draw(&p.labels, c, 0.8, &mut rng(23)).unwrap();
        for case in cases(b) {
            let run = |poison: bool| {
                std::thread::scope(|s| {
                    s.spawn(|| {
                        if poison {
                            blocked(&other, &case, &head, None);
                            blocked(&other, &case, &head, Some(&sample));
                        }
                        (
                            blocked(&p, &case, &head, None),
                            blocked(&p, &case, &head, Some(&sample)),
                        )
                    })
                    .join()
                    .expect("the steps")
                })
            };
            let (fresh, poisoned) = (run(false), run(true));
            for (a, b) in [(&fresh.0, &poisoned.0), (&fresh.1, &poisoned.1)] {
                assert_eq!(a.0.to_bits(), b.0.to_bits(), "{case:?}, K = {k}: loss");
                assert_eq!(a.1.data(), b.1.data(), "{case:?}, K = {k}: ∂x");
                assert!(
                    a.2.data()
                        .iter()
                        .zip(b.2.data())
                        .all(|(u, v)| u.to_bits() == v.to_bits()),
                    "{case:?}, K = {k}: ∂W"
                );
                assert_eq!(a.3.map(f64::to_bits), b.3.map(f64::to_bits), "{case:?}: ∂b");
            }
        }
    }
}
