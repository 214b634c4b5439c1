//! The margin losses: fused against composed (f64: values to 1e-10, gradients to 1e-8), both
//! against gradcheck, end to end through the head; stability at the extremes; clear errors.

mod common;
use common::rng;
use margrad::loss::composed::margin_cross_entropy_composed;
use margrad::loss::{
    ArcFallback, MarginLoss, Reduction, margin_cross_entropy, margin_cross_entropy_with,
    softmax_cross_entropy,
};
use margrad::nn::{CosineHead, CosineHeadConfig, Forward, Head, Module, l2_normalize};
use margrad::{Error, GradcheckOptions, Graph, Labels, Params, Tensor, Var, gradcheck_with};

/// Every loss of the family, at its usual settings.
fn catalogue() -> Vec<MarginLoss> {
    let mut all = vec![
        MarginLoss::softmax(),
        MarginLoss::normface(16.0).unwrap(),
        MarginLoss::am(30.0, 0.35).unwrap(),
        MarginLoss::am(10.0, 0.2).unwrap(),
        MarginLoss::enhanced(30.0, 0.35).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::None).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::EasyMargin).unwrap(),
        MarginLoss::combined(30.0, 1.0, 0.3, 0.2, ArcFallback::Threshold).unwrap(),
        MarginLoss::combined(30.0, 1.35, 0.2, 0.1, ArcFallback::None).unwrap(),
    ];
    for ablation in [
        MarginLoss::am,
        MarginLoss::enhanced_margin_only,
        MarginLoss::enhanced_scaling_only,
        MarginLoss::enhanced,
    ] {
        all.push(ablation(30.0, 0.35).unwrap());
    }
    all
}

fn cosines(b: usize, c: usize, seed: u64) -> Tensor<f64> {
    Tensor::rand_uniform(&[b, c], -0.95, 0.95, &mut rng(seed))
}

fn labels(b: usize, c: usize) -> Labels {
    Labels::new((0..b).map(|i| (i * 7 + 1) % c).collect(), c).unwrap()
}

type LossFn = for<'g> fn(
    Var<'g, f64>,
    &Labels,
    &MarginLoss,
    Reduction,
    Option<&[f64]>,
) -> Result<Var<'g, f64>, Error>;

const FUSED: LossFn = margin_cross_entropy_with;
const COMPOSED: LossFn = margin_cross_entropy_composed;

/// Value and gradient (for a seeded cotangent) of a loss of `cos`.
fn value_and_grad(
    which: LossFn,
    cos: &Tensor<f64>,
    labels: &Labels,
    loss: &MarginLoss,
    reduction: Reduction,
    weights: Option<&[f64]>,
) -> (Tensor<f64>, Tensor<f64>) {
    let g = Graph::new();
    let x = g.leaf(cos.clone());
    let out = which(x, labels, loss, reduction, weights).unwrap();
    let seed = Tensor::randn(&out.shape(), 0.0, 1.0, &mut rng(99));
    let value = out.to_tensor();
    let grads = out.backward_with(seed);
    (value, grads.wrt(x).unwrap().clone())
}

#[test]
fn fused_matches_composed_for_every_loss_reduction_and_weighting() {
    let weights = [0.5, 2.0, 0.0, 1.0, 1.5];
    for loss in catalogue() {
        for (b, c) in [(1, 2), (5, 3), (5, 17)] {
            let cos = cosines(b, c, (b * c) as u64);
            let labels = labels(b, c);
            for reduction in [Reduction::Mean, Reduction::Sum, Reduction::None] {
                for w in [None, Some(&weights[..b])] {
                    let (fv, fg) = value_and_grad(FUSED, &cos, &labels, &loss, reduction, w);
                    let (cv, cg) = value_and_grad(COMPOSED, &cos, &labels, &loss, reduction, w);
                    let at = format!("{} [{b}, {c}] {reduction:?} weights {w:?}", loss.name());
                    assert!(fv.max_abs_diff(&cv) < 1e-10, "values differ for {at}");
                    assert!(fg.max_abs_diff(&cg) < 1e-8, "gradients differ for {at}");
                }
            }
        }
    }
}

