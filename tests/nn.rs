//! Layers and models: values, gradients (gradcheck in f64), names, modes, initialisation.

mod common;
use margrad::checkpoint::{self, CheckpointError};
use margrad::loss::MarginLoss;
use margrad::nn;
use margrad::nn::{
    Activation, BatchNorm1d, BatchNorm1dConfig, Dropout, Fill, Forward, HeadConfig, Init,
    LayerRegistry, LayerSpec, Linear, LinearConfig, MlpConfig, Model, ModelConfig, Module,
    Sequential, SequentialConfig,
};
use margrad::{Element, Error, Graph, Labels, ParamId, Params, Tensor, Var, gradcheck, seeded_rng};
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicUsize, Ordering};

#[test]
fn linear_is_x_w_transposed_plus_b_with_pytorch_layout() {
    let mut params = Params::<f64>::new();
    let lin = Linear::new(
        &mut params,
        "fc",
        LinearConfig::new(3, 2).with_init(Init::XavierNormal),
        &mut seeded_rng(0),
    );
    assert_eq!(params.get(lin.weight).shape(), &[2, 3]); // [out, in], as torch.nn.Linear
    params.set(
        lin.weight,
        Tensor::from_vec(vec![1.0, 0.0, 2.0, 0.0, -1.0, 1.0], &[2, 3]).unwrap(),
    );
    params.set(
        lin.bias.unwrap(),
        Tensor::from_vec(vec![0.5, -0.5], &[2]).unwrap(),
    );
    let g = Graph::new();
    let mut cx = Forward::eval(&g, &params);
    let x = g.constant(Tensor::from_vec(vec![1.0, 2.0, 3.0], &[1, 3]).unwrap());
    assert_eq!(lin.forward(&mut cx, x).value().data(), &[7.5, 0.5]);
}

#[test]
fn linear_gradients_pass_gradcheck() {
    let mut params = Params::<f64>::new();
    let lin = Linear::new(
        &mut params,
        "fc",
        LinearConfig::new(5, 4),
        &mut seeded_rng(1),
    );
    let w = params.get(lin.weight).clone();
    let b = params.get(lin.bias.unwrap()).clone();
    let x = Tensor::randn(&[3, 5], 0.0, 1.0, &mut seeded_rng(2));
    // the layer's forward on leaves: the same ops, checked for x, W and b
    gradcheck(&[x, w, b], |_, v| v[0].matmul_nt(v[1]) + v[2]).unwrap();
}

#[test]
fn batchnorm_training_pass_passes_gradcheck() {
    let mut params = Params::<f64>::new();
    let bn = BatchNorm1d::new(
        &mut params,
        "bn",
        BatchNorm1dConfig::new(4),
        &mut seeded_rng(0),
    );
    params.set(
        bn.weight,
        Tensor::from_vec(vec![1.5, -0.5, 2.0, 1.0], &[4]).unwrap(),
    );
    params.set(
        bn.bias,
        Tensor::from_vec(vec![0.1, 0.2, -0.3, 0.0], &[4]).unwrap(),
    );
    for batch in [2, 5, 64] {
        let x = Tensor::randn(&[batch, 4], 1.0, 2.0, &mut seeded_rng(batch as u64));
        gradcheck(&[x], |g, v| {
            let mut rng = seeded_rng(0);
            let mut cx = Forward::train(g, &params, &mut rng);
            bn.forward(&mut cx, v[0])
        })
        .unwrap_or_else(|e| panic!("batch {batch}: {e}"));
    }
}

#[test]
fn batchnorm_parameter_gradients_are_the_sums_they_should_be() {
    // ∂L/∂β = Σ_b g, ∂L/∂γ = Σ_b g ⊙ x̂
    let mut params = Params::<f64>::new();
    let bn = BatchNorm1d::new(
        &mut params,
        "bn",
        BatchNorm1dConfig::new(3),
        &mut seeded_rng(0),
    );
    let x = Tensor::randn(&[6, 3], 0.0, 1.0, &mut seeded_rng(3));
    let seed = Tensor::randn(&[6, 3], 0.0, 1.0, &mut seeded_rng(4));
    let g = Graph::new();
    let mut rng = seeded_rng(0);
    let mut cx = Forward::train(&g, &params, &mut rng);
    let y = bn.forward(&mut cx, g.constant(x.clone()));
    let x_hat = y.to_tensor(); // γ = 1, β = 0: y is x̂
    let grads = y.backward_with(seed.clone());
    for c in 0..3 {
        let column =
            |t: &Tensor<f64>| -> Vec<f64> { (0..6).map(|r| t.data()[r * 3 + c]).collect() };
        let d_beta: f64 = column(&seed).iter().sum();
        let d_gamma: f64 = column(&seed)
            .iter()
            .zip(column(&x_hat))
            .map(|(g, x)| g * x)
            .sum();
        assert!((grads.param(bn.bias).unwrap().data()[c] - d_beta).abs() < 1e-12);
        assert!((grads.param(bn.weight).unwrap().data()[c] - d_gamma).abs() < 1e-12);
    }
}

