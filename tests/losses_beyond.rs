//! The losses beyond CosFace and ArcFace: sub-center ArcFace (the max over each class's
//! sub-centres, in front of any margin loss) and SphereFace2. Fused against composed (f64:
//! values to 1e-10, gradients to 1e-8), both against gradcheck, stability at the extremes,
//! clear errors.

mod common;
use common::rng;
use margrad::loss::composed::{
    margin_cross_entropy_composed, max_over_subcenters_composed, sphereface2_loss_composed,
};
use margrad::loss::{
    ArcFallback, MarginLoss, Reduction, SphereFace2, chosen_subcenters, dominant_subcenters,
    far_from_dominant, margin_cross_entropy_with, max_over_subcenters, sphereface2_loss,
};
use margrad::{Element, Error, GradcheckOptions, Graph, Labels, Tensor, Var, gradcheck_with};

fn labels(b: usize, c: usize) -> Labels {
    Labels::new((0..b).map(|i| (i * 7 + 1) % c).collect(), c).unwrap()
}

/// Uniform cosines in (−0.95, 0.95) whose values within each group of `k` columns are at least
/// 1e-3 apart, so that a finite-difference step never changes a group's winner.
fn cosines_away_from_ties(b: usize, cols: usize, k: usize, seed: u64) -> Tensor<f64> {
    let mut t = Tensor::<f64>::rand_uniform(&[b, cols], -0.95, 0.95, &mut rng(seed));
    for group in t.data_mut().chunks_mut(k) {
        for a in 1..group.len() {
            while group[..a].iter().any(|&v| (v - group[a]).abs() < 1e-3) {
                group[a] += 0.0137;
                if group[a] > 0.95 {
                    group[a] -= 1.9;
                }
            }
        }
    }
    t
}

// ---- the max over sub-centres ----

type MaxFn = for<'g> fn(Var<'g, f64>, usize) -> Result<Var<'g, f64>, Error>;
const MAX_FUSED: MaxFn = max_over_subcenters;
const MAX_COMPOSED: MaxFn = max_over_subcenters_composed;

type LossFn = for<'g> fn(
    Var<'g, f64>,
    &Labels,
    &MarginLoss,
    Reduction,
    Option<&[f64]>,
) -> Result<Var<'g, f64>, Error>;
const FUSED: LossFn = margin_cross_entropy_with;
const COMPOSED: LossFn = margin_cross_entropy_composed;

fn subcenter_losses() -> Vec<MarginLoss> {
    vec![
        MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::None).unwrap(),
        MarginLoss::am(30.0, 0.35).unwrap(),
        MarginLoss::enhanced(30.0, 0.35).unwrap(),
    ]
}

/// The margin loss of the sub-centre cosines: max over each class's `k`, then `loss`.
fn subcenter_loss<'g>(
    (max, which): (MaxFn, LossFn),
    cos: Var<'g, f64>,
    k: usize,
    labels: &Labels,
    loss: &MarginLoss,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> Var<'g, f64> {
    which(max(cos, k).unwrap(), labels, loss, reduction, weights).unwrap()
}

#[test]
fn max_over_subcenters_takes_each_class_best_and_routes_the_gradient_to_it() {
    let g = Graph::<f64>::new();
    // one row, two classes of K = 3: winners at column 1 and column 5
    let x = g.leaf(Tensor::from_vec(vec![0.1, 0.7, 0.2, -0.3, 0.0, 0.4], &[1, 6]).unwrap());
    let y = max_over_subcenters(x, 3).unwrap();
    assert_eq!(y.shape(), vec![1, 2]);
    assert_eq!(y.to_tensor().data(), &[0.7, 0.4]);
    let grads = y.backward_with(Tensor::from_vec(vec![2.0, -3.0], &[1, 2]).unwrap());
    assert_eq!(
        grads.wrt(x).unwrap().data(),
        &[0.0, 2.0, 0.0, 0.0, 0.0, -3.0]
    );
}

#[test]
fn ties_go_to_the_first_subcentre_in_order() {
    let g = Graph::<f64>::new();
    let x = g.leaf(Tensor::from_vec(vec![0.2, 0.5, 0.5, 1.0, 1.0, 1.0], &[1, 6]).unwrap());
    let grads = max_over_subcenters(x, 3).unwrap().sum().backward();
    assert_eq!(
        grads.wrt(x).unwrap().data(),
        &[0.0, 1.0, 0.0, 1.0, 0.0, 0.0]
    );
    let values = x.to_tensor();
    let labels = Labels::new(vec![1], 2).unwrap();
    assert_eq!(chosen_subcenters(&values, &labels, 3).unwrap(), vec![0]);
}

