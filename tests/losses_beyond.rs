//! The losses beyond CosFace and ArcFace: sub-center ArcFace (the max over each class's
//! sub-centres, in front of any margin loss) and SphereFace2. Fused against composed (f64:
//! values to 1e-10, gradients to 1e-8), both against gradcheck, stability at the extremes,
//! clear errors.

mod common;
use common::rng;
use margrad::loss::composed::{
    adaface_loss_composed, curricularface_loss_composed, elasticface_loss_composed,
    magface_loss_composed, margin_cross_entropy_composed, max_over_subcenters_composed,
    sphereface2_loss_composed,
};
use margrad::loss::{
    AdaFace, AdaFaceNorms, ArcFallback, CurricularFace, CurricularFaceState, ElasticFace,
    ElasticKind, MagFace, MarginLoss, Reduction, SphereFace2, adaface_loss, chosen_subcenters,
    curricularface_loss, dominant_subcenters, elasticface_loss, far_from_dominant, magface_loss,
    margin_cross_entropy_with, max_over_subcenters, sphereface2_loss,
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

// ---- shared by the losses of cosines and feature norms ----

/// A loss under test, of the cosines and the features' norms, with its settings (and state)
/// captured.
type Head =
    dyn for<'g> Fn(Var<'g, f64>, Var<'g, f64>, &Labels, Reduction, Option<&[f64]>) -> Var<'g, f64>;

/// Value, ∂cos and ∂norms (`None` when the loss records no gradient to the norms) for a seeded
/// cotangent.
fn head_value_and_grads(
    head: &Head,
    cos: &Tensor<f64>,
    norms: &Tensor<f64>,
    labels: &Labels,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> (Tensor<f64>, Tensor<f64>, Option<Tensor<f64>>) {
    let g = Graph::new();
    let (x, a) = (g.leaf(cos.clone()), g.leaf(norms.clone()));
    let out = head(x, a, labels, reduction, weights);
    let seed = Tensor::randn(&out.shape(), 0.0, 1.0, &mut rng(97));
    let value = out.to_tensor();
    let grads = out.backward_with(seed);
    (value, grads.wrt(x).unwrap().clone(), grads.wrt(a).cloned())
}

/// The fused and composed heads agree (values to 1e-10, gradients to 1e-8) for every
/// reduction, with and without weights.
fn assert_fused_matches_composed(
    fused: &Head,
    composed: &Head,
    cos: &Tensor<f64>,
    norms: &Tensor<f64>,
    labels: &Labels,
    what: &str,
) {
    let b = cos.shape()[0];
    let weights: Vec<f64> = (0..b).map(|i| [0.5, 2.0, 0.0, 1.0, 1.5][i % 5]).collect();
    for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
        for w in [None, Some(&weights[..])] {
            let f = head_value_and_grads(fused, cos, norms, labels, reduction, w);
            let c = head_value_and_grads(composed, cos, norms, labels, reduction, w);
            let at = format!("{what} {:?} {reduction:?} {w:?}", cos.shape());
            assert!(f.0.max_abs_diff(&c.0) < 1e-10, "values differ for {at}");
            assert!(f.1.max_abs_diff(&c.1) < 1e-8, "∂cos differs for {at}");
            match (f.2, c.2) {
                (None, None) => {}
                (Some(fa), Some(ca)) => {
                    assert!(fa.max_abs_diff(&ca) < 1e-8, "∂norms differs for {at}")
                }
                (fa, ca) => panic!("∂norms recorded by one only for {at}: {fa:?} {ca:?}"),
            }
        }
    }
}

/// Gradcheck of `head` in the cosines, and in the norms too when `through_norms`.
fn assert_gradcheck(
    head: &Head,
    cos: &Tensor<f64>,
    norms: &Tensor<f64>,
    labels: &Labels,
    through_norms: bool,
    what: &str,
) {
    for reduction in [Reduction::Mean, Reduction::None] {
        let result = if through_norms {
            gradcheck_with(
                &[cos.clone(), norms.clone()],
                &GradcheckOptions::default(),
                |_, v| head(v[0], v[1], labels, reduction, None),
            )
        } else {
            gradcheck_with(
                std::slice::from_ref(cos),
                &GradcheckOptions::default(),
                |g, v| head(v[0], g.constant(norms.clone()), labels, reduction, None),
            )
        };
        if let Err(e) = result {
            panic!("{what} {:?} {reduction:?}: {e}", cos.shape());
        }
    }
}

/// Runs `head` in f32 and f64 on the given cosines and norms: the loss and every gradient are
/// finite. Returns the f64 gradient of the cosines.
fn assert_finite_in_f32_and_f64<H32, H64>(
    head32: H32,
    head64: H64,
    cos: &[f64],
    norms: &[f64],
    labels: &Labels,
    what: &str,
) -> Tensor<f64>
where
    H32: for<'g> Fn(Var<'g, f32>, Var<'g, f32>) -> Var<'g, f32>,
    H64: for<'g> Fn(Var<'g, f64>, Var<'g, f64>) -> Var<'g, f64>,
{
    let (b, c) = (labels.len(), cos.len() / labels.len());
    {
        let g = Graph::<f32>::new();
        let x = g.leaf(Tensor::from_vec(cos.iter().map(|&v| v as f32).collect(), &[b, c]).unwrap());
        let a = g.leaf(Tensor::from_vec(norms.iter().map(|&v| v as f32).collect(), &[b]).unwrap());
        let out = head32(x, a);
        assert!(out.item().is_finite(), "{what} f32: loss {}", out.item());
        out.backward()
            .ensure_finite()
            .unwrap_or_else(|e| panic!("{what} f32: {e}"));
    }
    let g = Graph::<f64>::new();
    let x = g.leaf(Tensor::from_vec(cos.to_vec(), &[b, c]).unwrap());
    let a = g.leaf(Tensor::from_vec(norms.to_vec(), &[b]).unwrap());
    let out = head64(x, a);
    assert!(out.item().is_finite(), "{what} f64: loss {}", out.item());
    let grads = out.backward();
    grads
        .ensure_finite()
        .unwrap_or_else(|e| panic!("{what} f64: {e}"));
    grads.wrt(x).unwrap().clone()
}

/// The name of the setting an invalid-setting error names.
fn invalid_setting<T: std::fmt::Debug>(r: Result<T, Error>) -> &'static str {
    match r {
        Err(Error::InvalidSetting { name, .. }) => name,
        other => panic!("expected an invalid setting, got {other:?}"),
    }
}