#[test]
fn batchnorm_running_statistics_and_eval_mode() {
    let mut params = Params::<f64>::new();
    let bn = BatchNorm1d::new(
        &mut params,
        "bn",
        BatchNorm1dConfig::new(2),
        &mut seeded_rng(0),
    );
    let x = Tensor::from_vec(vec![1.0, 10.0, 3.0, 20.0, 5.0, 30.0], &[3, 2]).unwrap();
    let updates = {
        let g = Graph::new();
        let mut rng = seeded_rng(0);
        let mut cx = Forward::train(&g, &params, &mut rng);
        let y = bn.forward(&mut cx, g.constant(x.clone()));
        // batch statistics: each column has mean 0 and (biased) variance 1 after normalising
        let y = y.to_tensor();
        assert!((y.data()[0] + y.data()[4]).abs() < 1e-12);
        cx.into_updates()
    };
    params.apply(updates);
    // running ← 0.9·running + 0.1·batch, with the unbiased variance (4 and 100 here)
    let rm = params.get(bn.running_mean).data().to_vec();
    let rv = params.get(bn.running_var).data().to_vec();
    assert!(
        (rm[0] - 0.3).abs() < 1e-12 && (rm[1] - 2.0).abs() < 1e-12,
        "{rm:?}"
    );
    assert!(
        (rv[0] - (0.9 + 0.4)).abs() < 1e-12 && (rv[1] - (0.9 + 10.0)).abs() < 1e-12,
        "{rv:?}"
    );
    // evaluation uses the running statistics
    let g = Graph::new();
    let mut cx = Forward::eval(&g, &params);
    let y = bn.forward(&mut cx, g.constant(x)).to_tensor();
    let expected = (1.0 - 0.3) / (1.3f64 + 1e-5).sqrt();
    assert!((y.data()[0] - expected).abs() < 1e-12);
    assert!(cx.into_updates().is_empty());
}

#[test]
fn dropout_is_seeded_scaled_and_off_in_eval() {
    let x = Tensor::<f64>::ones(&[100, 100]);
    let run = |seed: u64| {
        let params = Params::new();
        let g = Graph::new();
        let mut rng = seeded_rng(seed);
        let mut cx = Forward::train(&g, &params, &mut rng);
        Dropout { p: 0.3 }
            .forward(&mut cx, g.constant(x.clone()))
            .to_tensor()
    };
    let (a, b) = (run(5), run(5));
    assert_eq!(a, b);
    assert_ne!(a, run(6));
    let zeros = a.data().iter().filter(|&&v| v == 0.0).count();
    assert!((2800..3200).contains(&zeros), "{zeros} of 10000 dropped");
    assert!(
        a.data()
            .iter()
            .all(|&v| v == 0.0 || (v - 1.0 / 0.7).abs() < 1e-12)
    );
    let params = Params::new();
    let g = Graph::new();
    let mut cx = Forward::eval(&g, &params);
    let y = Dropout { p: 0.3 }
        .forward(&mut cx, g.constant(x.clone()))
        .to_tensor();
    assert_eq!(y, x);
}

#[test]
fn initialisations_have_their_variance() {
    let mut params = Params::<f64>::new();
    let mut rng = seeded_rng(7);
    let k = Linear::new(
        &mut params,
        "k",
        LinearConfig::new(400, 300).without_bias(),
        &mut rng,
    );
    let x = Linear::new(
        &mut params,
        "x",
        LinearConfig::new(400, 300)
            .without_bias()
            .with_init(Init::XavierNormal),
        &mut rng,
    );
    let var = |t: &Tensor<f64>| t.data().iter().map(|v| v * v).sum::<f64>() / t.numel() as f64;
    let (vk, vx) = (var(params.get(k.weight)), var(params.get(x.weight)));
    assert!((vk / (2.0 / 400.0) - 1.0).abs() < 0.02, "{vk}");
    assert!((vx / (2.0 / 700.0) - 1.0).abs() < 0.02, "{vx}");
    assert!(k.bias.is_none());
}

#[test]
fn mlp_parameters_are_named_as_nn_sequential_names_them() {
    let mut params = Params::<f32>::new();
    let config = MlpConfig {
        batch_norm: true,
        dropout: 0.1,
        ..MlpConfig::new(&[4, 8, 6, 3])
    };
    let seq = Sequential::new(
        &config.sequential().unwrap(),
        &mut params,
        "embed",
        &mut seeded_rng(0),
    )
    .unwrap();
    let names: Vec<&str> = params.ids().map(|id| params.name(id)).collect();
    // Linear(0) BatchNorm(1) ReLU(2) Dropout(3) Linear(4) BatchNorm(5) ReLU(6) Dropout(7) Linear(8)
    assert_eq!(
        names,
        [
            "embed.0.weight",
            "embed.0.bias",
            "embed.1.weight",
            "embed.1.bias",
            "embed.1.running_mean",
            "embed.1.running_var",
            "embed.4.weight",
            "embed.4.bias",
            "embed.5.weight",
            "embed.5.bias",
            "embed.5.running_mean",
            "embed.5.running_var",
            "embed.8.weight",
            "embed.8.bias",
        ]
    );
    // trainable only: 4·8+8 + 2·8 + 8·6+6 + 2·6 + 6·3+3
    assert_eq!(params.count(), 40 + 16 + 54 + 12 + 21);
    // each layer owns the tensors under its index, parameters and buffers apart
    let owned = |i: usize| {
        let layer = &seq.layers()[i];
        let names = |ids: Vec<ParamId>| -> Vec<String> {
            ids.into_iter()
                .map(|id| params.name(id).to_string())
                .collect()
        };
        (
            layer.spec().kind,
            names(layer.parameters()),
            names(layer.buffers()),
        )
    };
    assert_eq!(
        owned(5),
        (
            "batch_norm1d".to_string(),
            vec!["embed.5.weight".to_string(), "embed.5.bias".to_string()],
            vec![
                "embed.5.running_mean".to_string(),
                "embed.5.running_var".to_string()
            ],
        )
    );
    assert_eq!(owned(6), ("relu".to_string(), vec![], vec![]));
    assert_eq!(owned(7), ("dropout".to_string(), vec![], vec![]));
    assert_eq!(owned(8).1, ["embed.8.weight", "embed.8.bias"]);
    // a model names its head after the embedder
    let mut params = Params::<f32>::new();
    let model_config = ModelConfig {
        embedder: config.sequential().unwrap(),
        head: HeadConfig::Linear { classes: 5 },
    };
    Model::new(model_config, &mut params, &mut seeded_rng(0)).unwrap();
    let names: Vec<&str> = params.ids().map(|id| params.name(id)).collect();
    assert_eq!(names[..2], ["embed.0.weight", "embed.0.bias"]);
    assert_eq!(names[names.len() - 2..], ["head.weight", "head.bias"]);
    assert_eq!(names.len(), 16);
}