#[test]
fn fused_and_composed_pass_gradcheck_for_every_loss() {
    for loss in catalogue() {
        for (b, c) in [(1, 2), (4, 6)] {
            let cos = cosines(b, c, 7 + c as u64);
            let labels = labels(b, c);
            for (name, which) in [("fused", FUSED), ("composed", COMPOSED)] {
                for reduction in [Reduction::Mean, Reduction::None] {
                    let result = gradcheck_with(
                        std::slice::from_ref(&cos),
                        &GradcheckOptions::default(),
                        |_, v| which(v[0], &labels, &loss, reduction, None).unwrap(),
                    );
                    if let Err(e) = result {
                        panic!("{name} {} [{b}, {c}] {reduction:?}: {e}", loss.name());
                    }
                }
            }
        }
    }
}

/// features → row L2 norm → cosine with column-normalised W → margin → loss, both ways.
fn through_head<'g>(
    which: LossFn,
    loss: &MarginLoss,
    labels: &Labels,
    v: &[Var<'g, f64>],
) -> Var<'g, f64> {
    let cos = v[0]
        .normalize_rows(1e-12)
        .matmul(v[1].normalize_cols(1e-12));
    which(cos, labels, loss, Reduction::Mean, None).unwrap()
}

#[test]
fn end_to_end_through_the_head_for_scales_classes_and_batches() {
    // (batch, dim, classes, scale): s up to 64, C from 2 to 1000, batch 1 to 64
    let cases = [
        (1, 3, 2, 30.0),
        (7, 5, 10, 64.0),
        (64, 8, 1000, 30.0),
        (16, 4, 2, 64.0),
    ];
    for (b, d, c, s) in cases {
        let mut r = rng((b * d * c) as u64);
        let x = Tensor::<f64>::randn(&[b, d], 0.0, 1.0, &mut r);
        let w = Tensor::<f64>::randn(&[d, c], 0.0, 1.0, &mut r);
        let labels = labels(b, c);
        let losses = [
            MarginLoss::am(s, 0.35).unwrap(),
            MarginLoss::enhanced(s, 0.35).unwrap(),
            MarginLoss::arcface(s, 0.5, ArcFallback::Threshold).unwrap(),
        ];
        for loss in losses {
            let at = format!("{} B={b} D={d} C={c} s={s}", loss.name());
            // fused against composed, gradients with respect to features and W
            let run = |which: LossFn| {
                let g = Graph::new();
                let v = [g.leaf(x.clone()), g.leaf(w.clone())];
                let out = through_head(which, &loss, &labels, &v);
                let value = out.item();
                let grads = out.backward();
                (
                    value,
                    grads.wrt(v[0]).unwrap().clone(),
                    grads.wrt(v[1]).unwrap().clone(),
                )
            };
            let (fused, composed) = (run(FUSED), run(COMPOSED));
            assert!((fused.0 - composed.0).abs() < 1e-10, "value, {at}");
            assert!(fused.1.max_abs_diff(&composed.1) < 1e-8, "∂x, {at}");
            assert!(fused.2.max_abs_diff(&composed.2) < 1e-8, "∂W, {at}");
            let options = GradcheckOptions {
                directions: (b * c > 1000).then_some(16),
                ..Default::default()
            };
            for (name, which) in [("fused", FUSED), ("composed", COMPOSED)] {
                let inputs = [x.clone(), w.clone()];
                if let Err(e) = gradcheck_with(&inputs, &options, |_, v| {
                    through_head(which, &loss, &labels, v)
                }) {
                    panic!("{name} {at}: {e}");
                }
            }
        }
    }
}

#[test]
fn head_loss_is_the_fused_loss_of_its_cosines() {
    let mut r = rng(4);
    let mut params = Params::<f64>::new();
    let config = CosineHeadConfig {
        dim: 6,
        classes: 5,
        loss: MarginLoss::am(30.0, 0.35).unwrap(),
    };
    let head = CosineHead::new(&mut params, "head", config, &mut r);
    let x = Tensor::randn(&[8, 6], 0.0, 1.0, &mut r);
    let labels = labels(8, 5);
    let g = Graph::new();
    let mut cx = Forward::eval(&g, &params);
    let features = g.constant(x.clone());
    let loss = head.loss(&mut cx, features, &labels).unwrap();
    let cos = head.forward(&mut cx, features);
    let direct = margin_cross_entropy(cos, &labels, head.margin_loss()).unwrap();
    assert_eq!(loss.item(), direct.item());
    let cos = cos.to_tensor();
    for row in cos.data() {
        assert!(row.abs() <= 1.0 + 1e-12);
    }
    assert_eq!(head.predict(&params, &x), cos.argmax_rows());
    let embedded = l2_normalize(features).to_tensor();
    for row in embedded.data().chunks(6) {
        assert!((row.iter().map(|v| v * v).sum::<f64>() - 1.0).abs() < 1e-12);
    }
    let grads = loss.backward();
    assert_eq!(grads.param(head.weight()).unwrap().shape(), &[6, 5]);
}