#[test]
fn one_subcentre_is_the_identity() {
    let cos = cosines_away_from_ties(4, 5, 1, 3);
    let g = Graph::<f64>::new();
    let x = g.leaf(cos.clone());
    let y = max_over_subcenters(x, 1).unwrap();
    assert_eq!(y.to_tensor(), cos);
    let seed = Tensor::randn(&[4, 5], 0.0, 1.0, &mut rng(1));
    let grads = y.backward_with(seed.clone());
    assert_eq!(grads.wrt(x).unwrap(), &seed);
}

#[test]
fn a_nan_subcentre_reaches_the_output() {
    let g = Graph::<f64>::new();
    let x = g.constant(
        Tensor::from_vec(vec![0.9, f64::NAN, 0.1, f64::NAN, 0.3, 0.99], &[1, 6]).unwrap(),
    );
    let y = max_over_subcenters(x, 3).unwrap().to_tensor();
    assert!(y.data().iter().all(|v| v.is_nan()), "{y:?}");
}

#[test]
fn subcenter_fused_matches_composed_for_every_margin_k_reduction_and_weighting() {
    // the largest shape runs the kernels on several threads (B·C·K ≥ 2^15)
    let weights: Vec<f64> = (0..40).map(|i| [0.5, 2.0, 0.0, 1.0, 1.5][i % 5]).collect();
    for loss in subcenter_losses() {
        for k in [1, 2, 3] {
            for (b, c) in [(1, 2), (5, 3), (5, 17), (40, 300)] {
                let cos = cosines_away_from_ties(b, c * k, k, (b * c * k) as u64);
                let labels = labels(b, c);
                for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                    for w in [None, Some(&weights[..b])] {
                        let run = |ops: (MaxFn, LossFn)| {
                            let g = Graph::new();
                            let x = g.leaf(cos.clone());
                            let out = subcenter_loss(ops, x, k, &labels, &loss, reduction, w);
                            let seed = Tensor::randn(&out.shape(), 0.0, 1.0, &mut rng(99));
                            let value = out.to_tensor();
                            (value, out.backward_with(seed).wrt(x).unwrap().clone())
                        };
                        let (fv, fg) = run((MAX_FUSED, FUSED));
                        let (cv, cg) = run((MAX_COMPOSED, COMPOSED));
                        let at = format!("{} K={k} [{b}, {c}] {reduction:?} {w:?}", loss.name());
                        assert!(fv.max_abs_diff(&cv) < 1e-10, "values differ for {at}");
                        assert!(fg.max_abs_diff(&cg) < 1e-8, "gradients differ for {at}");
                        // the K − 1 losing sub-centres of every class get nothing
                        let zeros = fg.data().iter().filter(|&&d| d == 0.0).count();
                        assert!(zeros >= b * c * (k - 1), "{at}");
                    }
                }
            }
        }
    }
}

#[test]
fn subcenter_fused_and_composed_pass_gradcheck() {
    for loss in subcenter_losses() {
        for (b, c, k) in [(1, 2, 3), (4, 6, 3), (3, 5, 2)] {
            let cos = cosines_away_from_ties(b, c * k, k, 11 + (c * k) as u64);
            let labels = labels(b, c);
            for (name, ops) in [
                ("fused", (MAX_FUSED, FUSED)),
                ("composed", (MAX_COMPOSED, COMPOSED)),
            ] {
                for reduction in [Reduction::Mean, Reduction::None] {
                    let result = gradcheck_with(
                        std::slice::from_ref(&cos),
                        &GradcheckOptions::default(),
                        |_, v| subcenter_loss(ops, v[0], k, &labels, &loss, reduction, None),
                    );
                    if let Err(e) = result {
                        panic!("{name} {} K={k} [{b}, {c}] {reduction:?}: {e}", loss.name());
                    }
                }
            }
        }
    }
}

