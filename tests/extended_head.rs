//! The head of the losses beyond the softmax family's formula: its loss is the loss op applied
//! to its cosines with what the head keeps (norms, state, bias, margins), its gradients pass
//! gradcheck in f64 with respect to the features and its own tensors, and a training pass
//! records the running state as buffer updates.

use margrad::loss::{
    AdaFace, AdaFaceNorms, ArcFallback, CurricularFace, CurricularFaceState, ElasticFace,
    ExtendedLoss, MagFace, MarginLoss, Reduction, SphereFace2, adaface_loss, curricularface_loss,
    elasticface_loss, magface_loss, margin_cross_entropy, max_over_subcenters, sphereface2_loss,
};
use margrad::nn::{ExtendedHead, ExtendedHeadConfig, Forward, Head};
use margrad::{Graph, Labels, Params, Tensor, gradcheck, seeded_rng};

const DIM: usize = 4;
const CLASSES: usize = 3;

/// Every extended loss, with a small scale (finite differences stay accurate) and MagFace's
/// norm range around the test features' norms (so that the gradient through the norm is on).
fn losses() -> Vec<ExtendedLoss> {
    vec![
        ExtendedLoss::AdaFace(AdaFace {
            scale: 4.0,
            ..AdaFace::default()
        }),
        ExtendedLoss::MagFace(MagFace {
            scale: 4.0,
            lower_norm: 0.5,
            upper_norm: 8.0,
            lambda_g: 2.0,
            ..MagFace::default()
        }),
        ExtendedLoss::CurricularFace(CurricularFace {
            scale: 4.0,
            ..CurricularFace::default()
        }),
        ExtendedLoss::SubcenterArcFace {
            subcenters: 2,
            loss: MarginLoss::arcface(4.0, 0.3, ArcFallback::Threshold).unwrap(),
        },
        ExtendedLoss::SphereFace2(SphereFace2 {
            scale: 4.0,
            ..SphereFace2::default()
        }),
        ExtendedLoss::ElasticFace(ElasticFace {
            scale: 4.0,
            ..ElasticFace::arc()
        }),
        ExtendedLoss::ElasticFace(ElasticFace {
            scale: 4.0,
            ..ElasticFace::cos()
        }),
    ]
}

fn build_head(loss: ExtendedLoss) -> (ExtendedHead, Params<f64>) {
    let mut params = Params::new();
    let config = ExtendedHeadConfig {
        dim: DIM,
        classes: CLASSES,
        loss,
    };
    let head = ExtendedHead::new(&mut params, "head", config, &mut seeded_rng(1)).unwrap();
    (head, params)
}

fn batch() -> (Tensor<f64>, Labels) {
    let x = Tensor::randn(&[5, DIM], 0.0, 1.5, &mut seeded_rng(2));
    (x, Labels::new(vec![0, 1, 2, 1, 0], CLASSES).unwrap())
}

#[test]
fn the_heads_loss_is_its_loss_op_on_its_cosines_with_what_it_keeps() {
    let (x, labels) = batch();
    let norms: Vec<f64> = x
        .data()
        .chunks(DIM)
        .map(|r| r.iter().map(|v| v * v).sum::<f64>().sqrt())
        .collect();
    for loss in losses() {
        let (head, params) = build_head(loss.clone());
        let g = Graph::new();
        let mut rng = seeded_rng(7);
        let mut cx = Forward::train(&g, &params, &mut rng);
        let features = g.constant(x.clone());
        let (value, scores) = head.loss_and_scores(&mut cx, features, &labels).unwrap();
        let updates: Vec<_> = cx.into_updates().into_iter().collect();
        let w = g.param(&params, head.weight()).normalize_cols(1e-12);
        let all = margrad::nn::l2_normalize(features).matmul(w);
        let cos = match loss.subcenters() {
            1 => all,
            k => max_over_subcenters(all, k).unwrap(),
        };
        assert_eq!(scores.to_tensor(), cos.to_tensor());
        let mean = Reduction::Mean;
        let norm_var = g.constant(Tensor::from_vec(norms.clone(), &[5]).unwrap());
        let expected = match &loss {
            ExtendedLoss::AdaFace(l) => {
                // the statistics blended with this batch, before it is used
                let mut stats = AdaFaceNorms::default();
                stats.update(&norms, l.momentum).unwrap();
                let stored: Vec<f64> = updates.iter().map(|(_, t)| t.data()[0]).collect();
                assert_eq!(stored, [stats.mean, stats.std]);
                adaface_loss(cos, norm_var, &labels, l, &stats, mean, None).unwrap()
            }
            ExtendedLoss::MagFace(l) => {
                magface_loss(cos, norm_var, &labels, l, mean, None).unwrap()
            }
            ExtendedLoss::CurricularFace(l) => {
                let mut state = CurricularFaceState::default();
                state.update(&cos.to_tensor(), &labels, l.momentum).unwrap();
                assert_eq!(updates.len(), 1);
                assert_eq!(updates[0].1.data()[0], state.t);
                curricularface_loss(cos, &labels, l, &state, mean, None).unwrap()
            }
            ExtendedLoss::SubcenterArcFace { loss, .. } => {
                margin_cross_entropy(cos, &labels, loss).unwrap()
            }
            ExtendedLoss::SphereFace2(l) => {
                let b = l.initial_bias(CLASSES).unwrap();
                let bias = g.constant(Tensor::from_vec(vec![b], &[1]).unwrap());
                sphereface2_loss(cos, bias, &labels, l, mean, None).unwrap()
            }
            ExtendedLoss::ElasticFace(l) => {
                // drawn from the pass's generator
                let margins = l.draw_margins(5, &mut seeded_rng(7)).unwrap();
                elasticface_loss(cos, &labels, l, &margins, mean, None).unwrap()
            }
        };
        let stateful = matches!(
            loss,
            ExtendedLoss::AdaFace(_) | ExtendedLoss::CurricularFace(_)
        );
        assert_eq!(updates.is_empty(), !stateful, "{:?}", loss.kind());
        let (a, b) = (value.item(), expected.item());
        assert!(
            (a - b).abs() <= 1e-12 * b.abs().max(1.0),
            "{:?}: {a} {b}",
            loss.kind()
        );
    }
}