// ---- AdaFace ----

fn adaface_settings() -> Vec<AdaFace> {
    vec![
        AdaFace::default(),
        AdaFace::new(0.5, 0.333, 30.0, 0.01).unwrap(),
        AdaFace::new(0.4, 0.0, 64.0, 1.0).unwrap(), // h = 0: ẑ = 0, CosFace
        AdaFace::new(0.4, 1.0, 10.0, 0.5).unwrap(),
    ]
}

/// Norms spread from well below to well above the running mean, so that `ẑ` is clipped at
/// both ends and inside.
fn spread_norms(b: usize, seed: u64) -> Tensor<f64> {
    Tensor::rand_uniform(&[b], 0.5, 60.0, &mut rng(seed))
}

fn adaface_stats() -> AdaFaceNorms {
    AdaFaceNorms {
        mean: 25.0,
        std: 12.0,
    }
}

fn adaface_heads(loss: AdaFace, stats: AdaFaceNorms) -> (Box<Head>, Box<Head>) {
    let (l2, s2) = (loss.clone(), stats.clone());
    (
        Box::new(move |x, a, labels, r, w| {
            adaface_loss(x, a, labels, &loss, &stats, r, w).unwrap()
        }),
        Box::new(move |x, a, labels, r, w| {
            adaface_loss_composed(x, a, labels, &l2, &s2, r, w).unwrap()
        }),
    )
}

#[test]
fn adaface_fused_matches_composed_for_settings_reductions_and_weights() {
    for loss in adaface_settings() {
        let (fused, composed) = adaface_heads(loss.clone(), adaface_stats());
        for (b, c) in [(1, 2), (5, 3), (5, 17), (40, 1100)] {
            let cos = Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng((b * c) as u64));
            let norms = spread_norms(b, c as u64);
            let what = format!("{loss:?}");
            assert_fused_matches_composed(&*fused, &*composed, &cos, &norms, &labels(b, c), &what);
        }
    }
}

#[test]
fn adaface_fused_and_composed_pass_gradcheck_and_record_no_gradient_to_the_norms() {
    for loss in adaface_settings() {
        let (fused, composed) = adaface_heads(loss.clone(), adaface_stats());
        for (b, c) in [(1, 2), (4, 6)] {
            let cos = Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng(17 + c as u64));
            let norms = spread_norms(b, 3 + c as u64);
            let labels = labels(b, c);
            for (name, head) in [("fused", &fused), ("composed", &composed)] {
                assert_gradcheck(
                    &**head,
                    &cos,
                    &norms,
                    &labels,
                    false,
                    &format!("{name} {loss:?}"),
                );
                let (_, _, dnorms) =
                    head_value_and_grads(&**head, &cos, &norms, &labels, Reduction::Mean, None);
                assert!(dnorms.is_none(), "{name}: the norms are detached");
            }
        }
    }
}

#[test]
fn adaface_two_class_value_and_gradient_by_hand() {
    let loss = AdaFace::default();
    let (m, h, s) = (0.4f64, 0.333f64, 64.0f64);
    let stats = AdaFaceNorms {
        mean: 20.0,
        std: 15.0,
    };
    let (c_y, c_j, a) = (0.6f64, 0.2f64, 30.0f64);
    let z_hat = h * (a - 20.0) / (15.0 + 1e-3); // 0.222, inside (−1, 1)
    assert!((loss.margin_scaler(a, &stats) - z_hat).abs() < 1e-15);
    let theta = c_y.acos();
    let z_y = s * ((theta - m * z_hat).cos() - m * (1.0 + z_hat));
    let z_j = s * c_j;
    let p_y = 1.0 / (1.0 + (z_j - z_y).exp());
    let expected = -(p_y.ln());
    let g = Graph::<f64>::new();
    let x = g.leaf(Tensor::from_vec(vec![c_y, c_j], &[1, 2]).unwrap());
    let norms = g.leaf(Tensor::from_vec(vec![a], &[1]).unwrap());
    let one = Labels::new(vec![0], 2).unwrap();
    let out = adaface_loss(x, norms, &one, &loss, &stats, Reduction::Mean, None).unwrap();
    assert!(
        (out.item() - expected).abs() < 1e-12,
        "{} vs {expected}",
        out.item()
    );
    let d = out.backward().wrt(x).unwrap().data().to_vec();
    let slope_y = s * (theta - m * z_hat).sin() / theta.sin();
    assert!((d[0] - (p_y - 1.0) * slope_y).abs() < 1e-12);
    assert!((d[1] - s * (1.0 - p_y)).abs() < 1e-12);
}

#[test]
fn adaface_margin_goes_from_arcface_at_small_norms_to_an_additive_one_at_large_norms() {
    // ẑ = 1 (a large norm): s(cos(θ − m) − 2m); ẑ = −1: ArcFace, s·cos(θ + m); ẑ = 0: CosFace
    let loss = AdaFace::default();
    let stats = AdaFaceNorms {
        mean: 20.0,
        std: 1.0,
    };
    let (m, s, c) = (0.4f64, 64.0f64, 0.5f64);
    let theta = c.acos();
    assert_eq!(loss.margin_scaler(100.0, &stats), 1.0);
    assert_eq!(loss.margin_scaler(0.0, &stats), -1.0);
    let target = |a: f64| {
        let g = Graph::<f64>::new();
        let x = g.constant(Tensor::from_vec(vec![c, 0.0], &[1, 2]).unwrap());
        let n = g.constant(Tensor::from_vec(vec![a], &[1]).unwrap());
        let one = Labels::new(vec![0], 2).unwrap();
        let l = adaface_loss(x, n, &one, &loss, &stats, Reduction::Mean, None).unwrap();
        // L = log(1 + e^{z_j − z_y}) with z_j = 0: z_y = −log(e^L − 1)
        -(l.item().exp() - 1.0).ln()
    };
    assert!((target(100.0) - s * ((theta - m).cos() - 2.0 * m)).abs() < 1e-9);
    assert!((target(0.0) - s * (theta + m).cos()).abs() < 1e-9);
    assert!((target(20.0) - s * (c - m)).abs() < 1e-9); // ẑ = 0: CosFace
}