#[test]
fn mlp_with_every_option_passes_gradcheck() {
    let mut params = Params::<f64>::new();
    let config = MlpConfig {
        batch_norm: true,
        activation: Activation::Tanh,
        ..MlpConfig::new(&[3, 5, 2])
    };
    let mlp = Sequential::new(
        &config.sequential().unwrap(),
        &mut params,
        "embed",
        &mut seeded_rng(3),
    )
    .unwrap();
    let x = Tensor::randn(&[6, 3], 0.0, 1.0, &mut seeded_rng(4));
    gradcheck(&[x], |g, v| {
        let mut rng = seeded_rng(0);
        let mut cx = Forward::train(g, &params, &mut rng);
        mlp.forward(&mut cx, v[0])
    })
    .unwrap();
}

#[test]
fn mlp_with_relu_runs_the_fused_bias_relu_and_passes_gradcheck() {
    // Linear → ReLU pairs run as x Wᵀ then add_relu(b): same values as the separate layers
    let mut params = Params::<f64>::new();
    let mlp = Sequential::new(
        &MlpConfig::new(&[4, 6, 5, 2]).sequential().unwrap(),
        &mut params,
        "embed",
        &mut seeded_rng(5),
    )
    .unwrap();
    let x = Tensor::randn(&[7, 4], 0.0, 1.0, &mut seeded_rng(6));
    gradcheck(std::slice::from_ref(&x), |g, v| {
        let mut rng = seeded_rng(0);
        let mut cx = Forward::train(g, &params, &mut rng);
        mlp.forward(&mut cx, v[0])
    })
    .unwrap();
    let g = Graph::new();
    let mut cx = Forward::eval(&g, &params);
    let fused = mlp.forward(&mut cx, g.constant(x.clone())).to_tensor();
    let nodes = g.len();
    {
        // one add_relu node for each Linear → ReLU pair, not an add and a relu
        let g = Graph::new();
        let p = |name: &str| g.param(&params, params.find(name).unwrap());
        let h = g.constant(x.clone()).matmul_nt(p("embed.0.weight"));
        let h = h.add_relu(p("embed.0.bias"));
        let h = h.matmul_nt(p("embed.2.weight")).add_relu(p("embed.2.bias"));
        let _ = h.matmul_nt(p("embed.4.weight")) + p("embed.4.bias");
        assert_eq!(nodes, g.len());
    }
    let g = Graph::new();
    let p = |name: &str| g.param(&params, params.find(name).unwrap());
    let h = (g.constant(x).matmul_nt(p("embed.0.weight")) + p("embed.0.bias")).relu();
    let h = (h.matmul_nt(p("embed.2.weight")) + p("embed.2.bias")).relu();
    let separate = (h.matmul_nt(p("embed.4.weight")) + p("embed.4.bias")).to_tensor();
    assert_eq!(fused, separate);
}

#[test]
fn model_chains_embedder_and_head_for_both_head_kinds() {
    let embedder = MlpConfig::new(&[6, 16, 4]);
    let heads = [
        HeadConfig::Cosine {
            classes: 3,
            loss: MarginLoss::am(10.0, 0.2).unwrap(),
        },
        HeadConfig::Linear { classes: 3 },
    ];
    for head in heads {
        let mut params = Params::<f32>::new();
        let config = ModelConfig {
            embedder: embedder.sequential().unwrap(),
            head,
        };
        let model = Model::new(config.clone(), &mut params, &mut seeded_rng(0)).unwrap();
        assert_eq!(model.config(), &config);
        let x = Tensor::randn(&[5, 6], 0.0, 1.0, &mut seeded_rng(1));
        let labels = Labels::new(vec![0, 1, 2, 0, 1], 3).unwrap();
        let g = Graph::new();
        let mut rng = seeded_rng(2);
        let mut cx = Forward::train(&g, &params, &mut rng);
        let loss = model.loss(&mut cx, g.constant(x.clone()), &labels).unwrap();
        let grads = loss.backward();
        assert_eq!(grads.params().count(), params.len());
        assert_eq!(model.predict(&params, &x).len(), 5);
        let e = model.embeddings(&params, &x);
        assert_eq!(e.shape(), &[5, 4]);
        for row in e.data().chunks(4) {
            assert!((row.iter().map(|v| v * v).sum::<f32>() - 1.0).abs() < 1e-5);
        }
    }
}