#[test]
fn the_heads_gradients_pass_gradcheck_for_features_centres_and_bias() {
    let (x, labels) = batch();
    for loss in losses() {
        if let ExtendedLoss::AdaFace(_) = loss {
            continue; // its margin reads the norm as a constant: the next test
        }
        let (head, params) = build_head(loss.clone());
        let w = params.get(head.weight()).clone();
        let bias = params.find("head.bias");
        let mut inputs = vec![x.clone(), w];
        inputs.extend(bias.map(|b| params.get(b).clone()));
        gradcheck(&inputs, |g, v| {
            // the same draws at every evaluation: the margins are a function of the seed;
            // CurricularFace's t, blended from the batch's cosines in a training pass, is a
            // constant to its gradient (the paper's): an evaluation pass holds it
            let mut rng = seeded_rng(7);
            let mut cx = match loss {
                ExtendedLoss::CurricularFace(_) => Forward::eval(g, &params),
                _ => Forward::train(g, &params, &mut rng),
            };
            cx.override_param(head.weight(), v[1]);
            if let Some(b) = bias {
                cx.override_param(b, v[2]);
            }
            head.loss_and_scores(&mut cx, v[0], &labels).unwrap().0
        })
        .unwrap_or_else(|e| panic!("{:?}: {e}", loss.kind()));
    }
}

#[test]
fn adafaces_gradient_does_not_flow_through_the_norm_and_magfaces_does() {
    let (x, labels) = batch();
    // where h = 0 the margin does not depend on the norm: AdaFace is then a function of the
    // direction alone, and gradcheck holds
    let (head, params) = build_head(ExtendedLoss::AdaFace(AdaFace {
        scale: 4.0,
        h: 0.0,
        ..AdaFace::default()
    }));
    gradcheck(std::slice::from_ref(&x), |g, v| {
        let mut rng = seeded_rng(7);
        let mut cx = Forward::train(g, &params, &mut rng);
        head.loss_and_scores(&mut cx, v[0], &labels).unwrap().0
    })
    .unwrap();
    // the gradient is orthogonal to each feature (a function of x/‖x‖ has no radial part) for
    // AdaFace with its h, and not for MagFace, whose margin and regulariser read the norm
    for (loss, radial) in [(losses()[0].clone(), false), (losses()[1].clone(), true)] {
        let (head, params) = build_head(loss.clone());
        let g = Graph::new();
        let mut rng = seeded_rng(7);
        let mut cx = Forward::train(&g, &params, &mut rng);
        let features = g.leaf(x.clone());
        let value = head.loss_and_scores(&mut cx, features, &labels).unwrap().0;
        let grad = value.backward().wrt(features).unwrap().clone();
        let largest = x
            .data()
            .chunks(DIM)
            .zip(grad.data().chunks(DIM))
            .map(|(x, d)| x.iter().zip(d).map(|(a, b)| a * b).sum::<f64>().abs())
            .fold(0.0, f64::max);
        assert_eq!(largest > 1e-6, radial, "{:?}: {largest}", loss.kind());
    }
}

#[test]
fn an_evaluation_pass_leaves_the_state_and_uses_the_mean_margin() {
    let (x, labels) = batch();
    for loss in losses() {
        let (head, params) = build_head(loss.clone());
        let g = Graph::new();
        let mut cx = Forward::eval(&g, &params);
        let (value, _) = head
            .loss_and_scores(&mut cx, g.constant(x.clone()), &labels)
            .unwrap();
        assert!(value.item().is_finite());
        assert!(cx.into_updates().is_empty(), "{:?}", loss.kind());
    }
}

#[test]
fn a_batch_of_one_sample_trains_adaface_and_leaves_its_statistics() {
    // the last batch of an epoch can hold one sample, whose norms have no standard deviation
    let (head, params) = build_head(losses()[0].clone());
    let x = Tensor::randn(&[1, DIM], 0.0, 1.5, &mut seeded_rng(3));
    let labels = Labels::new(vec![2], CLASSES).unwrap();
    let g = Graph::new();
    let mut rng = seeded_rng(7);
    let mut cx = Forward::train(&g, &params, &mut rng);
    let (value, _) = head
        .loss_and_scores(&mut cx, g.constant(x), &labels)
        .unwrap();
    assert!(value.item().is_finite());
    assert!(cx.into_updates().is_empty());
}