#[test]
fn adaface_is_finite_at_s64_with_cosines_at_one_and_norms_and_angles_at_their_clips() {
    let loss = AdaFace::default();
    let stats = AdaFaceNorms {
        mean: 20.0,
        std: 1.0,
    };
    let labels = Labels::new(vec![0, 1, 2, 0, 1], 3).unwrap();
    // targets at +1 with ẑ = 1 (θ − m below ε: clipped), at −1 with ẑ = −1 (θ + m above π − ε:
    // clipped), past ±1 (f32 rounding), and at the cosine clamp's ends 1 − ε, −1 + ε
    let cos = [
        1.0, -1.0, 1.0, //
        -1.0, -1.0, 1.0, //
        0.3, -0.2, 1.000_001, //
        0.999, 0.5, -0.5, //
        0.0, -0.999, 0.5,
    ];
    let norms = [1e6, 0.0, 20.0, 100.0, 1e-9];
    let d = assert_finite_in_f32_and_f64(
        |x, a| adaface_loss(x, a, &labels, &loss, &stats, Reduction::Mean, None).unwrap(),
        |x, a| adaface_loss(x, a, &labels, &loss, &stats, Reduction::Mean, None).unwrap(),
        &cos,
        &norms,
        &labels,
        "adaface",
    );
    // where a clamp or clip is active the target's slope is 0
    assert_eq!(d.data()[0], 0.0, "θ − m clipped at ε");
    assert_eq!(d.data()[4], 0.0, "θ + m clipped at π − ε");
    assert_eq!(d.data()[8], 0.0, "cosine clamped");
    for (name, composed) in [("composed", true), ("fused", false)] {
        let g = Graph::<f64>::new();
        let x = g.leaf(Tensor::from_vec(cos.to_vec(), &[5, 3]).unwrap());
        let a = g.constant(Tensor::from_vec(norms.to_vec(), &[5]).unwrap());
        let out = if composed {
            adaface_loss_composed(x, a, &labels, &loss, &stats, Reduction::Mean, None)
        } else {
            adaface_loss(x, a, &labels, &loss, &stats, Reduction::Mean, None)
        }
        .unwrap();
        assert!(out.item().is_finite(), "{name}");
        let dx = out.backward().wrt(x).unwrap().clone();
        assert!(dx.max_abs_diff(&d) < 1e-8, "{name} differs at the extremes");
    }
}

#[test]
fn adaface_norm_statistics_follow_the_update_rule_and_round_trip() {
    let mut stats = AdaFaceNorms::default();
    assert_eq!(
        stats,
        AdaFaceNorms {
            mean: 20.0,
            std: 100.0
        }
    );
    // mean 20, unbiased std 10: μ = 0.01·20 + 0.99·20, σ = 0.01·10 + 0.99·100
    stats.update(&[10.0f64, 20.0, 30.0], 0.01).unwrap();
    assert!((stats.mean - 20.0).abs() < 1e-12);
    assert!((stats.std - 99.1).abs() < 1e-12, "{}", stats.std);
    // norms are clipped to [0.001, 100] first: [0.001, 100] has mean 50.0005
    let mut clipped = AdaFaceNorms::default();
    clipped.update(&[0.0f32, 250.0], 1.0).unwrap();
    assert!((clipped.mean - 50.0005).abs() < 1e-9, "{}", clipped.mean);
    assert!((clipped.std - 99.999 / 2f64.sqrt()).abs() < 1e-9);
    // a checkpoint can carry it
    let json = serde_json::to_string(&stats).unwrap();
    assert_eq!(serde_json::from_str::<AdaFaceNorms>(&json).unwrap(), stats);
    // errors change nothing
    let before = stats.clone();
    assert_eq!(
        invalid_setting(stats.update(&[3.0f64], 0.01)),
        "AdaFace norms in a batch"
    );
    assert!(matches!(
        stats.update(&[3.0, f64::NAN], 0.01),
        Err(Error::NonFinite { index: 1, .. })
    ));
    assert_eq!(
        invalid_setting(stats.update(&[3.0f64, 4.0], 0.0)),
        "AdaFace momentum"
    );
    assert_eq!(stats, before);
}