#[test]
fn invalid_configurations_are_errors() {
    let mut params = Params::<f32>::new();
    let mut rng = seeded_rng(0);
    let bad_dropout = MlpConfig {
        dropout: 1.0,
        ..MlpConfig::new(&[2, 2])
    };
    assert!(matches!(
        bad_dropout.sequential(),
        Err(Error::InvalidSetting {
            name: "dropout",
            ..
        })
    ));
    // the same dropout written straight into a configuration: refused by its builder, naming
    // the layer
    let stored = SequentialConfig::new().with(Dropout { p: 1.0 }.spec());
    assert_eq!(
        Sequential::new(&stored, &mut params, "a", &mut rng)
            .unwrap_err()
            .to_string(),
        "invalid settings for layer a.0 (\"dropout\"): invalid dropout = 1: must be in [0, 1)"
    );
    assert!(matches!(
        MlpConfig::new(&[2]).sequential(),
        Err(Error::InvalidSetting {
            name: "MLP size count",
            ..
        })
    ));
    let config = ModelConfig {
        embedder: MlpConfig::new(&[2, 2]).sequential().unwrap(),
        head: HeadConfig::Linear { classes: 0 },
    };
    assert!(matches!(
        Model::new(config, &mut Params::<f32>::new(), &mut rng),
        Err(Error::InvalidSetting {
            name: "classes",
            ..
        })
    ));
}

// ---- the contract: a layer kind of our own, outside the crate ----

/// `y = x ⊙ a`: one learned scale per feature, a kind the crate does not know.
#[derive(Debug)]
struct Scale {
    a: ParamId,
    config: ScaleConfig,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct ScaleConfig {
    features: usize,
}

impl<F: Element> Module<F> for Scale {
    fn forward<'g>(&self, cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        x * cx.param(self.a)
    }

    fn spec(&self) -> LayerSpec {
        LayerSpec::new("scale", &self.config)
    }

    fn parameters(&self) -> Vec<ParamId> {
        vec![self.a]
    }

    fn output_shape(&self, input: &[usize]) -> Result<Vec<usize>, String> {
        let fits = input == [self.config.features];
        fits.then(|| input.to_vec())
            .ok_or_else(|| format!("{input:?} is not [{}]", self.config.features))
    }
}

/// The crate's kinds and `scale`.
fn with_scale<F: Element>() -> LayerRegistry<F> {
    let mut registry = LayerRegistry::standard();
    registry.register("scale", |config: ScaleConfig, cx| {
        let a = cx.param("weight", &[config.features], Fill::Ones);
        Ok(Scale { a, config })
    });
    registry
}

/// Linear(0) BatchNorm(1) Scale(2) ReLU(3) Linear(4): the custom layer absorbs the ReLU through
/// the default `forward_relu`.
fn embedder_with_scale() -> SequentialConfig {
    SequentialConfig::new()
        .with(LinearConfig::new(4, 8).spec())
        .with(BatchNorm1dConfig::new(8).spec())
        .with(LayerSpec::new("scale", &ScaleConfig { features: 8 }))
        .with(Activation::Relu.spec())
        .with(LinearConfig::new(8, 3).spec())
}

/// 24 samples of 3 classes, each class pushed along its own axis.
fn toy_batch() -> (Tensor<f32>, Labels) {
    let labels: Vec<usize> = (0..24).map(|i| i % 3).collect();
    let noise = Tensor::<f32>::randn(&[24, 4], 0.0, 0.5, &mut seeded_rng(7));
    let x = Tensor::from_fn(&[24, 4], |k| {
        let shift = if k % 4 == labels[k / 4] { 2.0 } else { 0.0 };
        noise.data()[k] + shift
    });
    (x, Labels::new(labels, 3).unwrap())
}

fn bits<F: Element>(t: &Tensor<F>) -> Vec<u64> {
    t.data().iter().map(|v| v.to_f64().to_bits()).collect()
}