// ---- known values ----

#[test]
fn two_class_values_by_hand() {
    // one sample, label 0, cosines (0.6, 0.2): L = log(1 + exp(z1 − z0))
    let cos = Tensor::from_vec(vec![0.6, 0.2], &[1, 2]).unwrap();
    let labels = Labels::new(vec![0], 2).unwrap();
    let (s, m) = (30.0f64, 0.35f64);
    let softplus = |d: f64| d.exp().ln_1p();
    let theta = 0.6f64.acos();
    let cases = [
        (
            MarginLoss::normface(s).unwrap(),
            softplus(s * 0.2 - s * 0.6),
        ),
        (
            MarginLoss::am(s, m).unwrap(),
            softplus(s * 0.2 - s * (0.6 - m)),
        ),
        (
            MarginLoss::enhanced(s, m).unwrap(),
            softplus(s * (0.2 + m) - s * (0.6 - m) / m.exp()),
        ),
        (
            MarginLoss::arcface(s, m, ArcFallback::None).unwrap(),
            softplus(s * 0.2 - s * (theta + m).cos()),
        ),
    ];
    for (loss, expected) in cases {
        let g = Graph::<f64>::new();
        let value = margin_cross_entropy(g.constant(cos.clone()), &labels, &loss)
            .unwrap()
            .item();
        assert!(
            (value - expected).abs() < 1e-12,
            "{}: {value} vs {expected}",
            loss.name()
        );
    }
}

#[test]
fn additional_margin_alone_is_a_larger_target_margin() {
    // softmax is shift-invariant: s(c_j + m_nt) against s(c_y − m) is s c_j against s(c_y − m − m_nt)
    let cos = cosines(6, 9, 3);
    let labels = labels(6, 9);
    let margin_only = MarginLoss::enhanced_with(30.0, 0.2, 0.15, 1.0).unwrap();
    let am = MarginLoss::am(30.0, 0.35).unwrap();
    let (a, ga) = value_and_grad(FUSED, &cos, &labels, &margin_only, Reduction::None, None);
    let (b, gb) = value_and_grad(FUSED, &cos, &labels, &am, Reduction::None, None);
    assert!(a.max_abs_diff(&b) < 1e-12);
    assert!(ga.max_abs_diff(&gb) < 1e-12);
}

#[test]
fn ablation_presets_set_exactly_their_change() {
    let m = 0.35f64;
    let am = MarginLoss::am(30.0, m).unwrap();
    assert_eq!((am.nontarget_margin, am.target_divisor), (0.0, 1.0));
    let margin_only = MarginLoss::enhanced_margin_only(30.0, m).unwrap();
    assert_eq!(
        (margin_only.nontarget_margin, margin_only.target_divisor),
        (m, 1.0)
    );
    let scaling_only = MarginLoss::enhanced_scaling_only(30.0, m).unwrap();
    assert_eq!(
        (scaling_only.nontarget_margin, scaling_only.target_divisor),
        (0.0, m.exp())
    );
    let both = MarginLoss::enhanced_with(30.0, m, m, m.exp()).unwrap();
    assert_eq!(both, MarginLoss::enhanced(30.0, m).unwrap());
    for loss in [&am, &margin_only, &scaling_only, &both] {
        assert_eq!(loss.cosine_margin, m);
    }
    let names = [&am, &margin_only, &scaling_only, &both].map(|l| l.name());
    assert_eq!(
        names,
        [
            "am",
            "enhanced-margin-only",
            "enhanced-scaling-only",
            "enhanced"
        ]
    );
}

// ---- numerical stability ----

fn finite_loss_and_grad<F: margrad::Element>(cos: Tensor<F>, labels: &Labels, loss: &MarginLoss) {
    let g = Graph::new();
    let x = g.leaf(cos);
    let out = margin_cross_entropy(x, labels, loss).unwrap();
    assert!(
        out.item().is_finite(),
        "{}: loss {}",
        loss.name(),
        out.item()
    );
    let grads = out.backward();
    grads
        .ensure_finite()
        .unwrap_or_else(|e| panic!("{}: {e}", loss.name()));
}

