//! The layers over planes in the module contract: built from a stored configuration, named as
//! PyTorch names them, gradchecked as modules, saved and rebuilt bit for bit, and refusing
//! settings that cannot hold.

mod common;

use margrad::checkpoint::{self, Checkpoint};
use margrad::loss::MarginLoss;
use margrad::nn::{
    Activation, AvgPool2d, BasicBlock, BasicBlockConfig, BatchNorm2d, BatchNorm2dConfig,
    BlockActivation, Conv1dConfig, Conv2dConfig, Dropout, Flatten, Forward, GlobalAvgPool,
    HeadConfig, LayerRegistry, LayerSpec, LinearConfig, MaxPool2d, Model, ModelConfig, Module,
    PReluConfig, Sequential, SequentialConfig, Unflatten,
};
use margrad::optim::{Method, Optimizer};
use margrad::train::model_step;
use margrad::{
    Conv1dOptions, Element, Error, GradcheckOptions, Graph, Labels, Params, Pool2dOptions, Tensor,
    Var, gradcheck_with, seeded_rng,
};

/// A small network with every layer kind: `[N, 120] → [N, 1, 12, 10] → … → [N, 6]`.
fn embedder() -> SequentialConfig {
    SequentialConfig::new()
        .with(
            Unflatten {
                shape: vec![1, 12, 10],
            }
            .spec(),
        )
        .with(Conv2dConfig::new(1, 4, 3).padding(1).spec())
        .with(BatchNorm2dConfig::new(4).spec())
        .with(PReluConfig::new(4).spec())
        .with(MaxPool2d(Pool2dOptions::new(2)).spec()) // 6×5
        .with(
            BasicBlockConfig::new(4, 8)
                .stride(2)
                .activation(BlockActivation::Prelu)
                .spec(),
        ) // 3×3
        .with(Activation::Relu.spec())
        .with(BasicBlockConfig::new(8, 8).spec())
        .with(AvgPool2d(Pool2dOptions::new(3).stride(1).padding(1)).spec())
        .with(LayerSpec::new(GlobalAvgPool::KIND, &serde_json::json!({})))
        .with(LinearConfig::new(8, 6).spec())
}

fn model_config() -> ModelConfig {
    ModelConfig {
        embedder: embedder(),
        head: HeadConfig::Cosine {
            classes: 3,
            loss: MarginLoss::am(10.0, 0.2).unwrap(),
        },
    }
}

#[test]
fn tensors_are_named_as_pytorch_names_them() {
    let mut params = Params::<f32>::new();
    let model = Model::new(model_config(), &mut params, &mut seeded_rng(0)).unwrap();
    let names: Vec<&str> = params.ids().map(|id| params.name(id)).collect();
    let bn = |p: &str| {
        ["weight", "bias", "running_mean", "running_var"].map(move |s| format!("embed.{p}.{s}"))
    };
    let mut expected = vec!["embed.1.weight".to_string(), "embed.1.bias".to_string()];
    expected.extend(bn("2"));
    expected.push("embed.3.weight".into());
    expected.push("embed.5.conv1.weight".into());
    expected.extend(bn("5.bn1"));
    expected.push("embed.5.prelu.weight".into());
    expected.push("embed.5.conv2.weight".into());
    expected.extend(bn("5.bn2"));
    expected.push("embed.5.downsample.0.weight".into());
    expected.extend(bn("5.downsample.1"));
    expected.push("embed.7.conv1.weight".into());
    expected.extend(bn("7.bn1"));
    expected.push("embed.7.conv2.weight".into());
    expected.extend(bn("7.bn2"));
    expected.extend([
        "embed.10.weight".into(),
        "embed.10.bias".into(),
        "head.weight".into(),
    ]);
    assert_eq!(names, expected);
    let shape = |name: &str| {
        let id = params.ids().find(|&id| params.name(id) == name).unwrap();
        params.get(id).shape().to_vec()
    };
    assert_eq!(shape("embed.1.weight"), [4, 1, 3, 3]);
    assert_eq!(shape("embed.5.conv1.weight"), [8, 4, 3, 3]);
    assert_eq!(shape("embed.5.downsample.0.weight"), [8, 4, 1, 1]);
    assert_eq!(shape("embed.3.weight"), [4]);
    assert_eq!(model.input_dim(), 120);
    assert_eq!(model.embedding_dim(), 6);
}