#[test]
fn a_layer_kind_of_our_own_trains_saves_and_reloads() {
    let registry = with_scale::<f32>();
    let config = ModelConfig {
        embedder: embedder_with_scale(),
        head: HeadConfig::Cosine {
            classes: 3,
            loss: MarginLoss::am(10.0, 0.2).unwrap(),
        },
    };
    let mut params = Params::<f32>::new();
    let model = Model::new_with(config, &registry, &mut params, &mut seeded_rng(0)).unwrap();
    let scale = params
        .find("embed.2.weight")
        .expect("the scale is named by its index");
    assert!(params.is_trainable(scale));
    assert_eq!(model.embedder().layers()[2].parameters(), [scale]);
    assert_eq!(model.config().embedder.layers[2].kind, "scale");

    // a few steps of plain SGD
    let (x, labels) = toy_batch();
    let mut rng = seeded_rng(1);
    let mut losses = Vec::new();
    for step in 0..30 {
        let (grads, updates, loss) = {
            let g = Graph::new();
            let mut cx = Forward::train(&g, &params, &mut rng);
            let loss = model.loss(&mut cx, g.constant(x.clone()), &labels).unwrap();
            let value = loss.item();
            (loss.backward(), cx.into_updates(), value)
        };
        if step == 0 {
            let grad = grads
                .param(scale)
                .expect("the custom layer's parameter receives a gradient");
            assert!(grad.data().iter().any(|&v| v != 0.0), "{grad:?}");
        }
        assert_eq!(updates.len(), 2, "BatchNorm's running statistics");
        params.apply(updates);
        for (id, grad) in grads.params() {
            let p = params.get_mut(id);
            p.data_mut()
                .iter_mut()
                .zip(grad.data())
                .for_each(|(p, g)| *p -= 0.1 * g);
        }
        losses.push(loss);
    }
    assert!(
        losses[29] < 0.5 * losses[0],
        "the loss does not go down: {losses:?}"
    );
    assert!(params.get(scale).data().iter().any(|&a| a != 1.0));

    // save; reload through the registry that knows the kind
    let (_scratch, path) = common::scratch_path("nn", "scale.bin");
    checkpoint::save(&path, &model, &params, None).unwrap();
    let loaded = checkpoint::load_with(&path, &registry).unwrap();
    assert_eq!(loaded.model, model);
    assert_eq!(loaded.params.len(), params.len());
    for (a, b) in loaded.params.ids().zip(params.ids()) {
        assert_eq!(loaded.params.name(a), params.name(b));
        assert_eq!(loaded.params.is_trainable(a), params.is_trainable(b));
        assert_eq!(loaded.params.get(a).shape(), params.get(b).shape());
        assert_eq!(bits(loaded.params.get(a)), bits(params.get(b)));
    }
    let logits = |model: &Model, params: &Params<f32>| {
        let g = Graph::inference();
        let mut cx = Forward::eval(&g, params);
        model.logits(&mut cx, g.constant(x.clone())).to_tensor()
    };
    assert_eq!(
        bits(&logits(&loaded.model, &loaded.params)),
        bits(&logits(&model, &params))
    );
    assert_eq!(
        bits(&loaded.model.embeddings(&loaded.params, &x)),
        bits(&model.embeddings(&params, &x))
    );
    let head = checkpoint::load_head_with(&path, &registry).unwrap();
    let embedded = model.embedder().infer(&params, &x);
    assert_eq!(head.predict(&embedded), model.predict(&params, &x));

    // the standard registry does not know the kind: a clear error, naming it and the layer
    let err = checkpoint::load::<f32>(&path).unwrap_err();
    match &err {
        CheckpointError::Invalid(Error::UnknownLayerKind { layer, kind, known }) => {
            assert_eq!((layer.as_str(), kind.as_str()), ("embed.2", "scale"));
            assert!(known.iter().any(|k| k == "linear") && !known.iter().any(|k| k == "scale"));
        }
        other => panic!("expected an unknown layer kind, got {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("unknown layer kind \"scale\" at embed.2"),
        "{err}"
    );
    assert!(matches!(
        checkpoint::load_head::<f32>(&path),
        Err(CheckpointError::Invalid(Error::UnknownLayerKind { .. }))
    ));
}

#[test]
fn a_sequential_with_a_layer_of_our_own_passes_gradcheck_in_inputs_and_parameters() {
    let registry = with_scale::<f64>();
    let mut params = Params::<f64>::new();
    let seq = Sequential::new_with(
        &embedder_with_scale(),
        &registry,
        &mut params,
        "embed",
        &mut seeded_rng(3),
    )
    .unwrap();
    let scale = params.find("embed.2.weight").unwrap();
    params.set(scale, Tensor::randn(&[8], 1.0, 0.5, &mut seeded_rng(4)));
    // every trainable parameter becomes a leaf of the check, the scale among them
    let ids = seq.parameters();
    assert!(ids.contains(&scale));
    assert_eq!(ids.len(), 7); // W, b; γ, β; a; W, b
    let mut inputs = vec![Tensor::randn(&[6, 4], 0.0, 1.0, &mut seeded_rng(5))];
    inputs.extend(ids.iter().map(|&id| params.get(id).clone()));
    /// The Sequential on `v[0]`, its parameters taken from the leaves `v[1..]`.
    fn run<'g>(
        seq: &Sequential<f64>,
        params: &Params<f64>,
        ids: &[ParamId],
        g: &'g Graph<f64>,
        v: &[Var<'g, f64>],
    ) -> Var<'g, f64> {
        let mut rng = seeded_rng(0);
        let mut cx = Forward::train(g, params, &mut rng);
        for (&id, &value) in ids.iter().zip(&v[1..]) {
            cx.override_param(id, value);
        }
        seq.forward(&mut cx, v[0])
    }
    let report = gradcheck(&inputs, |g, v| run(&seq, &params, &ids, g, v)).unwrap();
    let elements: usize = inputs.iter().map(|t| t.numel()).sum();
    assert_eq!(report.checked, elements);
    // the check is not vacuous: the output depends on the scale's leaf
    let g = Graph::new();
    let leaves: Vec<_> = inputs.iter().map(|t| g.leaf(t.clone())).collect();
    let grads = run(&seq, &params, &ids, &g, &leaves).sum().backward();
    let position = 1 + ids.iter().position(|&id| id == scale).unwrap();
    let grad = grads
        .wrt(leaves[position])
        .expect("the scale's leaf has a gradient");
    assert!(grad.data().iter().all(|&v| v != 0.0), "{grad:?}");
}