#[test]
fn subcenter_arcface_end_to_end_through_normalised_features_and_centres() {
    // features → row L2 norm → cosines with the C·K column-normalised sub-centres → max → ArcFace
    let (b, d, c, k) = (6, 5, 4, 3);
    let mut r = rng(21);
    let x = Tensor::<f64>::randn(&[b, d], 0.0, 1.0, &mut r);
    let w = Tensor::<f64>::randn(&[d, c * k], 0.0, 1.0, &mut r);
    let labels = labels(b, c);
    let loss = MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).unwrap();
    fn head<'g>(
        ops: (MaxFn, LossFn),
        v: &[Var<'g, f64>],
        k: usize,
        labels: &Labels,
        loss: &MarginLoss,
    ) -> Var<'g, f64> {
        let cos = v[0]
            .normalize_rows(1e-12)
            .matmul(v[1].normalize_cols(1e-12));
        subcenter_loss(ops, cos, k, labels, loss, Reduction::Mean, None)
    }
    let run = |ops| {
        let g = Graph::new();
        let v = [g.leaf(x.clone()), g.leaf(w.clone())];
        let out = head(ops, &v, k, &labels, &loss);
        let value = out.item();
        let grads = out.backward();
        (
            value,
            grads.wrt(v[0]).unwrap().clone(),
            grads.wrt(v[1]).unwrap().clone(),
        )
    };
    let (fused, composed) = (run((MAX_FUSED, FUSED)), run((MAX_COMPOSED, COMPOSED)));
    assert!((fused.0 - composed.0).abs() < 1e-10);
    assert!(fused.1.max_abs_diff(&composed.1) < 1e-8);
    assert!(fused.2.max_abs_diff(&composed.2) < 1e-8);
    for ops in [(MAX_FUSED, FUSED), (MAX_COMPOSED, COMPOSED)] {
        let inputs = [x.clone(), w.clone()];
        gradcheck_with(&inputs, &GradcheckOptions::default(), |_, v| {
            head(ops, v, k, &labels, &loss)
        })
        .unwrap();
    }
}

fn finite_loss_and_grad<F: Element>(cos: Tensor<F>, k: usize, labels: &Labels, loss: &MarginLoss) {
    let g = Graph::new();
    let x = g.leaf(cos);
    let class_cos = max_over_subcenters(x, k).unwrap();
    let out = margin_cross_entropy_with(class_cos, labels, loss, Reduction::Mean, None).unwrap();
    assert!(
        out.item().is_finite(),
        "{}: loss {}",
        loss.name(),
        out.item()
    );
    out.backward()
        .ensure_finite()
        .unwrap_or_else(|e| panic!("{}: {e}", loss.name()));
}

#[test]
fn subcenter_arcface_is_finite_at_s64_with_cosines_at_plus_and_minus_one() {
    let labels = Labels::new(vec![0, 1, 1, 0], 2).unwrap();
    // K = 3: ties at ±1 inside groups, targets at +1 and at −1
    let extremes = [
        1.0, -1.0, 1.0, -1.0, -1.0, -1.0, //
        1.0, 1.0, 1.0, -1.0, 1.0, -1.0, //
        -1.0, -1.0, -1.0, -1.0, -1.0, -1.0, //
        -1.0, 1.0, -1.0, 1.0, 1.0, 1.0,
    ];
    for fallback in [
        ArcFallback::None,
        ArcFallback::Threshold,
        ArcFallback::EasyMargin,
    ] {
        let loss = MarginLoss::arcface(64.0, 0.5, fallback).unwrap();
        let f32s = extremes.iter().map(|&v| v as f32).collect();
        finite_loss_and_grad(
            Tensor::<f32>::from_vec(f32s, &[4, 6]).unwrap(),
            3,
            &labels,
            &loss,
        );
        finite_loss_and_grad(
            Tensor::<f64>::from_vec(extremes.to_vec(), &[4, 6]).unwrap(),
            3,
            &labels,
            &loss,
        );
    }
}

// ---- dominant sub-centres ----