/// A few training steps (BatchNorm's running statistics move, weights change).
fn trained<F: Element>() -> (Model<F>, Params<F>) {
    let mut params = Params::new();
    let model = Model::new(model_config(), &mut params, &mut seeded_rng(0)).unwrap();
    let mut opt = Optimizer::new(Method::adam(), &params, 1e-2, 0.0).unwrap();
    let mut rng = seeded_rng(1);
    for step in 0..3 {
        let x = Tensor::randn(&[8, 120], 0.0, 1.0, &mut seeded_rng(10 + step));
        let labels = Labels::new((0..8).map(|i| i % 3).collect(), 3).unwrap();
        model_step(&model, &mut params, &mut opt, &mut rng, x, &labels).unwrap();
    }
    (model, params)
}

#[test]
fn a_convolutional_model_round_trips_a_checkpoint_bit_for_bit() {
    fn check<F: Element>() {
        let (model, params) = trained::<F>();
        let (_scratch, path) = common::scratch_path("conv", &format!("conv-{}.bin", F::NAME));
        checkpoint::save(&path, &model, &params, None).unwrap();
        let loaded: Checkpoint<F> = checkpoint::load(&path).unwrap();
        assert_eq!(loaded.model, model);
        assert_eq!(loaded.model.config(), model.config());
        for (a, b) in params.ids().zip(loaded.params.ids()) {
            assert_eq!(params.name(a), loaded.params.name(b));
            let bits = |t: &Tensor<F>| {
                t.data()
                    .iter()
                    .map(|v| v.to_f64().to_bits())
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                bits(params.get(a)),
                bits(loaded.params.get(b)),
                "{}",
                params.name(a)
            );
        }
        // the running statistics were trained and saved
        let running = params
            .ids()
            .find(|&id| params.name(id) == "embed.2.running_mean")
            .unwrap();
        assert!(params.get(running).data().iter().any(|&v| v != F::ZERO));
        let x = Tensor::<F>::randn(&[5, 120], 0.0, 1.0, &mut seeded_rng(3));
        let embed = |m: &Model<F>, p: &Params<F>| m.embedder().infer(p, &x);
        assert_eq!(embed(&loaded.model, &loaded.params), embed(&model, &params));
        std::fs::remove_file(&path).unwrap();
    }
    check::<f32>();
    check::<f64>();
}

/// Gradchecks `layer` in a training pass with respect to its input and every parameter (each
/// taken as a leaf through `Forward::override_param`).
fn check_module(what: &str, spec: LayerSpec, x: Tensor<f64>) {
    let mut params = Params::<f64>::new();
    let layer = LayerRegistry::standard()
        .build(&spec, &mut params, "layer", &mut seeded_rng(0))
        .unwrap();
    let ids = layer.parameters();
    // parameters moved off their initial values (γ = 1, β = 0) so that every term matters
    let mut inputs = vec![x];
    for (k, &id) in ids.iter().enumerate() {
        let t = params.get(id);
        inputs.push(Tensor::from_fn(t.shape(), |i| {
            t.data()[i] + 0.1 * ((i + k) % 5) as f64 - 0.2
        }));
    }
    let options = GradcheckOptions {
        directions: (inputs[0].numel() > 400).then_some(24),
        ..GradcheckOptions::default()
    };
    let result = gradcheck_with(&inputs, &options, |g: &Graph<f64>, v: &[Var<'_, f64>]| {
        let mut rng = seeded_rng(0);
        let mut cx = Forward::train(g, &params, &mut rng);
        for (&id, &value) in ids.iter().zip(&v[1..]) {
            cx.override_param(id, value);
        }
        layer.forward(&mut cx, v[0])
    });
    if let Err(e) = result {
        panic!("{what}: {e}");
    }
}

fn input(shape: &[usize], seed: u64) -> Tensor<f64> {
    let mut t = Tensor::randn(shape, 0.0, 1.0, &mut seeded_rng(seed));
    t.data_mut()
        .iter_mut()
        .for_each(|v| *v += 0.05f64.copysign(*v));
    t
}

