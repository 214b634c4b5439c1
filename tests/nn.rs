//! Layers and models: values, gradients (gradcheck in f64), names, modes, initialisation.

mod common;
use margrad::loss::MarginLoss;
use margrad::nn::{
    Activation, BatchNorm1d, BatchNorm1dConfig, Dropout, Forward, HeadConfig, Init, Linear,
    LinearConfig, MlpConfig, Model, ModelConfig, Module, Sequential, SequentialConfig,
};
use margrad::{Error, Graph, Labels, ParamId, Params, Tensor, gradcheck, seeded_rng};

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
    // the same dropout written straight into a configuration: refused by its builder
    let stored = SequentialConfig::new().with(Dropout { p: 1.0 }.spec());
    assert!(matches!(
        Sequential::new(&stored, &mut params, "a", &mut rng),
        Err(Error::InvalidSetting {
            name: "dropout",
            ..
        })
    ));
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