#[test]
fn adaface_bad_settings_and_inputs_are_clear_errors() {
    assert_eq!(
        invalid_setting(AdaFace::new(-0.1, 0.333, 64.0, 0.01)),
        "AdaFace margin m"
    );
    assert_eq!(
        invalid_setting(AdaFace::new(2.0, 0.333, 64.0, 0.01)),
        "AdaFace margin m"
    );
    assert_eq!(
        invalid_setting(AdaFace::new(0.4, -1.0, 64.0, 0.01)),
        "AdaFace h"
    );
    assert_eq!(
        invalid_setting(AdaFace::new(0.4, 0.333, 0.0, 0.01)),
        "AdaFace scale s"
    );
    assert_eq!(
        invalid_setting(AdaFace::new(0.4, 0.333, f64::NAN, 0.01)),
        "AdaFace scale s"
    );
    assert_eq!(
        invalid_setting(AdaFace::new(0.4, 0.333, 64.0, 1.5)),
        "AdaFace momentum"
    );
    let g = Graph::<f64>::new();
    let cos = g.constant(Tensor::zeros(&[2, 3]));
    let norms = g.constant(Tensor::from_vec(vec![10.0, 20.0], &[2]).unwrap());
    let ok = Labels::new(vec![0, 2], 3).unwrap();
    let tampered = AdaFace {
        h: -1.0,
        ..AdaFace::default()
    };
    let stats = AdaFaceNorms::default();
    assert_eq!(
        invalid_setting(adaface_loss(
            cos,
            norms,
            &ok,
            &tampered,
            &stats,
            Reduction::Mean,
            None
        )),
        "AdaFace h"
    );
    let bad_stats = AdaFaceNorms {
        mean: 20.0,
        std: -1.0,
    };
    let loss = AdaFace::default();
    assert_eq!(
        invalid_setting(adaface_loss(
            cos,
            norms,
            &ok,
            &loss,
            &bad_stats,
            Reduction::Mean,
            None
        )),
        "AdaFace norm std σ"
    );
    let nan = g.constant(Tensor::from_vec(vec![10.0, f64::NAN], &[2]).unwrap());
    assert!(matches!(
        adaface_loss_composed(cos, nan, &ok, &loss, &stats, Reduction::Mean, None),
        Err(Error::NonFinite { index: 1, .. })
    ));
    let wide = Labels::new(vec![0, 4], 5).unwrap();
    assert!(matches!(
        adaface_loss(cos, norms, &wide, &loss, &stats, Reduction::Mean, None),
        Err(Error::LabelOutOfRange { index: 1, .. })
    ));
}

#[test]
#[should_panic(
    expected = "adaface: expected one norm per row of the cosines [2, 3], found shape [3]"
)]
fn adaface_norms_not_one_per_row_are_a_programmer_error() {
    let g = Graph::<f32>::new();
    let labels = Labels::new(vec![0, 1], 3).unwrap();
    let _ = adaface_loss(
        g.constant(Tensor::zeros(&[2, 3])),
        g.constant(Tensor::zeros(&[3])),
        &labels,
        &AdaFace::default(),
        &AdaFaceNorms::default(),
        Reduction::Mean,
        None,
    );
}

// ---- MagFace ----

fn magface_settings() -> Vec<MagFace> {
    let default = MagFace::default();
    vec![
        default.clone(),
        MagFace {
            fallback: ArcFallback::Threshold,
            ..default.clone()
        },
        MagFace {
            fallback: ArcFallback::None,
            ..default.clone()
        },
        MagFace {
            scale: 30.0,
            lower_norm: 1.0,
            upper_norm: 40.0,
            lower_margin: 0.2,
            upper_margin: 0.6,
            lambda_g: 5.0,
            fallback: ArcFallback::Threshold,
        },
    ]
}

fn magface_heads(loss: MagFace) -> (Box<Head>, Box<Head>) {
    let l2 = loss.clone();
    (
        Box::new(move |x, a, labels, r, w| magface_loss(x, a, labels, &loss, r, w).unwrap()),
        Box::new(move |x, a, labels, r, w| magface_loss_composed(x, a, labels, &l2, r, w).unwrap()),
    )
}

/// Norms from below `l_a` to above `u_a` of every setting (both clamps and the inside).
fn magface_norms(b: usize, seed: u64) -> Tensor<f64> {
    Tensor::rand_uniform(&[b], 0.5, 130.0, &mut rng(seed))
}

#[test]
fn magface_fused_matches_composed_for_settings_reductions_and_weights() {
    for loss in magface_settings() {
        let (fused, composed) = magface_heads(loss.clone());
        for (b, c) in [(1, 2), (5, 3), (5, 17), (40, 1100)] {
            let cos = Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng((b * c) as u64));
            let norms = magface_norms(b, c as u64);
            let what = format!("{loss:?}");
            assert_fused_matches_composed(&*fused, &*composed, &cos, &norms, &labels(b, c), &what);
        }
    }
}

#[test]
fn magface_fused_and_composed_pass_gradcheck_in_cosines_and_norms() {
    for loss in magface_settings() {
        let (fused, composed) = magface_heads(loss.clone());
        for (b, c) in [(1, 2), (4, 6), (6, 3)] {
            let cos = Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng(17 + c as u64));
            let norms = magface_norms(b, 5 + c as u64);
            let labels = labels(b, c);
            for (name, head) in [("fused", &fused), ("composed", &composed)] {
                assert_gradcheck(
                    &**head,
                    &cos,
                    &norms,
                    &labels,
                    true,
                    &format!("{name} {loss:?}"),
                );
            }
        }
    }
}

#[test]
fn magface_two_class_value_and_gradients_by_hand() {
    let loss = MagFace::default();
    let (s, lambda_g) = (64.0f64, 35.0f64);
    let (c_y, c_j, a) = (0.6f64, 0.2f64, 60.0f64);
    let m = 0.45 + (0.8 - 0.45) * (a - 10.0) / 100.0; // 0.625
    let theta = c_y.acos();
    let (z_y, z_j) = (s * (theta + m).cos(), s * c_j);
    let p_y = 1.0 / (1.0 + (z_j - z_y).exp());
    let g_a = a / (110.0 * 110.0) + 1.0 / a;
    let expected = -p_y.ln() + lambda_g * g_a;
    let g = Graph::<f64>::new();
    let x = g.leaf(Tensor::from_vec(vec![c_y, c_j], &[1, 2]).unwrap());
    let norms = g.leaf(Tensor::from_vec(vec![a], &[1]).unwrap());
    let one = Labels::new(vec![0], 2).unwrap();
    let out = magface_loss(x, norms, &one, &loss, Reduction::Mean, None).unwrap();
    assert!(
        (out.item() - expected).abs() < 1e-12,
        "{} vs {expected}",
        out.item()
    );
    let grads = out.backward();
    let d = grads.wrt(x).unwrap().data().to_vec();
    assert!((d[0] - (p_y - 1.0) * s * (theta + m).sin() / theta.sin()).abs() < 1e-12);
    assert!((d[1] - s * (1.0 - p_y)).abs() < 1e-12);
    // ∂L/∂a = (p_y − 1)·s·(−sin(θ + m))·m′ + λ_g(1/u_a² − 1/a²)
    let dm_da = 0.35 / 100.0;
    let expected_da = (p_y - 1.0) * s * -(theta + m).sin() * dm_da
        + lambda_g * (1.0 / (110.0 * 110.0) - 1.0 / (a * a));
    let da = grads.wrt(norms).unwrap().data()[0];
    assert!((da - expected_da).abs() < 1e-12, "{da} vs {expected_da}");
}