#[test]
fn dominant_subcentre_is_the_one_most_samples_of_the_class_pick() {
    // two classes, K = 2; class 0: samples pick 1, 1, 0 → 1; class 1: one pick each of 0 and
    // 1 → the first, 0; class 2 has no sample
    let rows = [
        [0.1, 0.8, 0.0, 0.0, 0.0, 0.0], // label 0 → sub-centre 1
        [0.2, 0.3, 0.9, 0.9, 0.0, 0.0], // label 0 → 1
        [0.6, 0.1, 0.0, 0.0, 0.0, 0.0], // label 0 → 0
        [0.0, 0.0, 0.5, 0.4, 0.0, 0.0], // label 1 → 0
        [0.0, 0.0, 0.1, 0.2, 0.0, 0.0], // label 1 → 1
    ];
    let cos = Tensor::from_vec(rows.concat(), &[5, 6]).unwrap();
    let labels = Labels::new(vec![0, 0, 0, 1, 1], 3).unwrap();
    assert_eq!(
        chosen_subcenters(&cos, &labels, 2).unwrap(),
        vec![1, 1, 0, 0, 1]
    );
    assert_eq!(
        dominant_subcenters(&cos, &labels, 2).unwrap(),
        vec![Some(1), Some(0), None]
    );
    // angle to the dominant sub-centre: sample 2 (cos 0.1 → 84°) and sample 4 (cos 0.1 → 84°)
    // are beyond 75°; the others are within (cos 0.8, 0.3 → 72.5°, 0.5)
    let far = far_from_dominant(&cos, &labels, 2, 75f64.to_radians()).unwrap();
    assert_eq!(far, vec![2, 4]);
    assert_eq!(
        far_from_dominant(&cos, &labels, 2, std::f64::consts::PI).unwrap(),
        Vec::<usize>::new()
    );
}

#[test]
fn subcentre_bad_input_is_a_clear_error() {
    let g = Graph::<f64>::new();
    let x = g.constant(Tensor::zeros(&[2, 6]));
    let err = max_over_subcenters(x, 0).unwrap_err();
    assert_eq!(
        err.to_string(),
        "invalid sub-centres per class K = 0: must be at least 1"
    );
    assert!(matches!(
        max_over_subcenters_composed(x, 0),
        Err(Error::InvalidSetting { .. })
    ));
    let cos = Tensor::<f64>::zeros(&[2, 6]);
    let wide = Labels::new(vec![0, 3], 4).unwrap();
    assert_eq!(
        dominant_subcenters(&cos, &wide, 3).unwrap_err(),
        Error::LabelOutOfRange {
            index: 1,
            label: 3,
            classes: 2
        }
    );
    let short = Labels::new(vec![0], 2).unwrap();
    assert!(matches!(
        chosen_subcenters(&cos, &short, 3),
        Err(Error::DataLength {
            expected: 2,
            found: 1,
            ..
        })
    ));
    let ok = Labels::new(vec![0, 1], 2).unwrap();
    assert!(matches!(
        far_from_dominant(&cos, &ok, 3, -0.1),
        Err(Error::InvalidSetting { .. })
    ));
}

#[test]
#[should_panic(
    expected = "max_over_subcenters: 7 columns are not a whole number of classes of K = 3"
)]
fn a_width_not_a_multiple_of_k_is_a_programmer_error() {
    let g = Graph::<f32>::new();
    let _ = max_over_subcenters(g.constant(Tensor::zeros(&[2, 7])), 3);
}

// ---- SphereFace2 ----

type BinaryFn = for<'g> fn(
    Var<'g, f64>,
    Var<'g, f64>,
    &Labels,
    &SphereFace2,
    Reduction,
    Option<&[f64]>,
) -> Result<Var<'g, f64>, Error>;
const SF2_FUSED: BinaryFn = sphereface2_loss;
const SF2_COMPOSED: BinaryFn = sphereface2_loss_composed;

fn sphereface2_settings() -> Vec<SphereFace2> {
    vec![
        SphereFace2::default(),
        SphereFace2::new(0.8, 64.0, 0.5, 3.0).unwrap(), // the official MS1M configuration
        SphereFace2::new(0.5, 10.0, 0.2, 1.0).unwrap(), // t = 1: g(c) = c
        SphereFace2::new(0.7, 30.0, 0.0, 2.5).unwrap(), // a fractional exponent, no margin
    ]
}