static PLAIN: AtomicUsize = AtomicUsize::new(0);
static FUSED: AtomicUsize = AtomicUsize::new(0);

/// Counts which of its forward passes a Sequential calls.
#[derive(Debug)]
struct Probe;

impl<F: Element> Module<F> for Probe {
    fn forward<'g>(&self, _cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        PLAIN.fetch_add(1, Ordering::SeqCst);
        x
    }

    fn forward_relu<'g>(&self, _cx: &mut Forward<'g, '_, F>, x: Var<'g, F>) -> Var<'g, F> {
        FUSED.fetch_add(1, Ordering::SeqCst);
        x.relu()
    }

    fn spec(&self) -> LayerSpec {
        LayerSpec::new("probe", &serde_json::json!({}))
    }
}

#[test]
fn a_relu_is_handed_to_the_layer_before_it() {
    let mut registry = LayerRegistry::<f64>::standard();
    registry.register("probe", |_: serde_json::Value, _| Ok(Probe));
    let probe = || LayerSpec::new("probe", &serde_json::json!({}));
    // Probe(0) ReLU(1) Probe(2) LeakyReLU(3): only the plain ReLU is absorbed
    let config = SequentialConfig::new()
        .with(probe())
        .with(Activation::Relu.spec())
        .with(probe())
        .with(Activation::LeakyRelu(0.5).spec());
    let seq = Sequential::new_with(
        &config,
        &registry,
        &mut Params::new(),
        "p",
        &mut seeded_rng(0),
    )
    .unwrap();
    let x = Tensor::from_vec(vec![-2.0, 1.0, 3.0, -4.0], &[2, 2]).unwrap();
    let y = seq.infer(&Params::new(), &x);
    assert_eq!(y.data(), &[0.0, 1.0, 3.0, 0.0]);
    assert_eq!(
        (PLAIN.load(Ordering::SeqCst), FUSED.load(Ordering::SeqCst)),
        (1, 1)
    );
}

#[test]
fn the_standard_registry_knows_the_documented_kinds_and_rebuilds_each_from_its_spec() {
    let registry = LayerRegistry::<f64>::default();
    let kinds: Vec<&str> = registry.kinds().collect();
    assert_eq!(
        kinds,
        [
            "avg_pool2d",
            "basic_block",
            "batch_norm1d",
            "batch_norm2d",
            "centres_head",
            "conv1d",
            "conv2d",
            "cosine_head",
            "dropout",
            "extended_head",
            "flatten",
            "global_avg_pool",
            "identity",
            "leaky_relu",
            "linear",
            "max_pool2d",
            "prelu",
            "relu",
            "sequential",
            "sigmoid",
            "tanh",
            "unflatten"
        ]
    );
    let nested = SequentialConfig::new()
        .with(LinearConfig::new(2, 3).spec())
        .with(Activation::Relu.spec());
    let specs = [
        LinearConfig::new(3, 4)
            .without_bias()
            .with_init(Init::XavierNormal)
            .spec(),
        BatchNorm1dConfig {
            features: 4,
            eps: 1e-3,
            momentum: 0.3,
        }
        .spec(),
        Dropout { p: 0.25 }.spec(),
        Activation::Relu.spec(),
        Activation::LeakyRelu(0.01).spec(),
        Activation::Tanh.spec(),
        Activation::Sigmoid.spec(),
        Activation::Identity.spec(),
        LayerSpec::new("sequential", &nested),
        margrad::nn::CosineHeadConfig {
            dim: 4,
            classes: 3,
            loss: MarginLoss::arcface(30.0, 0.5, margrad::loss::ArcFallback::Threshold).unwrap(),
        }
        .spec(),
        LayerSpec::new(
            "centres_head",
            &margrad::nn::CosineHeadConfig {
                dim: 4,
                classes: 3,
                loss: MarginLoss::am(30.0, 0.35).unwrap(),
            },
        ),
        LayerSpec::new(
            "extended_head",
            &margrad::nn::ExtendedHeadConfig {
                dim: 4,
                classes: 3,
                loss: margrad::loss::ExtendedLoss::SubcenterArcFace {
                    subcenters: 2,
                    loss: MarginLoss::arcface(30.0, 0.5, margrad::loss::ArcFallback::Threshold)
                        .unwrap(),
                },
            },
        ),
        nn::Conv2dConfig::new(4, 6, 3)
            .stride(2)
            .padding(1)
            .groups(2)
            .spec(),
        nn::Conv1dConfig::new(2, 3, 5).spec(),
        nn::MaxPool2d(margrad::Pool2dOptions::new(3).stride(2).padding(1)).spec(),
        nn::AvgPool2d(margrad::Pool2dOptions::new(2)).spec(),
        LayerSpec::new("global_avg_pool", &serde_json::json!({})),
        LayerSpec::new("flatten", &serde_json::json!({})),
        nn::Unflatten {
            shape: vec![1, 28, 28],
        }
        .spec(),
        nn::BatchNorm2dConfig::new(8).spec(),
        nn::PReluConfig::new(8).spec(),
        nn::BasicBlockConfig::new(4, 8).stride(2).spec(),
    ];
    let mut seen = std::collections::BTreeSet::new();
    for spec in specs {
        let mut params = Params::new();
        let layer = registry
            .build(&spec, &mut params, "embed.1", &mut seeded_rng(0))
            .unwrap_or_else(|e| panic!("{}: {e}", spec.kind));
        assert_eq!(layer.spec(), spec);
        seen.insert(spec.kind.clone());
        if spec.kind == "sequential" {
            // a nested Sequential names its layers under its own index
            let names: Vec<&str> = params.ids().map(|id| params.name(id)).collect();
            assert_eq!(names, ["embed.1.0.weight", "embed.1.0.bias"]);
        }
    }
    assert_eq!(seen.len(), kinds.len(), "every kind is exercised");
}