#[test]
fn magface_end_to_end_the_gradient_reaches_the_features_through_their_norms() {
    // features → (norm, row L2 norm) → cosines with column-normalised centres → MagFace
    let (b, d, c) = (5, 4, 3);
    let mut r = rng(31);
    // norms between 10 and 110: scale random directions
    let mut x = Tensor::<f64>::randn(&[b, d], 0.0, 1.0, &mut r);
    for (i, row) in x.data_mut().chunks_mut(d).enumerate() {
        let n = row.iter().map(|v| v * v).sum::<f64>().sqrt();
        let target = 15.0 + 20.0 * i as f64;
        row.iter_mut().for_each(|v| *v *= target / n);
    }
    let w = Tensor::<f64>::randn(&[d, c], 0.0, 1.0, &mut r);
    let labels = labels(b, c);
    for loss in magface_settings() {
        for composed in [false, true] {
            let result = gradcheck_with(
                &[x.clone(), w.clone()],
                &GradcheckOptions::default(),
                |_, v| {
                    let norms = (v[0] * v[0]).sum_dim(1).sqrt();
                    let cos = v[0]
                        .normalize_rows(1e-12)
                        .matmul(v[1].normalize_cols(1e-12));
                    let which = if composed {
                        magface_loss_composed
                    } else {
                        magface_loss
                    };
                    which(cos, norms, &labels, &loss, Reduction::Mean, None).unwrap()
                },
            );
            if let Err(e) = result {
                panic!("composed = {composed} {loss:?}: {e}");
            }
        }
    }
}

#[test]
fn magface_is_finite_at_s64_with_cosines_at_one_and_norms_at_and_past_their_clamps() {
    let labels = Labels::new(vec![0, 1, 2, 0, 1], 3).unwrap();
    let cos = [
        1.0, -1.0, 1.0, //
        -1.0, -1.0, 1.0, //
        0.3, -0.2, 1.000_001, //
        -1.0, 0.5, -0.5, //
        0.0, 1.0, 0.5,
    ];
    let norms = [0.0, 10.0, 110.0, 1e9, 60.0];
    for loss in magface_settings() {
        let what = format!("magface {loss:?}");
        assert_finite_in_f32_and_f64(
            |x, a| magface_loss(x, a, &labels, &loss, Reduction::Mean, None).unwrap(),
            |x, a| magface_loss(x, a, &labels, &loss, Reduction::Mean, None).unwrap(),
            &cos,
            &norms,
            &labels,
            &what,
        );
        // outside [l_a, u_a] the norm gets no gradient (margin and regulariser are clamped)
        let g = Graph::<f64>::new();
        let x = g.leaf(Tensor::from_vec(cos.to_vec(), &[5, 3]).unwrap());
        let a = g.leaf(Tensor::from_vec(norms.to_vec(), &[5]).unwrap());
        let out = magface_loss(x, a, &labels, &loss, Reduction::Mean, None).unwrap();
        let da = out.backward().wrt(a).unwrap().clone();
        assert_eq!(da.data()[0], 0.0, "{what}: below l_a");
        assert_eq!(da.data()[3], 0.0, "{what}: above u_a");
    }
}

#[test]
fn magface_bad_settings_and_inputs_are_clear_errors() {
    let default = MagFace::default();
    let named = |loss: MagFace| invalid_setting(loss.validate());
    assert_eq!(
        named(MagFace {
            scale: -1.0,
            ..default.clone()
        }),
        "MagFace scale s"
    );
    assert_eq!(
        named(MagFace {
            lower_norm: 0.0,
            ..default.clone()
        }),
        "MagFace lower norm l_a"
    );
    assert_eq!(
        named(MagFace {
            upper_norm: 10.0,
            ..default.clone()
        }),
        "MagFace upper norm u_a"
    );
    assert_eq!(
        named(MagFace {
            lower_margin: -0.1,
            ..default.clone()
        }),
        "MagFace lower margin l_m"
    );
    assert_eq!(
        named(MagFace {
            upper_margin: 0.4,
            ..default.clone()
        }),
        "MagFace upper margin u_m"
    );
    assert_eq!(
        named(MagFace {
            upper_margin: 4.0,
            ..default.clone()
        }),
        "MagFace upper margin u_m"
    );
    assert_eq!(
        named(MagFace {
            lambda_g: f64::INFINITY,
            ..default.clone()
        }),
        "MagFace λ_g"
    );
    let g = Graph::<f64>::new();
    let cos = g.constant(Tensor::zeros(&[2, 3]));
    let ok = Labels::new(vec![0, 2], 3).unwrap();
    let inf = g.constant(Tensor::from_vec(vec![f64::INFINITY, 20.0], &[2]).unwrap());
    assert!(matches!(
        magface_loss(cos, inf, &ok, &default, Reduction::Mean, None),
        Err(Error::NonFinite { index: 0, .. })
    ));
    let bad = MagFace {
        upper_norm: 1.0,
        ..default
    };
    let norms = g.constant(Tensor::from_vec(vec![20.0, 20.0], &[2, 1]).unwrap());
    assert_eq!(
        invalid_setting(magface_loss_composed(
            cos,
            norms,
            &ok,
            &bad,
            Reduction::Mean,
            None
        )),
        "MagFace upper norm u_a"
    );
}