#[test]
fn every_layer_passes_gradcheck_as_a_module() {
    check_module(
        "conv2d",
        Conv2dConfig::new(2, 3, 3).stride(2).padding(1).spec(),
        input(&[2, 2, 5, 6], 1),
    );
    let depthwise = Conv2dConfig::new(3, 3, 3)
        .padding(1)
        .groups(3)
        .without_bias();
    check_module(
        "depthwise conv2d",
        depthwise.spec(),
        input(&[1, 3, 4, 4], 2),
    );
    let conv1d = Conv1dConfig {
        options: Conv1dOptions {
            padding: 1,
            dilation: 2,
            ..Default::default()
        },
        ..Conv1dConfig::new(2, 3, 3)
    };
    check_module("conv1d", conv1d.spec(), input(&[2, 2, 9], 3));
    check_module(
        "batch_norm2d",
        BatchNorm2dConfig::new(3).spec(),
        input(&[2, 3, 3, 4], 4),
    );
    check_module("prelu", PReluConfig::new(3).spec(), input(&[2, 3, 3, 3], 5));
    check_module(
        "prelu shared",
        PReluConfig::new(1).spec(),
        input(&[2, 3, 3, 3], 6),
    );
    check_module(
        "max_pool2d",
        MaxPool2d(Pool2dOptions::new(2)).spec(),
        input(&[1, 2, 4, 6], 7),
    );
    check_module(
        "avg_pool2d",
        AvgPool2d(Pool2dOptions::new(3).stride(2).padding(1)).spec(),
        input(&[1, 2, 5, 5], 8),
    );
    check_module(
        "flatten",
        LayerSpec::new(Flatten::KIND, &serde_json::json!({})),
        input(&[2, 2, 3, 3], 9),
    );
    let block = BasicBlockConfig::new(2, 4)
        .stride(2)
        .activation(BlockActivation::Prelu);
    check_module(
        "basic_block with downsample",
        block.spec(),
        input(&[2, 2, 6, 5], 10),
    );
    check_module(
        "basic_block identity",
        BasicBlockConfig::new(3, 3).spec(),
        input(&[2, 3, 4, 4], 11),
    );
}

#[test]
fn batch_norm2d_keeps_running_statistics_and_evaluates_with_them() {
    let mut params = Params::<f64>::new();
    let config = BatchNorm2dConfig {
        momentum: 0.25,
        ..BatchNorm2dConfig::new(2)
    };
    let bn = BatchNorm2d::new(&mut params, "bn", config, &mut seeded_rng(0));
    let x = Tensor::randn(&[3, 2, 2, 2], 1.0, 2.0, &mut seeded_rng(1));
    let g = Graph::new();
    let mut rng = seeded_rng(0);
    let mut cx = Forward::train(&g, &params, &mut rng);
    let _ = bn.forward(&mut cx, g.constant(x.clone()));
    let updates = cx.into_updates();
    drop(g);
    params.apply(updates);
    for c in 0..2 {
        let values: Vec<f64> = (0..3)
            .flat_map(|n| x.data()[(n * 2 + c) * 4..][..4].to_vec())
            .collect();
        let mean = values.iter().sum::<f64>() / 12.0;
        let unbiased = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / 11.0;
        let (rm, rv) = (
            params.get(bn.running_mean).data()[c],
            params.get(bn.running_var).data()[c],
        );
        assert!(
            (rm - 0.25 * mean).abs() < 1e-12,
            "running mean {rm}, expected {}",
            0.25 * mean
        );
        assert!((rv - (0.75 + 0.25 * unbiased)).abs() < 1e-12);
        // evaluation: (x − running mean)/√(running var + eps)
        let y = bn.infer(&params, &x);
        let i = (2 + c) * 4 + 1;
        assert!((y.data()[i] - (x.data()[i] - rm) / (rv + 1e-5).sqrt()).abs() < 1e-12);
    }
}

#[test]
fn dropout_works_on_planes() {
    let params = Params::<f32>::new();
    let x = Tensor::<f32>::ones(&[4, 3, 5, 5]);
    let g = Graph::new();
    let mut rng = seeded_rng(0);
    let mut cx = Forward::train(&g, &params, &mut rng);
    let y = Dropout { p: 0.5 }
        .forward(&mut cx, g.constant(x))
        .to_tensor();
    assert_eq!(y.shape(), &[4, 3, 5, 5]);
    let kept = y.data().iter().filter(|&&v| v == 2.0).count();
    assert!(y.data().iter().all(|&v| v == 0.0 || v == 2.0));
    assert!((100..200).contains(&kept), "{kept} of 300 kept");
}