#[test]
fn a_model_head_is_built_from_a_kind_registered_as_a_head_only() {
    let registry = LayerRegistry::<f64>::standard();
    let mut params = Params::new();
    let head = HeadConfig::Cosine {
        classes: 3,
        loss: MarginLoss::am(30.0, 0.35).unwrap(),
    };
    let spec = head.layer_spec(4).unwrap();
    assert_eq!(spec.kind, "cosine_head");
    let built = registry
        .build_head(&spec, &mut params, "head", &mut seeded_rng(0))
        .unwrap();
    assert_eq!(built.spec(), spec);
    // a layer kind is no head: the error names the layer and the kind
    let err = registry
        .build_head(
            &Activation::Relu.spec(),
            &mut params,
            "head",
            &mut seeded_rng(0),
        )
        .expect_err("relu is not a head");
    assert!(
        matches!(&err, Error::LayerSettings { layer, kind, .. } if layer == "head" && kind == "relu"),
        "{err:?}"
    );
    assert!(err.to_string().contains("not a head"), "{err}");
}

#[test]
fn a_model_configuration_is_data_in_json_and_rebuilds_the_same_model() {
    let config = ModelConfig {
        embedder: MlpConfig {
            batch_norm: true,
            dropout: 0.2,
            activation: Activation::LeakyRelu(0.1),
            ..MlpConfig::new(&[5, 7, 3])
        }
        .sequential()
        .unwrap(),
        head: HeadConfig::Linear { classes: 4 },
    };
    // as metrics.json holds it: the layers' settings as nested objects
    let json: serde_json::Value = serde_json::to_value(&config).unwrap();
    let layers = &json["embedder"]["layers"];
    assert_eq!(layers[0]["kind"], "linear");
    assert_eq!(layers[0]["config"]["outputs"], 7);
    assert_eq!(layers[2]["config"]["slope"], 0.1);
    assert_eq!(layers[3]["config"]["p"], 0.2);
    let back: ModelConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, config);
    // the same configuration builds the same model, parameter for parameter
    let mut a = Params::<f32>::new();
    let mut b = Params::<f32>::new();
    let first = Model::new(config, &mut a, &mut seeded_rng(9)).unwrap();
    let second = Model::new(back, &mut b, &mut seeded_rng(9)).unwrap();
    assert_eq!(first, second);
    assert_eq!((first.input_dim(), first.embedding_dim()), (5, 3));
    for (i, j) in a.ids().zip(b.ids()) {
        assert_eq!(a.name(i), b.name(j));
        assert_eq!(bits(a.get(i)), bits(b.get(j)));
    }
}

#[test]
fn configuration_errors_name_the_layer() {
    let build = |config: SequentialConfig| {
        let mut params = Params::<f32>::new();
        Sequential::new(&config, &mut params, "embed", &mut seeded_rng(0)).unwrap_err()
    };
    let unknown = build(
        SequentialConfig::new()
            .with(LinearConfig::new(2, 3).spec())
            .with(LayerSpec::new("swish", &serde_json::json!({}))),
    );
    assert!(
        matches!(&unknown, Error::UnknownLayerKind { layer, kind, .. }
            if layer == "embed.1" && kind == "swish"),
        "{unknown}"
    );
    let mut settings = LinearConfig::new(2, 3).spec();
    settings.config["activation"] = "relu".into();
    let err = build(SequentialConfig::new().with(settings));
    assert!(
        matches!(&err, Error::LayerSettings { layer, kind, message }
            if layer == "embed.0" && kind == "linear" && message.contains("activation")),
        "{err}"
    );
    let err = build(
        SequentialConfig::new()
            .with(LinearConfig::new(2, 3).spec())
            .with(Activation::Tanh.spec())
            .with(LinearConfig::new(4, 1).spec()),
    );
    assert_eq!(
        err.to_string(),
        "invalid settings for layer embed.2 (\"linear\"): it takes rows of 4 features, the \
         layers before it give rows of 3 features"
    );
    let err = build(SequentialConfig::new().with(LinearConfig::new(0, 3).spec()));
    assert_eq!(
        err.to_string(),
        "invalid settings for layer embed.0 (\"linear\"): invalid Linear inputs = 0: must be \
         positive"
    );
    // a model needs to know its input shape
    let config = ModelConfig {
        embedder: SequentialConfig::new().with(Activation::Tanh.spec()),
        head: HeadConfig::Linear { classes: 2 },
    };
    let err = Model::new(config, &mut Params::<f32>::new(), &mut seeded_rng(0)).unwrap_err();
    assert!(
        matches!(&err, Error::LayerSettings { layer, .. } if layer == "embed"),
        "{err}"
    );
}

// ---- stored settings out of range ----