#[test]
fn finite_at_s64_m05_with_cosines_exactly_plus_and_minus_one() {
    let labels = Labels::new(vec![0, 1, 2, 0], 3).unwrap();
    let extremes = vec![
        1.0, -1.0, 1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, -1.0, -1.0, -1.0,
    ];
    let losses = [
        MarginLoss::am(64.0, 0.5).unwrap(),
        MarginLoss::enhanced(64.0, 0.5).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::None).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).unwrap(),
        MarginLoss::arcface(64.0, 0.5, ArcFallback::EasyMargin).unwrap(),
        MarginLoss::combined(64.0, 1.5, 0.5, 0.2, ArcFallback::Threshold).unwrap(),
    ];
    for loss in &losses {
        finite_loss_and_grad(
            Tensor::<f32>::from_vec(extremes.iter().map(|&v| v as f32).collect(), &[4, 3]).unwrap(),
            &labels,
            loss,
        );
        finite_loss_and_grad(
            Tensor::<f64>::from_vec(extremes.clone(), &[4, 3]).unwrap(),
            &labels,
            loss,
        );
    }
}

#[test]
fn finite_with_logits_a_thousand_apart() {
    let labels = Labels::new(vec![2, 0], 3).unwrap();
    let logits =
        Tensor::from_vec(vec![1000.0f32, 0.0, -1000.0, 1000.0, 0.0, -1000.0], &[2, 3]).unwrap();
    let g = Graph::new();
    let x = g.leaf(logits);
    let loss = softmax_cross_entropy(x, &labels).unwrap();
    assert_eq!(loss.item(), 1000.0); // sample 0 loses 2000, sample 1 loses 0
    let grads = loss.backward();
    grads.ensure_finite().unwrap();
    assert_eq!(
        grads.wrt(x).unwrap().data(),
        &[0.5, 0.0, -0.5, 0.0, 0.0, 0.0]
    );
}

#[test]
fn a_label_that_is_the_only_class_gives_zero_loss_and_gradient() {
    let labels = Labels::new(vec![0, 0], 1).unwrap();
    for loss in catalogue() {
        let g = Graph::<f64>::new();
        let x = g.leaf(Tensor::from_vec(vec![0.3, -0.9], &[2, 1]).unwrap());
        let out = margin_cross_entropy(x, &labels, &loss).unwrap();
        assert_eq!(out.item(), 0.0, "{}", loss.name());
        let grads = out.backward();
        assert!(
            grads.wrt(x).unwrap().data().iter().all(|&d| d == 0.0),
            "{}",
            loss.name()
        );
    }
}

// ---- errors ----

#[test]
fn bad_settings_are_clear_errors() {
    let setting = |r: Result<MarginLoss, Error>| match r {
        Err(Error::InvalidSetting { name, .. }) => name,
        other => panic!("expected an invalid setting, got {other:?}"),
    };
    assert_eq!(setting(MarginLoss::am(30.0, -0.1)), "cosine margin m");
    assert_eq!(setting(MarginLoss::am(0.0, 0.35)), "scale");
    assert_eq!(setting(MarginLoss::normface(f64::NAN)), "scale");
    assert_eq!(
        setting(MarginLoss::enhanced_with(30.0, 0.3, -0.1, 1.0)),
        "non-target margin m_nt"
    );
    assert_eq!(
        setting(MarginLoss::enhanced_with(30.0, 0.3, 0.3, 0.0)),
        "target divisor M"
    );
    assert_eq!(
        setting(MarginLoss::arcface(64.0, 3.2, ArcFallback::None)),
        "angular margin m2"
    );
    assert_eq!(
        setting(MarginLoss::combined(64.0, 0.5, 0.1, 0.0, ArcFallback::None)),
        "angular multiplier m1"
    );
    assert_eq!(
        MarginLoss::am(30.0, -0.1).unwrap_err().to_string(),
        "invalid cosine margin m = -0.1: must be non-negative"
    );
}