#[test]
fn conv1d_layers_compose_in_a_sequential() {
    let config = SequentialConfig::new()
        .with(Unflatten { shape: vec![2, 10] }.spec())
        .with(Conv1dConfig::new(2, 3, 3).spec())
        .with(Activation::Tanh.spec())
        .with(LayerSpec::new(Flatten::KIND, &serde_json::json!({})))
        .with(LinearConfig::new(24, 4).spec());
    let mut params = Params::<f32>::new();
    let seq = Sequential::new(&config, &mut params, "embed", &mut seeded_rng(0)).unwrap();
    assert_eq!(seq.item_shapes(), Some((&[20][..], &[4][..])));
    let y = seq.infer(&params, &Tensor::ones(&[5, 20]));
    assert_eq!(y.shape(), &[5, 4]);
}

// ---- settings that cannot hold: an Error from a stored configuration ----

fn build(spec: LayerSpec) -> Result<(), Error> {
    let config = SequentialConfig::new().with(spec);
    Sequential::<f32>::new(&config, &mut Params::new(), "embed", &mut seeded_rng(0)).map(|_| ())
}

#[test]
fn stored_settings_that_cannot_hold_are_errors() {
    let refused = |spec: LayerSpec, needle: &str| match build(spec.clone()) {
        Err(e) => assert!(e.to_string().contains(needle), "{spec:?}: {e}"),
        Ok(()) => panic!("{spec:?} was built"),
    };
    refused(
        Conv2dConfig::new(4, 6, 3).groups(3).spec(),
        "a divisor of both channel counts",
    );
    refused(Conv2dConfig::new(4, 6, 3).stride(0).spec(), "Conv stride");
    refused(Conv2dConfig::new(0, 6, 3).spec(), "Conv in_channels");
    refused(Conv2dConfig::new(4, 6, 0).spec(), "Conv kernel");
    refused(
        Conv2dConfig::new(usize::MAX / 2, usize::MAX / 2, 3).spec(),
        "representable",
    );
    refused(
        Conv1dConfig {
            options: Conv1dOptions {
                groups: 4,
                ..Default::default()
            },
            ..Conv1dConfig::new(6, 6, 3)
        }
        .spec(),
        "a divisor",
    );
    refused(
        MaxPool2d(Pool2dOptions::new(3).padding(2)).spec(),
        "padding at most half the window",
    );
    refused(
        AvgPool2d(Pool2dOptions::new(2).stride(0)).spec(),
        "a positive stride",
    );
    refused(Unflatten { shape: vec![] }.spec(), "Unflatten rank");
    refused(
        Unflatten {
            shape: vec![1, 0, 3],
        }
        .spec(),
        "Unflatten shape",
    );
    refused(
        Unflatten {
            shape: vec![usize::MAX, 3],
        }
        .spec(),
        "Unflatten shape",
    );
    refused(
        BatchNorm2dConfig {
            eps: 0.0,
            ..BatchNorm2dConfig::new(3)
        }
        .spec(),
        "BatchNorm2d eps",
    );
    refused(PReluConfig::new(0).spec(), "PReLU parameters");
    refused(BasicBlockConfig::new(4, 8).stride(0).spec(), "Conv stride");
    let unknown = LayerSpec::new("conv2d", &serde_json::json!({"in_channels": 1}));
    refused(unknown, "invalid settings for layer embed.0 (\"conv2d\")");
}

#[test]
#[should_panic(expected = "shape mismatch in conv2d: input [2, 3, 6, 6], weight [4, 2, 3, 3]")]
fn planes_that_do_not_fit_a_layer_panic_naming_the_op_and_shapes() {
    // the layers agree with each other; the planes given are the caller's
    let config = SequentialConfig::new()
        .with(Conv2dConfig::new(2, 4, 3).spec())
        .with(BatchNorm2dConfig::new(4).spec());
    let mut params = Params::<f32>::new();
    let seq = Sequential::new(&config, &mut params, "embed", &mut seeded_rng(0)).unwrap();
    let _ = seq.infer(&params, &Tensor::ones(&[2, 3, 6, 6]));
}