// ---- CurricularFace ----

fn curricularface_cases() -> Vec<(CurricularFace, CurricularFaceState)> {
    let default = CurricularFace::default();
    let other = CurricularFace {
        margin: 0.35,
        scale: 30.0,
        momentum: 0.1,
    };
    [0.0, 0.3, 0.9, -0.5]
        .into_iter()
        .map(|t| (default.clone(), CurricularFaceState { t }))
        .chain([(other, CurricularFaceState { t: 0.6 })])
        .collect()
}

fn curricularface_heads(
    loss: CurricularFace,
    state: CurricularFaceState,
) -> (Box<Head>, Box<Head>) {
    let (l2, s2) = (loss.clone(), state.clone());
    (
        Box::new(move |x, _, labels, r, w| {
            curricularface_loss(x, labels, &loss, &state, r, w).unwrap()
        }),
        Box::new(move |x, _, labels, r, w| {
            curricularface_loss_composed(x, labels, &l2, &s2, r, w).unwrap()
        }),
    )
}

#[test]
fn curricularface_fused_matches_composed_for_settings_states_reductions_and_weights() {
    for (loss, state) in curricularface_cases() {
        let (fused, composed) = curricularface_heads(loss.clone(), state.clone());
        for (b, c) in [(1, 2), (5, 3), (5, 17), (40, 1100)] {
            let cos = Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng((b * c) as u64));
            let norms = Tensor::ones(&[b]);
            let what = format!("{loss:?} {state:?}");
            assert_fused_matches_composed(&*fused, &*composed, &cos, &norms, &labels(b, c), &what);
        }
    }
}

#[test]
fn curricularface_fused_and_composed_pass_gradcheck() {
    for (loss, state) in curricularface_cases() {
        let (fused, composed) = curricularface_heads(loss.clone(), state.clone());
        for (b, c) in [(1, 2), (4, 6), (3, 9)] {
            let cos = Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng(17 + c as u64));
            let (norms, labels) = (Tensor::ones(&[b]), labels(b, c));
            for (name, head) in [("fused", &fused), ("composed", &composed)] {
                let what = format!("{name} {loss:?} {state:?}");
                assert_gradcheck(&**head, &cos, &norms, &labels, false, &what);
            }
        }
    }
}

#[test]
fn curricularface_three_class_value_and_gradient_by_hand() {
    let loss = CurricularFace::default();
    let state = CurricularFaceState { t: 0.4 };
    let (s, m, t) = (64.0f64, 0.5f64, 0.4f64);
    // target 0.6 (θ = 53.1°, τ = cos(θ + m) = 0.16): class 1 at 0.5 is hard, class 2 at 0.1 not
    let (c_y, c_hard, c_easy) = (0.6f64, 0.5f64, 0.1f64);
    let theta = c_y.acos();
    let tau = (theta + m).cos();
    assert!(c_hard > tau && c_easy < tau, "τ = {tau}");
    let z = [s * (theta + m).cos(), s * c_hard * (t + c_hard), s * c_easy];
    let lse = z.iter().map(|v| v.exp()).sum::<f64>().ln();
    let p: Vec<f64> = z.iter().map(|v| (v - lse).exp()).collect();
    let g = Graph::<f64>::new();
    let x = g.leaf(Tensor::from_vec(vec![c_y, c_hard, c_easy], &[1, 3]).unwrap());
    let one = Labels::new(vec![0], 3).unwrap();
    let out = curricularface_loss(x, &one, &loss, &state, Reduction::Mean, None).unwrap();
    assert!((out.item() - (lse - z[0])).abs() < 1e-12);
    let d = out.backward().wrt(x).unwrap().data().to_vec();
    assert!((d[0] - (p[0] - 1.0) * s * (theta + m).sin() / theta.sin()).abs() < 1e-12);
    assert!((d[1] - p[1] * s * (t + 2.0 * c_hard)).abs() < 1e-12);
    assert!((d[2] - p[2] * s).abs() < 1e-12);
}

#[test]
fn curricularface_t_follows_the_update_rule_and_round_trips() {
    let mut state = CurricularFaceState::default();
    assert_eq!(state.t, 0.0);
    // target cosines 0.5 and 0.7 (labels 1 and 0): t = 0.01·0.6
    let cos = Tensor::from_vec(vec![0.1, 0.5, 0.7, -0.2], &[2, 2]).unwrap();
    let labels = Labels::new(vec![1, 0], 2).unwrap();
    state.update(&cos, &labels, 0.01).unwrap();
    assert!((state.t - 0.006).abs() < 1e-15, "{}", state.t);
    state.update(&cos, &labels, 0.01).unwrap();
    assert!((state.t - (0.006 + 0.01 * (0.6 - 0.006))).abs() < 1e-15);
    // cosines past ±1 count as ±1
    let mut full = CurricularFaceState::default();
    let past = Tensor::from_vec(vec![1.5f32, 0.0], &[1, 2]).unwrap();
    full.update(&past, &Labels::new(vec![0], 2).unwrap(), 1.0)
        .unwrap();
    assert_eq!(full.t, 1.0);
    let json = serde_json::to_string(&state).unwrap();
    assert_eq!(
        serde_json::from_str::<CurricularFaceState>(&json).unwrap(),
        state
    );
    // errors change nothing
    let before = state.clone();
    let nan = Tensor::from_vec(vec![f64::NAN, 0.5], &[1, 2]).unwrap();
    assert!(matches!(
        state.update(&nan, &Labels::new(vec![0], 2).unwrap(), 0.01),
        Err(Error::NonFinite { index: 0, .. })
    ));
    assert!(matches!(
        state.update(&cos, &Labels::new(vec![1, 0, 1], 2).unwrap(), 0.01),
        Err(Error::DataLength { .. })
    ));
    assert!(matches!(
        state.update(&cos, &Labels::new(vec![1, 2], 3).unwrap(), 0.01),
        Err(Error::LabelOutOfRange { index: 1, .. })
    ));
    assert_eq!(
        invalid_setting(state.update(&cos, &labels, 0.0)),
        "CurricularFace momentum"
    );
    assert_eq!(state, before);
}

