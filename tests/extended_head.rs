//! The head of the losses beyond the softmax family's formula: its loss is the loss op applied
//! to its cosines with what the head keeps (norms, state, bias, margins), its gradients pass
//! gradcheck in f64 with respect to the features and its own tensors, and a training pass
//! records the running state as buffer updates.

mod common;

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

// ---- rebuilt from a checkpoint ----

/// A model whose head is `loss`'s [`ExtendedHead`] over a two-layer MLP, with its running state
/// moved off its starting values (so that a reload that drew fresh ones would show).
fn model_with(loss: ExtendedLoss) -> (margrad::nn::Model<f32>, Params<f32>) {
    use margrad::nn::{HeadConfig, MlpConfig, Model, ModelConfig};
    let config = ModelConfig {
        embedder: MlpConfig::new(&[6, 8, DIM]).sequential().unwrap(),
        head: HeadConfig::Extended {
            classes: CLASSES,
            loss,
        },
    };
    let mut params = Params::new();
    let model = Model::new(config, &mut params, &mut seeded_rng(3)).unwrap();
    for id in model.head().buffers() {
        params.get_mut(id).data_mut()[0] += 0.25;
    }
    (model, params)
}

/// A path `name` in a scratch folder of its own, removed when the returned guard drops.
fn temp(name: &str) -> (common::Scratch, std::path::PathBuf) {
    common::scratch_path("extended", name)
}

#[test]
fn the_standard_registry_builds_an_extended_head_from_its_spec() {
    use margrad::nn::{LayerRegistry, Module};
    let registry = LayerRegistry::<f64>::standard();
    for loss in losses() {
        let (head, params) = build_head(loss);
        let spec = Module::<f64>::spec(&head);
        let mut again = Params::new();
        let built = registry
            .build(&spec, &mut again, "head", &mut seeded_rng(1))
            .unwrap_or_else(|e| panic!("{}: {e}", head.config().loss.kind().name()));
        assert_eq!(built.spec(), spec);
        assert_eq!(
            (built.parameters(), built.buffers()),
            (
                Module::<f64>::parameters(&head),
                Module::<f64>::buffers(&head)
            )
        );
        let (x, _) = batch();
        assert_eq!(built.infer(&again, &x), head.infer(&params, &x));
    }
}

#[test]
fn a_checkpoints_extended_head_is_rebuilt_by_the_registry_it_is_loaded_with() {
    use margrad::checkpoint;
    use margrad::nn::{ExtendedHead, ExtendedHeadConfig, LayerRegistry};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let (model, params) = model_with(losses().remove(0));
    let (_scratch, path) = temp("registry.margrad");
    checkpoint::save(&path, &model, &params, None).unwrap();
    // the standard builder of the kind, counting its calls
    let calls = Arc::new(AtomicUsize::new(0));
    let mut registry = LayerRegistry::<f32>::standard();
    let counter = Arc::clone(&calls);
    registry.register_head(ExtendedHead::KIND, move |config: ExtendedHeadConfig, cx| {
        counter.fetch_add(1, Ordering::SeqCst);
        ExtendedHead::new(cx.params, cx.prefix, config, cx.source)
    });
    let loaded = checkpoint::load_with(&path, &registry).unwrap();
    assert_eq!(loaded.model, model);
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the model's head");
    checkpoint::load_head_with(&path, &registry).unwrap();
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "the model's head, then the head on its own"
    );
    // a registry without the kind cannot rebuild it: the error names the head and the kind
    let mut without = LayerRegistry::<f32>::empty();
    without.register(
        margrad::nn::Linear::KIND,
        |c: margrad::nn::LinearConfig, cx| {
            Ok(margrad::nn::Linear::new(cx.params, cx.prefix, c, cx.source))
        },
    );
    without.register(
        margrad::nn::Activation::Relu.kind(),
        |_: serde_json::Value, _| Ok(margrad::nn::Activation::Relu),
    );
    without.register("sequential", |c: margrad::nn::SequentialConfig, cx| {
        margrad::nn::Sequential::new_with(&c, cx.registry, cx.params, cx.prefix, cx.source)
    });
    let err = checkpoint::load_with(&path, &without)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("unknown layer kind \"extended_head\" at head"),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_saved_extended_head_loads_on_its_own_and_scores_as_the_model_does() {
    use margrad::checkpoint;
    use margrad::nn::Module;
    for loss in losses() {
        let name = loss.kind().name();
        let k = loss.subcenters();
        let (model, params) = model_with(loss);
        let (_scratch, path) = temp(&format!("{name}.margrad"));
        checkpoint::save(&path, &model, &params, None).unwrap();
        let head = checkpoint::load_head::<f32>(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        // every tensor of the head, and only those, with the model's values
        let names: Vec<&str> = head
            .params()
            .ids()
            .map(|id| head.params().name(id))
            .collect();
        let own: Vec<&str> = params
            .ids()
            .map(|id| params.name(id))
            .filter(|n| n.starts_with("head."))
            .collect();
        assert_eq!(names, own, "{name}");
        for id in head.params().ids() {
            let original = params.get(params.find(head.params().name(id)).unwrap());
            assert_eq!(head.params().get(id), original, "{name}");
        }
        assert_eq!(
            head.centres().unwrap().shape(),
            [DIM, CLASSES * k],
            "{name}"
        );
        // its scores and predictions are the model's, bit for bit
        let x = Tensor::randn(&[7, 6], 0.0, 1.0, &mut seeded_rng(4));
        let features = model.features(&params, &x);
        let g = Graph::inference();
        let mut cx = Forward::eval(&g, &params);
        let logits = model.logits(&mut cx, g.constant(x.clone())).to_tensor();
        let bits = |t: &Tensor<f32>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&head.scores(&features)), bits(&logits), "{name}");
        assert_eq!(
            head.predict(&features),
            model.predict(&params, &x),
            "{name}"
        );
        assert_eq!(
            Module::<f32>::spec(head.head()),
            model.head().spec(),
            "{name}"
        );
    }
}