#[test]
fn a_block_without_downsample_adds_its_input() {
    // with conv2's weights zero, the residual branch is bn2(0) = β = 0: the block is the identity
    let mut params = Params::<f64>::new();
    let block = BasicBlock::new(
        &mut params,
        "b",
        BasicBlockConfig::new(2, 2),
        &mut seeded_rng(0),
    );
    let conv2 = params
        .ids()
        .find(|&id| params.name(id) == "b.conv2.weight")
        .unwrap();
    let zeros = Tensor::zeros(params.get(conv2).shape());
    params.set(conv2, zeros);
    let x = Tensor::randn(&[2, 2, 4, 4], 0.0, 1.0, &mut seeded_rng(1));
    assert_eq!(block.infer(&params, &x), x);
    assert!(!BasicBlockConfig::new(2, 2).has_downsample());
    assert!(
        BasicBlockConfig::new(2, 4).has_downsample()
            && BasicBlockConfig::new(2, 2).stride(2).has_downsample()
    );
}

#[test]
fn lenet_plus_plus_is_a_sequential_config_that_builds_and_embeds() {
    use margrad::nn::LeNetPlusPlus;
    let small = LeNetPlusPlus {
        input: [1, 16, 12],
        channels: [2, 3, 4],
        embedding_dim: 5,
    };
    let config = small.sequential().unwrap();
    let kinds: Vec<&str> = config.layers.iter().map(|l| l.kind.as_str()).collect();
    let stage = ["conv2d", "prelu", "conv2d", "prelu", "max_pool2d"];
    let mut expected = vec!["unflatten"];
    for _ in 0..3 {
        expected.extend(stage);
    }
    expected.extend(["flatten", "linear"]);
    assert_eq!(kinds, expected);
    // 16×12 → 8×6 → 4×3 → 2×1, four channels: 8 features reach the embedding
    assert_eq!(config.layers[17].config["inputs"], 8);
    let mut params = Params::<f32>::new();
    let seq = Sequential::new(&config, &mut params, "embed", &mut seeded_rng(0)).unwrap();
    assert_eq!(seq.item_shapes(), Some((&[192][..], &[5][..])));
    assert_eq!(
        seq.infer(&params, &Tensor::ones(&[3, 192])).shape(),
        &[3, 5]
    );
    let tiny = LeNetPlusPlus {
        input: [1, 7, 28],
        ..LeNetPlusPlus::new(2)
    };
    assert!(matches!(
        tiny.sequential(),
        Err(Error::InvalidSetting { .. })
    ));
    let none = LeNetPlusPlus {
        channels: [32, 0, 128],
        ..LeNetPlusPlus::new(2)
    };
    assert!(matches!(
        none.sequential(),
        Err(Error::InvalidSetting { .. })
    ));
}

/// Builds `layers` as an embedder behind an Unflatten to `item`, with a 3-class head: the
/// error, if any.
fn build_on(item: &[usize], layers: &[LayerSpec]) -> Result<Model, Error> {
    let mut embedder = SequentialConfig::new().with(
        Unflatten {
            shape: item.to_vec(),
        }
        .spec(),
    );
    for layer in layers {
        embedder = embedder.with(layer.clone());
    }
    let config = ModelConfig {
        embedder,
        head: HeadConfig::Linear { classes: 3 },
    };
    Model::new(config, &mut Params::new(), &mut seeded_rng(0))
}