/// Value, ∂cos and ∂b of SphereFace2 (for a seeded cotangent).
fn sf2_value_and_grads(
    which: BinaryFn,
    cos: &Tensor<f64>,
    bias: f64,
    labels: &Labels,
    loss: &SphereFace2,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> (Tensor<f64>, Tensor<f64>, f64) {
    let g = Graph::new();
    let x = g.leaf(cos.clone());
    let b = g.leaf(Tensor::from_vec(vec![bias], &[1]).unwrap());
    let out = which(x, b, labels, loss, reduction, weights).unwrap();
    let seed = Tensor::randn(&out.shape(), 0.0, 1.0, &mut rng(98));
    let value = out.to_tensor();
    let grads = out.backward_with(seed);
    (
        value,
        grads.wrt(x).unwrap().clone(),
        grads.wrt(b).unwrap().data()[0],
    )
}

#[test]
fn sphereface2_fused_matches_composed_for_settings_reductions_and_weights() {
    // C = 1100 runs whole lanes, several products of 32 factors and a tail, on several threads
    let weights: Vec<f64> = (0..40).map(|i| [0.5, 2.0, 0.0, 1.0, 1.5][i % 5]).collect();
    for loss in sphereface2_settings() {
        for (b, c) in [(1, 2), (5, 3), (5, 17), (40, 1100)] {
            let cos = Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng((b * c) as u64));
            let labels = labels(b, c);
            let bias = loss.initial_bias(c).unwrap() + 0.3;
            for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                for w in [None, Some(&weights[..b])] {
                    let f =
                        sf2_value_and_grads(SF2_FUSED, &cos, bias, &labels, &loss, reduction, w);
                    let c =
                        sf2_value_and_grads(SF2_COMPOSED, &cos, bias, &labels, &loss, reduction, w);
                    let at = format!("{loss:?} [{b}, {}] {reduction:?} {w:?}", cos.shape()[1]);
                    assert!(f.0.max_abs_diff(&c.0) < 1e-10, "values differ for {at}");
                    assert!(f.1.max_abs_diff(&c.1) < 1e-8, "∂cos differs for {at}");
                    assert!((f.2 - c.2).abs() < 1e-8, "∂b differs for {at}");
                }
            }
        }
    }
}

#[test]
fn sphereface2_fused_and_composed_pass_gradcheck_in_cosines_and_bias() {
    for loss in sphereface2_settings() {
        for (b, c) in [(1, 2), (4, 6)] {
            let cos = Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng(17 + c as u64));
            let bias = Tensor::from_vec(vec![loss.initial_bias(c).unwrap() - 0.2], &[1]).unwrap();
            let labels = labels(b, c);
            for (name, which) in [("fused", SF2_FUSED), ("composed", SF2_COMPOSED)] {
                for reduction in [Reduction::Mean, Reduction::None] {
                    let result = gradcheck_with(
                        &[cos.clone(), bias.clone()],
                        &GradcheckOptions::default(),
                        |_, v| which(v[0], v[1], &labels, &loss, reduction, None).unwrap(),
                    );
                    if let Err(e) = result {
                        panic!("{name} {loss:?} [{b}, {c}] {reduction:?}: {e}");
                    }
                }
            }
        }
    }
}

#[test]
fn sphereface2_two_class_value_and_gradient_by_hand() {
    let (lambda, r, m, t) = (0.7f64, 40.0f64, 0.4f64, 3.0f64);
    let loss = SphereFace2::new(lambda, r, m, t).unwrap();
    let (c_y, c_j, b) = (0.6f64, 0.2f64, -5.0f64);
    let gmap = |c: f64| 2.0 * ((c + 1.0) / 2.0).powf(t) - 1.0;
    let slope = |c: f64| t * ((c + 1.0) / 2.0).powf(t - 1.0);
    let softplus = |x: f64| x.exp().ln_1p();
    let sigmoid = |x: f64| 1.0 / (1.0 + (-x).exp());
    let u_y = r * (gmap(c_y) - m) + b;
    let u_j = r * (gmap(c_j) + m) + b;
    let expected = lambda / r * softplus(-u_y) + (1.0 - lambda) / r * softplus(u_j);
    let g = Graph::<f64>::new();
    let x = g.leaf(Tensor::from_vec(vec![c_y, c_j], &[1, 2]).unwrap());
    let bias = g.leaf(Tensor::from_vec(vec![b], &[1]).unwrap());
    let labels = Labels::new(vec![0], 2).unwrap();
    let out = sphereface2_loss(x, bias, &labels, &loss, Reduction::Mean, None).unwrap();
    assert!(
        (out.item() - expected).abs() < 1e-12,
        "{} vs {expected}",
        out.item()
    );
    let grads = out.backward();
    let d = grads.wrt(x).unwrap().data().to_vec();
    assert!((d[0] + lambda * sigmoid(-u_y) * slope(c_y)).abs() < 1e-12);
    assert!((d[1] - (1.0 - lambda) * sigmoid(u_j) * slope(c_j)).abs() < 1e-12);
    let db = grads.wrt(bias).unwrap().data()[0];
    let expected_db = -lambda / r * sigmoid(-u_y) + (1.0 - lambda) / r * sigmoid(u_j);
    assert!((db - expected_db).abs() < 1e-12);
}