#[test]
fn bad_batches_are_clear_errors_not_panics() {
    let am = MarginLoss::am(30.0, 0.35).unwrap();
    let g = Graph::<f32>::new();
    let cos = g.constant(Tensor::zeros(&[2, 3]));
    // labels checked against more classes than the head has
    let wide = Labels::new(vec![0, 4], 5).unwrap();
    assert_eq!(
        margin_cross_entropy(cos, &wide, &am).unwrap_err(),
        Error::LabelOutOfRange {
            index: 1,
            label: 4,
            classes: 3
        }
    );
    let short = Labels::new(vec![0], 3).unwrap();
    assert!(matches!(
        margin_cross_entropy(cos, &short, &am),
        Err(Error::DataLength {
            expected: 2,
            found: 1,
            ..
        })
    ));
    let empty = g.constant(Tensor::zeros(&[0, 3]));
    let none = Labels::new(vec![], 3).unwrap();
    assert_eq!(
        margin_cross_entropy(empty, &none, &am).unwrap_err(),
        Error::EmptyBatch
    );
    let ok = Labels::new(vec![0, 2], 3).unwrap();
    let bad_weight = margin_cross_entropy_with(cos, &ok, &am, Reduction::Mean, Some(&[1.0, -1.0]));
    assert!(matches!(
        bad_weight,
        Err(Error::InvalidSetting {
            name: "sample weight",
            ..
        })
    ));
    let mut tampered = am.clone();
    tampered.scale = -1.0;
    assert!(matches!(
        margin_cross_entropy(cos, &ok, &tampered),
        Err(Error::InvalidSetting { name: "scale", .. })
    ));
}

#[test]
#[should_panic(expected = "margin_cross_entropy: expected [B, C] cosines, found shape [6]")]
fn cosines_of_the_wrong_rank_are_a_programmer_error() {
    let g = Graph::<f32>::new();
    let _ = margin_cross_entropy(
        g.constant(Tensor::zeros(&[6])),
        &labels(6, 3),
        &MarginLoss::softmax(),
    );
}

// ---- what the Enhanced loss's two changes do (docs/derivations.md, section 6) ----

#[test]
fn enhanced_decision_boundary_is_m_cos_j_plus_m_one_plus_m() {
    // on cos_y = M·cos_j + m(1 + M) the target and the other logit are equal: p = 1/2
    let (s, m) = (30.0f64, 0.35f64);
    let big_m = m.exp();
    let labels = Labels::new(vec![0], 2).unwrap();
    for c_j in [-0.5, 0.0, 0.1] {
        let c_y = big_m * c_j + m * (1.0 + big_m);
        let cos = Tensor::from_vec(vec![c_y, c_j], &[1, 2]).unwrap();
        let g = Graph::<f64>::new();
        let loss = margin_cross_entropy(
            g.constant(cos),
            &labels,
            &MarginLoss::enhanced(s, m).unwrap(),
        );
        assert!(
            (loss.unwrap().item() - 2f64.ln()).abs() < 1e-12,
            "c_j = {c_j}"
        );
    }
    // a sample can sit on the boundary only while cos_y ≤ 1, i.e. cos_j ≤ 0.108
    let limit = (1.0 - m * (1.0 + big_m)) / big_m;
    assert!((limit - 0.108).abs() < 5e-4, "{limit}");
}

#[test]
fn enhanced_target_slope_is_s_over_m_and_others_s() {
    // ∂L/∂c_y = (p_y − 1)·s/M and ∂L/∂c_j = p_j·s, with p the softmax of the logits
    let (s, m) = (30.0f64, 0.35f64);
    let big_m = m.exp();
    let c = [0.5, 0.1, -0.2];
    let z = [s * (c[0] - m) / big_m, s * (c[1] + m), s * (c[2] + m)];
    let total: f64 = z.iter().map(|v| v.exp()).sum();
    let p: Vec<f64> = z.iter().map(|v| v.exp() / total).collect();
    let g = Graph::<f64>::new();
    let x = g.leaf(Tensor::from_vec(c.to_vec(), &[1, 3]).unwrap());
    let labels = Labels::new(vec![0], 3).unwrap();
    let grads = margin_cross_entropy(x, &labels, &MarginLoss::enhanced(s, m).unwrap())
        .unwrap()
        .backward();
    let d = grads.wrt(x).unwrap().data().to_vec();
    assert!((d[0] - (p[0] - 1.0) * s / big_m).abs() < 1e-12);
    assert!((d[1] - p[1] * s).abs() < 1e-12);
    assert!((d[2] - p[2] * s).abs() < 1e-12);
}