/// Every misfit between a layer and the shape the layers before it give is an error naming the
/// layer when the model is built, before any forward pass could panic on it.
#[test]
fn layers_that_do_not_fit_the_shape_before_them_are_errors_at_build() {
    let refused = |item: &[usize], layers: &[LayerSpec], needle: &str| match build_on(item, layers)
    {
        Err(e @ Error::LayerSettings { .. }) => assert!(e.to_string().contains(needle), "{e}"),
        Err(e) => panic!("{layers:?}: not a layer error: {e}"),
        Ok(_) => panic!("{layers:?} was built"),
    };
    let conv = |c, o| Conv2dConfig::new(c, o, 3).padding(1).spec();
    let flatten = LayerSpec::new(Flatten::KIND, &serde_json::json!({}));
    let gap = LayerSpec::new(GlobalAvgPool::KIND, &serde_json::json!({}));
    let pool = MaxPool2d(Pool2dOptions::new(2)).spec();
    // channels
    refused(
        &[1, 8, 8],
        &[conv(1, 4), conv(8, 2), flatten.clone()],
        "layer embed.2 (\"conv2d\"): it takes 8 channels, the layers before it give 4",
    );
    refused(
        &[3, 8, 8],
        &[pool.clone(), conv(1, 4)],
        "layer embed.2 (\"conv2d\"): it takes 1 channels, the layers before it give 3",
    );
    refused(
        &[4, 8, 8],
        &[
            BasicBlockConfig::new(4, 8).spec(),
            BatchNorm2dConfig::new(4).spec(),
        ],
        "layer embed.2 (\"batch_norm2d\"): it takes 4 channels, the layers before it give 8",
    );
    refused(
        &[1, 8, 8],
        &[conv(1, 4), PReluConfig::new(5).spec()],
        "layer embed.2 (\"prelu\"): it takes 5 channels",
    );
    refused(
        &[1, 8, 8],
        &[conv(1, 4), gap.clone(), PReluConfig::new(6).spec()],
        "layer embed.3 (\"prelu\"): it takes 6 channels, the layers before it give 4",
    );
    // a Linear whose width is not the flattened size before it
    refused(
        &[1, 8, 8],
        &[
            conv(1, 4),
            pool.clone(),
            flatten.clone(),
            LinearConfig::new(4 * 8 * 8, 2).spec(),
        ],
        "layer embed.4 (\"linear\"): it takes rows of 256 features, the layers before it give \
         rows of 64 features",
    );
    // a Linear on planes: the flatten is missing
    refused(
        &[1, 8, 8],
        &[conv(1, 4), LinearConfig::new(256, 2).spec()],
        "the layers before it give items of shape [4, 8, 8] (a flatten or a global pooling",
    );
    // a kernel larger than the padded input
    refused(
        &[1, 4, 6],
        &[Conv2dConfig::new(1, 2, 5).spec(), flatten.clone()],
        "layer embed.1 (\"conv2d\"): its kernel [5, 5] (dilation [1, 1]) is larger than its \
         4×6 input padded by [0, 0]",
    );
    // an image too small for the chain of strides and pools: 12 → 6 → 3 → 1, then a 2×2 pool
    refused(
        &[1, 12, 12],
        &[
            pool.clone(),
            pool.clone(),
            Conv2dConfig::new(1, 2, 3).stride(2).spec(),
            pool.clone(),
            flatten.clone(),
        ],
        "layer embed.4 (\"max_pool2d\"): its window [2, 2] is larger than its 1×1 input",
    );
    // planes where rows are taken, rows where planes are
    refused(
        &[1, 8, 8],
        &[
            BatchNorm2dConfig::new(1).spec(),
            flatten.clone(),
            gap.clone(),
        ],
        "layer embed.3 (\"global_avg_pool\"): it takes planes [C, H, W], the layers before \
         it give rows of 64 features",
    );
    refused(
        &[2, 8],
        &[Conv1dConfig::new(2, 3, 9).spec(), flatten.clone()],
        "layer embed.1 (\"conv1d\"): its kernel [1, 9]",
    );
    refused(
        &[1, 8, 8],
        &[Conv1dConfig::new(1, 3, 3).spec()],
        "it takes sequences [C, L], the layers before it give items of shape [1, 8, 8]",
    );
    // an embedder that does not end in feature rows, one that fixes no input shape
    refused(
        &[1, 8, 8],
        &[conv(1, 4)],
        "it gives items of shape [4, 8, 8], the head takes feature rows",
    );
    let no_input = ModelConfig {
        embedder: SequentialConfig::new().with(conv(1, 4)).with(gap.clone()),
        head: HeadConfig::Linear { classes: 3 },
    };
    let e = Model::<f32>::new(no_input, &mut Params::new(), &mut seeded_rng(0)).unwrap_err();
    assert!(
        e.to_string()
            .contains("no layer fixes the embedder's input shape"),
        "{e}"
    );
    // the same layers fitted to each other build
    let fitted = [conv(1, 4), pool, flatten, LinearConfig::new(64, 2).spec()];
    let model = build_on(&[1, 8, 8], &fitted).unwrap();
    assert_eq!((model.input_shape(), model.embedding_dim()), (&[64][..], 2));
}