/// The error of building `spec` as layer `embed.0` in element type `F`.
fn refused<F: Element>(spec: LayerSpec) -> String {
    let config = SequentialConfig::new().with(spec);
    match Sequential::<F>::new(&config, &mut Params::new(), "embed", &mut seeded_rng(0)) {
        Err(e) => e.to_string(),
        Ok(_) => "accepted".to_string(),
    }
}

#[test]
fn stored_settings_are_checked_in_the_element_type_naming_the_layer() {
    let spec = |kind: &str, settings: serde_json::Value| LayerSpec {
        kind: kind.to_string(),
        config: settings,
    };
    // 1e300 is a finite f64 but an infinite f32
    let steep = spec("leaky_relu", serde_json::json!({ "slope": 1e300 }));
    assert_eq!(
        refused::<f32>(steep.clone()),
        "invalid settings for layer embed.0 (\"leaky_relu\"): invalid leaky_relu slope = 1e300: \
         must be finite in the element type"
    );
    assert_eq!(refused::<f64>(steep), "accepted");
    // a negative slope is a function too (PyTorch's LeakyReLU computes it): accepted
    assert_eq!(
        refused::<f32>(spec("leaky_relu", serde_json::json!({ "slope": -1.0 }))),
        "accepted"
    );
    // JSON has no NaN: a NaN slope reaches the file as null, and does not read as a number
    assert!(
        refused::<f32>(Activation::LeakyRelu(f64::NAN).spec())
            .starts_with("invalid settings for layer embed.0 (\"leaky_relu\"): invalid type: null"),
    );
    // an eps that is zero in f32 would divide a constant feature by zero
    let tiny_eps = BatchNorm1dConfig {
        eps: 1e-50,
        ..BatchNorm1dConfig::new(3)
    };
    assert_eq!(
        refused::<f32>(tiny_eps.spec()),
        "invalid settings for layer embed.0 (\"batch_norm1d\"): invalid BatchNorm1d eps = \
         1e-50: must be positive and finite in the element type"
    );
    assert_eq!(refused::<f64>(tiny_eps.spec()), "accepted");
    for p in [1.0, 1.5, -0.1] {
        assert!(
            refused::<f32>(Dropout { p }.spec()).ends_with("must be in [0, 1)"),
            "p = {p}"
        );
    }
    // an MLP with a NaN slope is refused before any layer is built
    let nan = MlpConfig {
        activation: Activation::LeakyRelu(f64::NAN),
        ..MlpConfig::new(&[2, 3, 2])
    };
    assert_eq!(
        nan.sequential().unwrap_err().to_string(),
        "invalid leaky_relu slope = NaN: must be finite in the element type"
    );
}

#[test]
fn a_checkpoint_with_a_slope_infinite_in_its_element_type_is_refused() {
    let config = ModelConfig {
        embedder: MlpConfig {
            activation: Activation::LeakyRelu(0.25),
            ..MlpConfig::new(&[3, 4, 2])
        }
        .sequential()
        .unwrap(),
        head: HeadConfig::Linear { classes: 2 },
    };
    let mut params = Params::<f32>::new();
    let model = Model::new(config, &mut params, &mut seeded_rng(0)).unwrap();
    let mut bytes = checkpoint::encode(&model, &params, None);
    // a file from a hostile tool: the slope 0.25 patched to 1e99, the checksum made good
    let at = bytes
        .windows(12)
        .position(|w| w == br#"{"slope":0.2"#)
        .expect("the slope is stored as JSON text");
    bytes[at + 9..at + 13].copy_from_slice(b"1e99");
    let body = checkpoint::HEADER_LEN;
    let crc = crc32fast::hash(&bytes[body..]);
    bytes[40..44].copy_from_slice(&crc.to_le_bytes());
    let err = checkpoint::decode::<f32>(&bytes).unwrap_err();
    assert_eq!(
        err.to_string(),
        "checkpoint holds an invalid configuration: invalid settings for layer embed.1 \
         (\"leaky_relu\"): invalid leaky_relu slope = 1e99: must be finite in the element type"
    );
}

#[test]
#[should_panic(expected = "kind \"linear\" builds a model's head too")]
fn a_head_kind_replaced_by_a_layer_only_builder_is_refused_at_the_callers_line() {
    // were it accepted, every model whose head is a `linear` would no longer build
    LayerRegistry::<f32>::standard().register(Linear::KIND, |config: LinearConfig, cx| {
        Ok(Linear::new(cx.params, cx.prefix, config, cx.source))
    });
}

#[test]
fn a_head_kind_replaced_with_register_head_builds_models_heads() {
    let calls = std::sync::Arc::new(AtomicUsize::new(0));
    let mut registry = LayerRegistry::<f32>::standard();
    let counted = calls.clone();
    registry.register_head(Linear::KIND, move |config: LinearConfig, cx| {
        counted.fetch_add(1, Ordering::Relaxed);
        Ok(Linear::new(cx.params, cx.prefix, config, cx.source))
    });
    let config = ModelConfig {
        embedder: MlpConfig::new(&[4, 3]).sequential().unwrap(),
        head: HeadConfig::Linear { classes: 2 },
    };
    let mut params = Params::<f32>::new();
    Model::new_with(config, &registry, &mut params, &mut seeded_rng(0)).unwrap();
    // the embedder's Linear and the head's
    assert_eq!(calls.load(Ordering::Relaxed), 2);
}