#[test]
fn curricularface_is_finite_at_s64_with_cosines_at_one_t_at_its_ends_and_at_the_threshold() {
    let loss = CurricularFace::default();
    let th = (std::f64::consts::PI - 0.5).cos();
    let labels = Labels::new(vec![0, 1, 2, 0, 1], 3).unwrap();
    let cos = [
        1.0, -1.0, 1.0, //
        -1.0, -1.0, 1.0, //
        0.3, -0.2, 1.000_001, //
        th, th, 0.5, //
        0.0, 1.0, 0.5,
    ];
    let norms = [1.0; 5];
    for t in [-1.0, 0.0, 1.0] {
        let state = CurricularFaceState { t };
        let what = format!("curricularface t = {t}");
        let d = assert_finite_in_f32_and_f64(
            |x, _| curricularface_loss(x, &labels, &loss, &state, Reduction::Mean, None).unwrap(),
            |x, _| curricularface_loss(x, &labels, &loss, &state, Reduction::Mean, None).unwrap(),
            &cos,
            &norms,
            &labels,
            &what,
        );
        let g = Graph::<f64>::new();
        let x = g.leaf(Tensor::from_vec(cos.to_vec(), &[5, 3]).unwrap());
        let out =
            curricularface_loss_composed(x, &labels, &loss, &state, Reduction::Mean, None).unwrap();
        let composed = out.backward().wrt(x).unwrap().clone();
        assert!(composed.max_abs_diff(&d) < 1e-8, "{what}: composed differs");
    }
}

#[test]
fn curricularface_bad_settings_and_inputs_are_clear_errors() {
    let named = |loss: CurricularFace| invalid_setting(loss.validate());
    let default = CurricularFace::default();
    assert_eq!(
        named(CurricularFace {
            margin: -0.1,
            ..default.clone()
        }),
        "CurricularFace margin m"
    );
    assert_eq!(
        named(CurricularFace {
            scale: 0.0,
            ..default.clone()
        }),
        "CurricularFace scale s"
    );
    assert_eq!(
        named(CurricularFace {
            momentum: 2.0,
            ..default.clone()
        }),
        "CurricularFace momentum"
    );
    let g = Graph::<f64>::new();
    let cos = g.constant(Tensor::zeros(&[2, 3]));
    let ok = Labels::new(vec![0, 2], 3).unwrap();
    let state = CurricularFaceState { t: 1.5 };
    assert_eq!(
        invalid_setting(curricularface_loss(
            cos,
            &ok,
            &default,
            &state,
            Reduction::Mean,
            None
        )),
        "CurricularFace t"
    );
    let fine = CurricularFaceState::default();
    let weights = [1.0, -1.0];
    assert_eq!(
        invalid_setting(curricularface_loss_composed(
            cos,
            &ok,
            &default,
            &fine,
            Reduction::Mean,
            Some(&weights)
        )),
        "sample weight"
    );
}

// ---- ElasticFace ----

fn elasticface_settings() -> Vec<ElasticFace> {
    vec![
        ElasticFace::arc(),
        ElasticFace::cos(),
        ElasticFace {
            std: 0.3, // wide: some margins negative, some large
            ..ElasticFace::arc()
        },
        ElasticFace {
            scale: 30.0,
            std: 0.0, // CosFace
            ..ElasticFace::cos()
        },
    ]
}

fn elasticface_heads(loss: ElasticFace, margins: Vec<f64>) -> (Box<Head>, Box<Head>) {
    let (l2, m2) = (loss.clone(), margins.clone());
    (
        Box::new(move |x, _, labels, r, w| {
            elasticface_loss(x, labels, &loss, &margins, r, w).unwrap()
        }),
        Box::new(move |x, _, labels, r, w| {
            elasticface_loss_composed(x, labels, &l2, &m2, r, w).unwrap()
        }),
    )
}

#[test]
fn elasticface_fused_matches_composed_for_both_forms_reductions_and_weights() {
    for loss in elasticface_settings() {
        for (b, c) in [(1, 2), (5, 3), (5, 17), (40, 1100)] {
            let margins = loss.draw_margins(b, &mut rng(c as u64)).unwrap();
            let (fused, composed) = elasticface_heads(loss.clone(), margins);
            let cos = Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng((b * c) as u64));
            let norms = Tensor::ones(&[b]);
            let what = format!("{loss:?}");
            assert_fused_matches_composed(&*fused, &*composed, &cos, &norms, &labels(b, c), &what);
        }
    }
}

#[test]
fn elasticface_fused_and_composed_pass_gradcheck() {
    for loss in elasticface_settings() {
        for (b, c) in [(1, 2), (4, 6)] {
            let margins = loss.draw_margins(b, &mut rng(3 + c as u64)).unwrap();
            let (fused, composed) = elasticface_heads(loss.clone(), margins);
            let cos = Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng(17 + c as u64));
            let (norms, labels) = (Tensor::ones(&[b]), labels(b, c));
            for (name, head) in [("fused", &fused), ("composed", &composed)] {
                assert_gradcheck(
                    &**head,
                    &cos,
                    &norms,
                    &labels,
                    false,
                    &format!("{name} {loss:?}"),
                );
            }
        }
    }
}