#[test]
fn sphereface2_initial_bias_balances_positives_and_negatives_at_zero_cosines() {
    for loss in sphereface2_settings() {
        for classes in [2, 10, 1000] {
            let b = loss.initial_bias(classes).unwrap();
            let cos = Tensor::zeros(&[3, classes]);
            let labels = labels(3, classes);
            let (_, _, db) =
                sf2_value_and_grads(SF2_FUSED, &cos, b, &labels, &loss, Reduction::Sum, None);
            // the seeded cotangent only scales ∂b; zero stays zero
            assert!(
                db.abs() < 1e-12,
                "{loss:?} C={classes}: ∂b = {db} at b = {b}"
            );
            let (_, _, off) = sf2_value_and_grads(
                SF2_FUSED,
                &cos,
                b + 1.0,
                &labels,
                &loss,
                Reduction::Sum,
                None,
            );
            assert!(off.abs() > 1e-6, "the balance is not trivial");
        }
    }
}

fn sf2_finite<F: Element>(
    cos: Tensor<F>,
    bias: f64,
    labels: &Labels,
    loss: &SphereFace2,
) -> (F, Tensor<F>, F) {
    let g = Graph::new();
    let x = g.leaf(cos);
    let b = g.leaf(Tensor::from_vec(vec![F::from_f64(bias)], &[1]).unwrap());
    let out = sphereface2_loss(x, b, labels, loss, Reduction::Mean, None).unwrap();
    let value = out.item();
    assert!(value.is_finite(), "{loss:?} b={bias}: loss {value:?}");
    let grads = out.backward();
    grads.ensure_finite().unwrap();
    (
        value,
        grads.wrt(x).unwrap().clone(),
        grads.wrt(b).unwrap().data()[0],
    )
}

#[test]
fn sphereface2_is_finite_at_large_scale_with_cosines_at_and_past_plus_and_minus_one() {
    let labels = Labels::new(vec![0, 1, 2, 0], 3).unwrap();
    let extremes = [
        1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0,
    ];
    for loss in [
        SphereFace2::new(0.7, 64.0, 0.5, 3.0).unwrap(),
        SphereFace2::new(0.7, 1000.0, 0.4, 3.0).unwrap(),
        SphereFace2::new(0.7, 64.0, 0.4, 2.5).unwrap(),
    ] {
        for bias in [-1000.0, -30.0, 0.0, 1000.0] {
            let f32s = extremes.iter().map(|&v| v as f32).collect();
            sf2_finite(
                Tensor::<f32>::from_vec(f32s, &[4, 3]).unwrap(),
                bias,
                &labels,
                &loss,
            );
            sf2_finite(
                Tensor::<f64>::from_vec(extremes.to_vec(), &[4, 3]).unwrap(),
                bias,
                &labels,
                &loss,
            );
        }
    }
    // past ±1 (rounding in f32): clamped, and the clamped element gets no gradient
    let loss = SphereFace2::default();
    let cos = Tensor::<f32>::from_vec(vec![1.000_001, -1.000_001, 0.5], &[1, 3]).unwrap();
    let one = Labels::new(vec![0], 3).unwrap();
    let (_, d, _) = sf2_finite(cos, 0.0, &one, &loss);
    assert_eq!(&d.data()[..2], &[0.0, 0.0]);
}