/// A convolutional model as PyTorch saves it: beside every batch norm's running statistics
/// (BatchNorm2d, and those inside the residual blocks) a `num_batches_tracked` counter in I64.
#[test]
fn a_pytorch_state_dict_with_batch_norm_counters_loads_and_non_finite_weights_do_not() {
    use margrad::data::InputScaling;
    use safetensors::tensor::TensorView;
    use safetensors::{Dtype, SafeTensors};
    let mut params = Params::<f32>::new();
    let model = Model::new(model_config(), &mut params, &mut seeded_rng(3)).unwrap();
    let exported = checkpoint::safetensors_bytes(&model, &params, &InputScaling::none());
    let file = SafeTensors::deserialize(&exported).unwrap();
    let (_, header) = SafeTensors::read_metadata(&exported).unwrap();
    let counter = 7i64.to_le_bytes();
    let with_counters = |poison: Option<&str>| {
        let mut views: Vec<(String, TensorView<'_>)> = file.tensors();
        let counters: Vec<String> = views
            .iter()
            .filter_map(|(name, _)| name.strip_suffix(".running_mean"))
            .map(|layer| format!("{layer}.num_batches_tracked"))
            .collect();
        assert!(counters.len() >= 4, "{counters:?}");
        let nan = f32::NAN.to_le_bytes().repeat(64);
        for name in counters {
            views.push((name, TensorView::new(Dtype::I64, vec![], &counter).unwrap()));
        }
        if let Some(poisoned) = poison {
            let (_, view) = views.iter_mut().find(|(n, _)| n == poisoned).unwrap();
            let len = view.data().len();
            *view = TensorView::new(Dtype::F32, view.shape().to_vec(), &nan[..len]).unwrap();
            // `nan` outlives the views only inside this closure: serialise here
            return safetensors::serialize(views, header.metadata().clone()).unwrap();
        }
        safetensors::serialize(views, header.metadata().clone()).unwrap()
    };
    let loaded = checkpoint::decode_safetensors::<f32>(&with_counters(None), None).unwrap();
    for id in params.ids() {
        let name = params.name(id);
        let again = loaded.params.find(name).expect("every tensor comes back");
        assert_eq!(loaded.params.get(again), params.get(id), "{name}");
    }
    let error = checkpoint::decode_safetensors::<f32>(&with_counters(Some("embed.1.weight")), None)
        .unwrap_err();
    assert!(
        error.to_string().contains("embed.1.weight"),
        "a NaN weight is refused naming it: {error}"
    );
}

#[test]
fn paddings_too_large_for_the_window_are_errors_not_panics() {
    let build = |spec: LayerSpec| {
        let config = SequentialConfig::new()
            .with(
                Unflatten {
                    shape: vec![1, 8, 8],
                }
                .spec(),
            )
            .with(spec);
        let mut params = Params::<f32>::new();
        Sequential::new(&config, &mut params, "embed", &mut seeded_rng(0)).map(|_| ())
    };
    // 2·p wrapped to 0 in a release build, and the pooling window then held no element
    let huge = Pool2dOptions::new(2).padding(1 << 63);
    for spec in [MaxPool2d(huge).spec(), AvgPool2d(huge).spec()] {
        let error = build(spec).unwrap_err();
        assert!(
            error.to_string().contains("padding at most half"),
            "{error}"
        );
    }
    // a convolution padded past its window's span sees only zeros there
    let error = build(Conv2dConfig::new(1, 2, 3).padding(1 << 40).spec()).unwrap_err();
    assert!(error.to_string().contains("Conv padding"), "{error}");
    assert!(build(Conv2dConfig::new(1, 2, 3).padding(2).spec()).is_ok());
}

#[test]
fn batch_norm2d_and_prelu_settings_are_checked_in_the_element_type() {
    let build = |spec: LayerSpec| {
        let config = SequentialConfig::new()
            .with(
                Unflatten {
                    shape: vec![2, 4, 4],
                }
                .spec(),
            )
            .with(spec);
        let mut params = Params::<f32>::new();
        Sequential::new(&config, &mut params, "embed", &mut seeded_rng(0)).map(|_| ())
    };
    let mut bn = BatchNorm2dConfig::new(2);
    bn.eps = 1e-50; // 0 in f32
    assert!(build(bn.spec()).is_err());
    let mut prelu = PReluConfig::new(2);
    prelu.init = 1e300; // infinite in f32
    assert!(build(prelu.spec()).is_err());
    let mut params = Params::<f64>::new();
    let config = SequentialConfig::new()
        .with(
            Unflatten {
                shape: vec![2, 4, 4],
            }
            .spec(),
        )
        .with(bn.spec());
    assert!(Sequential::new(&config, &mut params, "embed", &mut seeded_rng(0)).is_ok());
}