#[test]
fn elasticface_margins_are_normal_and_the_same_for_a_seed() {
    let loss = ElasticFace::arc();
    let a = loss
        .draw_margins(20_000, &mut margrad::seeded_rng(7))
        .unwrap();
    let again = loss
        .draw_margins(20_000, &mut margrad::seeded_rng(7))
        .unwrap();
    let other = loss
        .draw_margins(20_000, &mut margrad::seeded_rng(8))
        .unwrap();
    assert_eq!(a, again);
    assert_ne!(a, other);
    let n = a.len() as f64;
    let mean = a.iter().sum::<f64>() / n;
    let std = (a.iter().map(|m| (m - mean) * (m - mean)).sum::<f64>() / (n - 1.0)).sqrt();
    // standard errors: 0.05/√20000 = 3.5e-4 for the mean, about 2.5e-4 for the std
    assert!((mean - 0.5).abs() < 2e-3, "mean {mean}");
    assert!((std - 0.05).abs() < 2e-3, "std {std}");
    // σ = 0: every margin is m, and the loss is ArcFace's (no fallback)
    let fixed = ElasticFace {
        std: 0.0,
        ..ElasticFace::arc()
    };
    let margins = fixed.draw_margins(6, &mut margrad::seeded_rng(1)).unwrap();
    assert_eq!(margins, vec![0.5; 6]);
    let cos = Tensor::rand_uniform(&[6, 9], -0.95, 0.95, &mut rng(5));
    let labels = labels(6, 9);
    let arcface = MarginLoss::arcface(64.0, 0.5, ArcFallback::None).unwrap();
    let g = Graph::<f64>::new();
    let x = g.leaf(cos);
    let elastic = elasticface_loss(x, &labels, &fixed, &margins, Reduction::Mean, None).unwrap();
    let arc = margin_cross_entropy_with(x, &labels, &arcface, Reduction::Mean, None).unwrap();
    assert!((elastic.item() - arc.item()).abs() < 1e-12);
}

#[test]
fn elasticface_two_class_values_and_gradients_by_hand() {
    let (c_y, c_j, m, s) = (0.6f64, 0.2f64, 0.47f64, 64.0f64);
    let one = Labels::new(vec![0], 2).unwrap();
    for loss in [ElasticFace::arc(), ElasticFace::cos()] {
        let theta = c_y.acos();
        let (z_y, slope) = match loss.kind {
            ElasticKind::Arc => (s * (theta + m).cos(), s * (theta + m).sin() / theta.sin()),
            ElasticKind::Cos => (s * (c_y - m), s),
        };
        let p_y = 1.0 / (1.0 + (s * c_j - z_y).exp());
        let g = Graph::<f64>::new();
        let x = g.leaf(Tensor::from_vec(vec![c_y, c_j], &[1, 2]).unwrap());
        let out = elasticface_loss(x, &one, &loss, &[m], Reduction::Mean, None).unwrap();
        assert!((out.item() + p_y.ln()).abs() < 1e-12, "{:?}", loss.kind);
        let d = out.backward().wrt(x).unwrap().data().to_vec();
        assert!((d[0] - (p_y - 1.0) * slope).abs() < 1e-12);
        assert!((d[1] - s * (1.0 - p_y)).abs() < 1e-12);
    }
}

#[test]
fn elasticface_is_finite_at_s64_with_cosines_at_one_and_extreme_margins() {
    let labels = Labels::new(vec![0, 1, 2, 0, 1], 3).unwrap();
    let cos = [
        1.0, -1.0, 1.0, //
        -1.0, -1.0, 1.0, //
        0.3, -0.2, 1.000_001, //
        -1.0, 0.5, -0.5, //
        0.0, 1.0, 0.5,
    ];
    // margins past π − θ (θ + m > π), negative, and zero
    let margins = [3.0, -0.5, 0.0, 0.5, 1.5];
    for loss in [ElasticFace::arc(), ElasticFace::cos()] {
        let what = format!("elasticface {:?}", loss.kind);
        let d = assert_finite_in_f32_and_f64(
            |x, _| elasticface_loss(x, &labels, &loss, &margins, Reduction::Mean, None).unwrap(),
            |x, _| elasticface_loss(x, &labels, &loss, &margins, Reduction::Mean, None).unwrap(),
            &cos,
            &[1.0; 5],
            &labels,
            &what,
        );
        let g = Graph::<f64>::new();
        let x = g.leaf(Tensor::from_vec(cos.to_vec(), &[5, 3]).unwrap());
        let out =
            elasticface_loss_composed(x, &labels, &loss, &margins, Reduction::Mean, None).unwrap();
        let composed = out.backward().wrt(x).unwrap().clone();
        assert!(composed.max_abs_diff(&d) < 1e-8, "{what}: composed differs");
    }
}

#[test]
fn elasticface_bad_settings_and_inputs_are_clear_errors() {
    let named = |loss: ElasticFace| invalid_setting(loss.validate());
    assert_eq!(
        named(ElasticFace {
            scale: 0.0,
            ..ElasticFace::arc()
        }),
        "ElasticFace scale s"
    );
    assert_eq!(
        named(ElasticFace {
            margin: 3.5,
            ..ElasticFace::arc()
        }),
        "ElasticFace margin m"
    );
    assert_eq!(
        named(ElasticFace {
            margin: -0.1,
            ..ElasticFace::cos()
        }),
        "ElasticFace margin m"
    );
    assert_eq!(
        named(ElasticFace {
            std: -0.01,
            ..ElasticFace::cos()
        }),
        "ElasticFace std σ"
    );
    let tampered = ElasticFace {
        std: f64::NAN,
        ..ElasticFace::arc()
    };
    assert_eq!(
        invalid_setting(tampered.draw_margins(3, &mut rng(0))),
        "ElasticFace std σ"
    );
    let g = Graph::<f64>::new();
    let cos = g.constant(Tensor::zeros(&[2, 3]));
    let ok = Labels::new(vec![0, 2], 3).unwrap();
    let loss = ElasticFace::arc();
    assert!(matches!(
        elasticface_loss(cos, &ok, &loss, &[0.5], Reduction::Mean, None),
        Err(Error::DataLength {
            expected: 2,
            found: 1,
            ..
        })
    ));
    assert!(matches!(
        elasticface_loss_composed(cos, &ok, &loss, &[0.5, f64::NAN], Reduction::Mean, None),
        Err(Error::NonFinite { index: 1, .. })
    ));
}