#[test]
fn sphereface2_large_logits_give_exact_linear_losses() {
    // softplus(u) = u + log(1 + e^{−u}): at u = 1000 the loss is exactly linear, not infinite
    let loss = SphereFace2::new(0.5, 1000.0, 0.0, 1.0).unwrap();
    let cos = Tensor::from_vec(vec![-1.0, 1.0], &[1, 2]).unwrap();
    let labels = Labels::new(vec![0], 2).unwrap();
    // u_y = −1000, u_j = +1000 (b = 0): L = (0.5/1000)(1000) + (0.5/1000)(1000) = 1
    let (value, d, db) = sf2_finite(cos, 0.0, &labels, &loss);
    assert_eq!(value, 1.0);
    // ∂L/∂b = −(λ/r)σ(1000) + ((1 − λ)/r)σ(1000) = 0
    assert_eq!(db, 0.0);
    // ∂L/∂c_y = −λ σ(1000) g′ = −0.5, ∂L/∂c_j = 0.5 (t = 1: g′ = 1)
    assert_eq!(d.data(), &[-0.5, 0.5]);
}

#[test]
fn sphereface2_bad_settings_are_clear_errors() {
    let setting = |r: Result<SphereFace2, Error>| match r {
        Err(Error::InvalidSetting { name, .. }) => name,
        other => panic!("expected an invalid setting, got {other:?}"),
    };
    assert_eq!(
        setting(SphereFace2::new(0.0, 40.0, 0.4, 3.0)),
        "SphereFace2 λ"
    );
    assert_eq!(
        setting(SphereFace2::new(1.0, 40.0, 0.4, 3.0)),
        "SphereFace2 λ"
    );
    assert_eq!(
        setting(SphereFace2::new(0.7, 0.0, 0.4, 3.0)),
        "SphereFace2 scale r"
    );
    assert_eq!(
        setting(SphereFace2::new(0.7, f64::INFINITY, 0.4, 3.0)),
        "SphereFace2 scale r"
    );
    assert_eq!(
        setting(SphereFace2::new(0.7, 40.0, -0.1, 3.0)),
        "SphereFace2 margin m"
    );
    assert_eq!(
        setting(SphereFace2::new(0.7, 40.0, 0.4, 0.5)),
        "SphereFace2 exponent t"
    );
    assert_eq!(
        setting(SphereFace2::new(0.7, 40.0, f64::NAN, 3.0)),
        "SphereFace2 margin m"
    );
    assert_eq!(
        SphereFace2::new(0.7, 40.0, 0.4, 0.5)
            .unwrap_err()
            .to_string(),
        "invalid SphereFace2 exponent t = 0.5: must be at least 1"
    );
    assert!(matches!(
        SphereFace2::default().initial_bias(1),
        Err(Error::InvalidSetting {
            name: "classes",
            ..
        })
    ));
    // a tampered setting is caught by the loss itself, as are bad batches
    let tampered = SphereFace2 {
        lambda: 1.5,
        ..SphereFace2::default()
    };
    let g = Graph::<f32>::new();
    let cos = g.constant(Tensor::zeros(&[2, 3]));
    let b = g.constant(Tensor::zeros(&[1]));
    let ok = Labels::new(vec![0, 2], 3).unwrap();
    assert!(matches!(
        sphereface2_loss(cos, b, &ok, &tampered, Reduction::Mean, None),
        Err(Error::InvalidSetting {
            name: "SphereFace2 λ",
            ..
        })
    ));
    let wide = Labels::new(vec![0, 4], 5).unwrap();
    assert_eq!(
        sphereface2_loss(
            cos,
            b,
            &wide,
            &SphereFace2::default(),
            Reduction::Mean,
            None
        )
        .unwrap_err(),
        Error::LabelOutOfRange {
            index: 1,
            label: 4,
            classes: 3
        }
    );
    let weights = [1.0, f64::NAN];
    assert!(matches!(
        sphereface2_loss(
            cos,
            b,
            &ok,
            &SphereFace2::default(),
            Reduction::Mean,
            Some(&weights)
        ),
        Err(Error::InvalidSetting {
            name: "sample weight",
            ..
        })
    ));
}

#[test]
#[should_panic(expected = "sphereface2: the bias must have one element, found shape [2]")]
fn a_bias_of_two_elements_is_a_programmer_error() {
    let g = Graph::<f32>::new();
    let labels = Labels::new(vec![0], 3).unwrap();
    let _ = sphereface2_loss(
        g.constant(Tensor::zeros(&[1, 3])),
        g.constant(Tensor::zeros(&[2])),
        &labels,
        &SphereFace2::default(),
        Reduction::Mean,
        None,
    );
}
