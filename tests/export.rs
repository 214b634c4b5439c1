//! The safetensors export and import: PyTorch's layouts and names, the metadata that says how
//! to use the tensors, a model trained in PyTorch loaded and scored here, and every way a file
//! can fail to fit, each with its own error.
//!
//! `tests/data/pytorch/` holds files made by PyTorch (`pytorch-*.safetensors`, written by
//! `make_fixture.py`) and by margrad (`margrad-*.safetensors`, written by
//! [`margrads_export_is_the_committed_fixture`] when `MARGRAD_BLESS=1`), which
//! `make_fixture.py` loads in PyTorch with the README's code.

mod common;

use margrad::checkpoint::{
    self, CheckpointError, EXPORT_VERSION, decode_safetensors, export_metadata, load_safetensors,
    safetensors_bytes,
};
use margrad::data::InputScaling;
use margrad::loss::MarginLoss;
use margrad::metrics::pair_scores;
use margrad::nn::{HeadConfig, MlpConfig, Model, ModelConfig, Module, TrainedHead};
use margrad::{Element, Params, Tensor, seeded_rng};
use safetensors::{Dtype, SafeTensors};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Tensors by name: shape and values (as `f64`).
type Values = BTreeMap<String, (Vec<usize>, Vec<f64>)>;
/// A tensor as a file stores it: name, element type, shape, little-endian bytes.
type Stored = (String, Dtype, Vec<usize>, Vec<u8>);

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/pytorch")
}

/// A path `name` in a scratch folder of its own, removed when the returned guard drops.
fn temp(name: &str) -> (common::Scratch, PathBuf) {
    common::scratch_path("export", name)
}

/// The model both fixtures hold: margrad's default MLP with BatchNorm, 64 → 32 → 8, and a
/// cosine head over 5 classes (AM-Softmax).
fn fixture_config() -> ModelConfig {
    ModelConfig {
        embedder: MlpConfig {
            batch_norm: true,
            ..MlpConfig::new(&[64, 32, 8])
        }
        .sequential()
        .unwrap(),
        head: HeadConfig::Cosine {
            classes: 5,
            loss: MarginLoss::am(30.0, 0.35).unwrap(),
        },
    }
}

fn mlp(sizes: &[usize], head: HeadConfig) -> ModelConfig {
    ModelConfig {
        embedder: MlpConfig {
            batch_norm: true,
            ..MlpConfig::new(sizes)
        }
        .sequential()
        .unwrap(),
        head,
    }
}

fn cosine(classes: usize) -> HeadConfig {
    HeadConfig::Cosine {
        classes,
        loss: MarginLoss::am(30.0, 0.35).unwrap(),
    }
}

/// A model of `config` whose every tensor, BatchNorm's statistics and affine included, is a
/// seeded draw (no kernel runs, so every machine builds the same bits).
fn seeded_model<F: Element>(config: ModelConfig, seed: u64) -> (Model<F>, Params<F>) {
    let mut rng = seeded_rng(seed);
    let mut params = Params::new();
    let model = Model::new(config, &mut params, &mut rng).unwrap();
    for id in params.ids().collect::<Vec<_>>() {
        let name = params.name(id).to_string();
        let shape = params.get(id).shape().to_vec();
        let value = if name.ends_with("running_var") {
            Tensor::rand_uniform(&shape, 0.5, 2.0, &mut rng)
        } else if name.ends_with("running_mean") || name.ends_with(".bias") {
            Tensor::randn(&shape, 0.0, 0.3, &mut rng)
        } else if name.starts_with("embed.1.") {
            Tensor::rand_uniform(&shape, 0.5, 1.5, &mut rng) // γ
        } else {
            continue;
        };
        params.set(id, value);
    }
    (model, params)
}

/// A file's floating-point tensors as `f64` values with their shapes, and its metadata.
fn read(bytes: &[u8]) -> (Values, BTreeMap<String, String>) {
    let file = SafeTensors::deserialize(bytes).unwrap();
    let tensors = file
        .tensors()
        .into_iter()
        .filter_map(|(name, view)| {
            let values = match view.dtype() {
                Dtype::F32 => view
                    .data()
                    .chunks(4)
                    .map(|b| f32::from_le_bytes(b.try_into().unwrap()) as f64)
                    .collect(),
                Dtype::F64 => view
                    .data()
                    .chunks(8)
                    .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
                    .collect(),
                _ => return None,
            };
            Some((name, (view.shape().to_vec(), values)))
        })
        .collect();
    let (_, header) = SafeTensors::read_metadata(bytes).unwrap();
    let metadata = header
        .metadata()
        .clone()
        .map(|m| m.into_iter().collect())
        .unwrap_or_default();
    (tensors, metadata)
}

fn max_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f64::max)
}

/// The largest difference relative to the values' scale (at least 1): f32 rounding grows
/// with the magnitude of what is computed.
fn relative_diff(a: &[f64], b: &[f64]) -> f64 {
    let scale = b.iter().map(|v| v.abs()).fold(1.0, f64::max);
    max_diff(a, b) / scale
}

fn values<F: Element>(t: &Tensor<F>) -> Vec<f64> {
    t.data().iter().map(|v| v.to_f64()).collect()
}

/// What a model computes of `x`: embeddings, normalised embeddings, the cosines of the pairs
/// (0, 1), (2, 3), …, and the class scores.
fn outputs(
    model: &Model,
    params: &Params<f32>,
    x: &Tensor<f32>,
) -> BTreeMap<&'static str, Vec<f64>> {
    let e = model.embedder().infer(params, x);
    let normalised = model.embeddings(params, x);
    let pairs: Vec<(usize, usize)> = (0..x.shape()[0] / 2).map(|i| (2 * i, 2 * i + 1)).collect();
    let head = TrainedHead::new(model, params);
    BTreeMap::from([
        ("embeddings", values(&e)),
        ("normalised", values(&normalised)),
        ("pair_scores", pair_scores(&normalised, &pairs)),
        ("class_cosines", values(&head.scores(&e))),
    ])
}

// ---- PyTorch → margrad ----

#[test]
fn a_model_trained_in_pytorch_gives_pytorchs_values() {
    let path = fixture_dir().join("pytorch-model.safetensors");
    // saved by safetensors.torch.save_file: no margrad metadata, so the configuration is ours
    let err = load_safetensors::<f32>(&path, None).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::Metadata {
                key: "margrad.model",
                ..
            }
        ),
        "{err}"
    );
    let loaded = load_safetensors::<f32>(&path, Some(&fixture_config())).unwrap();
    assert!(loaded.training.is_none());
    let (expected, _) =
        read(&std::fs::read(fixture_dir().join("pytorch-expected.safetensors")).unwrap());
    let (shape, inputs) = &expected["inputs"];
    let x = Tensor::from_vec(inputs.iter().map(|&v| v as f32).collect(), shape).unwrap();
    let ours = outputs(&loaded.model, &loaded.params, &x);
    for (name, values) in &ours {
        let diff = relative_diff(values, &expected[*name].1);
        println!(
            "PyTorch-trained model in margrad: {name:<14} max |margrad - PyTorch| / scale = \
             {diff:.2e}"
        );
        assert!(diff < 1e-6, "{name}: {diff:e}");
    }
    // the predictions agree, and the class centres came in as PyTorch's rows
    let head = TrainedHead::new(&loaded.model, &loaded.params);
    let centres = head.centres().unwrap();
    assert_eq!(centres.shape(), &[8, 5], "margrad keeps [D, C] inside");
    let (tensors, _) = read(&std::fs::read(&path).unwrap());
    assert_eq!(tensors["head.weight"].0, [5, 8]);
    assert_eq!(values(&centres.transpose()), tensors["head.weight"].1);
}

// ---- margrad → PyTorch ----

/// Raw inputs as the digits loader reads them: integer pixels in `0..=16`.
fn raw_inputs(rows: usize) -> Tensor<f32> {
    let u = Tensor::<f32>::rand_uniform(&[rows, 64], 0.0, 17.0, &mut seeded_rng(5));
    Tensor::from_vec(
        u.data().iter().map(|v| v.floor().min(16.0)).collect(),
        &[rows, 64],
    )
    .unwrap()
}

#[test]
fn margrads_export_is_the_committed_fixture() {
    let (model, params) = seeded_model::<f32>(fixture_config(), 3);
    let scaling = InputScaling::digits();
    let bytes = safetensors_bytes(&model, &params, &scaling);
    let raw = raw_inputs(6);
    let x = Tensor::from_vec(raw.data().iter().map(|v| v / 16.0).collect(), raw.shape()).unwrap();
    let dir = fixture_dir();
    if std::env::var_os("MARGRAD_BLESS").is_some() {
        std::fs::write(dir.join("margrad-model.safetensors"), &bytes).unwrap();
        let ours = outputs(&model, &params, &x);
        let tensor = |name: &str, shape: &[usize]| {
            Tensor::<f32>::from_vec(ours[name].iter().map(|&v| v as f32).collect(), shape).unwrap()
        };
        let mut expected = Params::<f32>::new();
        expected.add("raw", raw.clone());
        expected.add("normalised", tensor("normalised", &[6, 8]));
        expected.add("pair_scores", tensor("pair_scores", &[3]));
        expected.add("class_cosines", tensor("class_cosines", &[6, 5]));
        let tensors: Vec<_> = expected
            .ids()
            .map(|id| {
                let t = expected.get(id);
                let data: Vec<u8> = t.data().iter().flat_map(|v| v.to_le_bytes()).collect();
                (expected.name(id).to_string(), data, t.shape().to_vec())
            })
            .collect();
        let views: Vec<_> = tensors
            .iter()
            .map(|(name, data, shape)| {
                let view = safetensors::tensor::TensorView::new(Dtype::F32, shape.clone(), data);
                (name.clone(), view.unwrap())
            })
            .collect();
        let expected_bytes = safetensors::serialize(views, None).unwrap();
        std::fs::write(dir.join("margrad-expected.safetensors"), expected_bytes).unwrap();
    }
    // the committed export is this model's, tensor for tensor, with the same metadata
    let committed = std::fs::read(dir.join("margrad-model.safetensors")).unwrap();
    let (now, mut now_meta) = read(&bytes);
    let (then, mut then_meta) = read(&committed);
    assert_eq!(
        now, then,
        "regenerate with MARGRAD_BLESS=1 and rerun make_fixture.py --check"
    );
    now_meta.remove("producer_version");
    then_meta.remove("producer_version");
    assert_eq!(now_meta, then_meta);
    // and loaded back (its own configuration), it computes what margrad-expected records
    let loaded = decode_safetensors::<f32>(&committed, None).unwrap();
    let (expected, _) = read(&std::fs::read(dir.join("margrad-expected.safetensors")).unwrap());
    assert_eq!(expected["raw"].1, values(&raw));
    let ours = outputs(&loaded.model, &loaded.params, &x);
    for name in ["normalised", "pair_scores", "class_cosines"] {
        let diff = relative_diff(&ours[name], &expected[name].1);
        assert!(diff < 1e-6, "{name}: {diff:e}");
    }
}

#[test]
fn the_readmes_pytorch_code_is_the_code_the_fixture_script_runs() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let script = std::fs::read_to_string(fixture_dir().join("make_fixture.py")).unwrap();
    let section = readme
        .split("## Using a trained model in PyTorch")
        .nth(1)
        .expect("the README has the section")
        .split("\n## ")
        .next()
        .unwrap();
    let block = section
        .split("```python\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("the section has a Python block");
    let copied = script
        .split("# README: begin\n")
        .nth(1)
        .and_then(|s| s.split("# README: end\n").next())
        .expect("the script marks its copy");
    assert_eq!(block, copied, "README.md and make_fixture.py differ");
}

// ---- the export's layout and metadata ----

#[test]
fn the_export_has_names_shapes_offsets_and_raw_data() {
    let (model, params) = seeded_model::<f32>(mlp(&[6, 12, 4], cosine(3)), 0);
    let bytes = safetensors_bytes(&model, &params, &InputScaling::none());
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(header_len % 8, 0);
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + header_len]).unwrap();
    let data = &bytes[8 + header_len..];
    let mut covered = 0;
    for id in params.ids() {
        let name = params.name(id);
        let entry = &header[name];
        assert_eq!(entry["dtype"], "F32");
        // the cosine head's centres are PyTorch's [C, D], margrad's [D, C] transposed
        let tensor = match name {
            "head.weight" => params.get(id).transpose(),
            _ => params.get(id).clone(),
        };
        let shape: Vec<usize> = serde_json::from_value(entry["shape"].clone()).unwrap();
        assert_eq!(shape, tensor.shape(), "{name}");
        let offsets: Vec<usize> = serde_json::from_value(entry["data_offsets"].clone()).unwrap();
        assert_eq!(offsets[0], covered, "tensors are back to back");
        let values: Vec<f32> = data[offsets[0]..offsets[1]]
            .chunks(4)
            .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(values, tensor.data(), "{name}");
        covered = offsets[1];
    }
    assert_eq!(covered, data.len());
    assert_eq!(header.as_object().unwrap().len(), params.len() + 1);
    assert_eq!(header["head.weight"]["shape"], serde_json::json!([3, 4]));
}

#[test]
fn each_name_has_pytorchs_layout_even_when_dim_equals_classes() {
    // D = C = 4: a [D, C] matrix written as [C, D] would have the same shape, and the wrong
    // values: the file's row j must be class j's centre, as PyTorch reads it
    for head in [cosine(4), HeadConfig::Linear { classes: 4 }] {
        let (model, params) = seeded_model::<f32>(mlp(&[6, 5, 4], head.clone()), 1);
        let bytes = safetensors_bytes(&model, &params, &InputScaling::none());
        let (tensors, _) = read(&bytes);
        let (shape, w) = &tensors["head.weight"];
        assert_eq!(shape, &[4, 4]);
        let x = Tensor::<f32>::rand_uniform(&[3, 6], 0.0, 1.0, &mut seeded_rng(2));
        let e = model.embedder().infer(&params, &x);
        let scores = values(&TrainedHead::new(&model, &params).scores(&e));
        // the scores as PyTorch computes them from the file: row j of head.weight is class j
        let e = values(&e);
        let row = |v: &[f64], i: usize| v[i * 4..(i + 1) * 4].to_vec();
        let norm = |v: &[f64]| v.iter().map(|a| a * a).sum::<f64>().sqrt();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let cosine_head = matches!(head, HeadConfig::Cosine { .. });
        let mut pytorch = Vec::new();
        for i in 0..3 {
            let ei = row(&e, i);
            for j in 0..4 {
                let wj = row(w, j);
                pytorch.push(if cosine_head {
                    dot(&ei, &wj) / (norm(&ei) * norm(&wj))
                } else {
                    dot(&ei, &wj) + tensors["head.bias"].1[j]
                });
            }
        }
        let diff = max_diff(&scores, &pytorch);
        assert!(diff < 1e-5, "{head:?}: {diff:e}");
    }
}

#[test]
fn the_metadata_says_how_to_use_the_tensors() {
    let config = mlp(&[64, 32, 8], cosine(5));
    let (model, params) = seeded_model::<f32>(config.clone(), 0);
    let bytes = safetensors_bytes(&model, &params, &InputScaling::mnist());
    let (_, meta) = read(&bytes);
    assert_eq!(
        meta,
        export_metadata(model.config(), &InputScaling::mnist())
    );
    assert_eq!(meta["format"], "pt");
    assert_eq!(meta["producer"], "margrad");
    assert_eq!(meta["producer_version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(meta["margrad.export_version"], EXPORT_VERSION.to_string());
    let json = |key: &str| serde_json::from_str::<serde_json::Value>(&meta[key]).unwrap();
    let stored: ModelConfig = serde_json::from_str(&meta["margrad.model"]).unwrap();
    assert_eq!(&stored, model.config());
    assert_eq!(json("margrad.input_scaling")["divide_by"], 255.0);
    assert_eq!(
        json("margrad.embedding"),
        serde_json::json!({"normalize": "l2", "eps": 1e-12, "pair_score": "cosine"})
    );
    assert_eq!(
        json("margrad.batch_norm"),
        serde_json::json!({"embed.1": {"eps": 1e-5, "momentum": 0.1}})
    );
    assert_eq!(json("margrad.head")["kind"], "cosine");
    assert_eq!(json("margrad.head")["weight"], "[classes, dim]");
    // one model, one file: every key of the header in sorted order, metadata included
    let header_len = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header = std::str::from_utf8(&bytes[8..8 + header_len]).unwrap();
    let position = |key: &str| {
        let quoted = format!("{key:?}:");
        header
            .find(&quoted)
            .unwrap_or_else(|| panic!("{quoted} not in {header}"))
    };
    let metadata_keys: Vec<&str> = meta.keys().map(String::as_str).collect(); // sorted
    let mut top_keys: Vec<&str> = params.ids().map(|id| params.name(id)).collect();
    top_keys.push("__metadata__");
    top_keys.sort();
    for keys in [metadata_keys, top_keys] {
        let positions: Vec<usize> = keys.iter().map(|k| position(k)).collect();
        assert!(positions.is_sorted(), "{keys:?} out of order in {header}");
    }
}

#[test]
fn the_trainer_exports_with_the_datas_scaling() {
    use margrad::train::{DataSource, EXPORT_FILE, TrainConfig, train};
    let (_scratch, out) = temp("trained");
    let config = TrainConfig {
        hidden: vec![32],
        embed_dim: 8,
        batch_norm: true,
        epochs: 1,
        ..TrainConfig::default()
    };
    assert_eq!(config.data.source, DataSource::Digits);
    train(&config, &out, &mut |_| {}).unwrap();
    let bytes = std::fs::read(out.join(EXPORT_FILE)).unwrap();
    let (_, meta) = read(&bytes);
    assert_eq!(meta["format"], "pt");
    let scaling: InputScaling = serde_json::from_str(&meta["margrad.input_scaling"]).unwrap();
    assert_eq!(scaling, InputScaling::digits());
    assert_eq!(scaling.divide_by, 16.0);
    // the export and the checkpoint hold the same model
    let exported = load_safetensors::<f32>(&out.join(EXPORT_FILE), None).unwrap();
    let saved = checkpoint::load::<f32>(&out.join(margrad::train::CHECKPOINT_FILE)).unwrap();
    assert_eq!(exported.model.config(), saved.model.config());
    for id in saved.params.ids() {
        let other = exported.params.find(saved.params.name(id)).unwrap();
        assert_eq!(exported.params.get(other), saved.params.get(id));
    }
}

#[test]
fn the_recorded_scaling_is_the_loaders_own() {
    use margrad::data::{MnistSplit, load_mnist, parse_digits_csv};
    // one digits image whose pixels run over 0..=16, then its label
    let raw: Vec<u32> = (0..64).map(|i| i % 17).collect();
    let line = raw.iter().map(u32::to_string).collect::<Vec<_>>().join(",") + ",3";
    let digits = parse_digits_csv(&line, "one line").unwrap();
    let divide_by = InputScaling::digits().divide_by;
    let scaled: Vec<f32> = raw.iter().map(|&p| (p as f64 / divide_by) as f32).collect();
    assert_eq!(digits.features.data(), &scaled[..]);
    // one MNIST image whose pixels run over 0..=255, in IDX files
    let (_scratch, dir) = temp("mnist");
    std::fs::create_dir_all(&dir).unwrap();
    let pixels: Vec<u8> = (0..784).map(|i| (i % 256) as u8).collect();
    let mut images = vec![0, 0, 8, 3, 0, 0, 0, 1, 0, 0, 0, 28, 0, 0, 0, 28];
    images.extend(&pixels);
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), images).unwrap();
    std::fs::write(
        dir.join("t10k-labels-idx1-ubyte"),
        [0, 0, 8, 1, 0, 0, 0, 1, 7],
    )
    .unwrap();
    let mnist = load_mnist(&dir, MnistSplit::Test).unwrap();
    let divide_by = InputScaling::mnist().divide_by;
    let scaled: Vec<f32> = pixels
        .iter()
        .map(|&p| (p as f64 / divide_by) as f32)
        .collect();
    assert_eq!(mnist.features.data(), &scaled[..]);
}

// ---- round trips ----

#[test]
fn export_then_import_is_bit_exact_for_both_heads_and_element_types() {
    fn check<F: Element>(head: HeadConfig) {
        let (model, params) = seeded_model::<F>(mlp(&[6, 5, 3], head), 4);
        let (_scratch, path) = temp(&format!("round-{}-{}.safetensors", F::NAME, params.len()));
        checkpoint::save_safetensors(&path, &model, &params, &InputScaling::none()).unwrap();
        let loaded = load_safetensors::<F>(&path, None).unwrap();
        assert_eq!(loaded.model, model);
        assert_eq!(loaded.params.len(), params.len());
        for (a, b) in params.ids().zip(loaded.params.ids()) {
            assert_eq!(params.name(a), loaded.params.name(b));
            assert_eq!(params.is_trainable(a), loaded.params.is_trainable(b));
            assert_eq!(params.get(a), loaded.params.get(b));
        }
    }
    check::<f32>(cosine(4));
    check::<f32>(HeadConfig::Linear { classes: 4 });
    check::<f64>(cosine(4));
    check::<f64>(HeadConfig::Linear { classes: 4 });
}

// ---- every misfit, its own error ----

/// A safetensors file of `tensors` and `metadata`, as the `safetensors` crate writes it.
fn file(tensors: &[Stored], metadata: Option<&BTreeMap<String, String>>) -> Vec<u8> {
    let views = tensors.iter().map(|(name, dtype, shape, data)| {
        let view = safetensors::tensor::TensorView::new(*dtype, shape.clone(), data);
        (name.clone(), view.unwrap())
    });
    safetensors::serialize(views, metadata.map(|m| m.clone().into_iter().collect())).unwrap()
}

/// The tensors of a seeded small model's export, as `file` takes them.
fn small_export() -> (ModelConfig, Vec<Stored>) {
    let config = mlp(&[6, 5, 3], cosine(4));
    let (model, params) = seeded_model::<f32>(config.clone(), 0);
    let bytes = safetensors_bytes(&model, &params, &InputScaling::none());
    let (tensors, _) = read(&bytes);
    let tensors = tensors
        .into_iter()
        .map(|(name, (shape, v))| {
            let data = v.iter().flat_map(|&x| (x as f32).to_le_bytes()).collect();
            (name, Dtype::F32, shape, data)
        })
        .collect();
    (config, tensors)
}

/// The error of reading `tensors`, changed by `change`, with `config`.
fn decode_with(
    config: &ModelConfig,
    tensors: &[Stored],
    change: impl FnOnce(&mut Vec<Stored>),
) -> CheckpointError {
    let mut tensors = tensors.to_vec();
    change(&mut tensors);
    decode_safetensors::<f32>(&file(&tensors, None), Some(config)).unwrap_err()
}

#[test]
fn a_tensor_that_does_not_fit_is_named() {
    let (config, tensors) = small_export();
    // without metadata, with the configuration given, it loads
    decode_safetensors::<f32>(&file(&tensors, None), Some(&config)).unwrap();

    let err = decode_with(&config, &tensors, |t| {
        t.retain(|(n, ..)| n != "embed.0.bias")
    });
    assert_eq!(err, CheckpointError::MissingTensor("embed.0.bias".into()));

    let err = decode_with(&config, &tensors, |t| {
        t.push(("embed.9.weight".into(), Dtype::F32, vec![2], vec![0; 8]))
    });
    assert_eq!(
        err,
        CheckpointError::UnexpectedTensor("embed.9.weight".into())
    );

    let err = decode_with(&config, &tensors, |t| {
        let w = t.iter_mut().find(|(n, ..)| n == "embed.0.weight").unwrap();
        w.1 = Dtype::F64;
        w.2 = vec![5, 3];
    });
    assert_eq!(
        err.to_string(),
        "tensor \"embed.0.weight\" holds F64 elements, expected F32"
    );

    // the head's centres in margrad's inside layout [D, C] instead of PyTorch's [C, D]
    let err = decode_with(&config, &tensors, |t| {
        let w = t.iter_mut().find(|(n, ..)| n == "head.weight").unwrap();
        w.2 = vec![3, 4];
    });
    assert_eq!(
        err,
        CheckpointError::TensorShape {
            name: "head.weight".into(),
            expected: vec![4, 3],
            found: vec![3, 4],
        }
    );
    assert_eq!(
        err.to_string(),
        "checkpoint tensor \"head.weight\" has shape [3, 4], its configuration says [4, 3]"
    );

    // PyTorch's BatchNorm counter is skipped; elsewhere an integer tensor is refused
    let err = decode_with(&config, &tensors, |t| {
        t.push((
            "embed.1.num_batches_tracked".into(),
            Dtype::I64,
            vec![],
            vec![0; 8],
        ));
        t.push((
            "embed.0.num_batches_tracked".into(),
            Dtype::I64,
            vec![],
            vec![0; 8],
        ));
    });
    assert!(
        matches!(&err, CheckpointError::TensorDtype { name, .. } if name == "embed.0.num_batches_tracked"),
        "{err}"
    );
}

#[test]
fn metadata_that_cannot_say_what_is_needed_is_refused() {
    let (config, tensors) = small_export();
    let with = |key: &str, value: &str| {
        let meta = BTreeMap::from([(key.to_string(), value.to_string())]);
        decode_safetensors::<f32>(&file(&tensors, Some(&meta)), None).unwrap_err()
    };
    let err = with("margrad.model", "{\"embedder\": 3}");
    assert!(
        matches!(
            err,
            CheckpointError::Metadata {
                key: "margrad.model",
                ..
            }
        ),
        "{err}"
    );
    let err = with("margrad.export_version", &(EXPORT_VERSION + 1).to_string());
    assert!(
        err.to_string().contains("written by a newer margrad"),
        "{err}"
    );
    // the file's own configuration comes first: a given one is for files without
    let model_json = serde_json::to_string(&config).unwrap();
    let meta = BTreeMap::from([("margrad.model".to_string(), model_json)]);
    let other = mlp(&[6, 7, 3], cosine(4));
    decode_safetensors::<f32>(&file(&tensors, Some(&meta)), Some(&other)).unwrap();
}

#[test]
fn a_damaged_file_is_refused_before_its_claims_are_allocated() {
    let (model, params) = seeded_model::<f32>(mlp(&[6, 5, 3], cosine(4)), 0);
    let bytes = safetensors_bytes(&model, &params, &InputScaling::none());
    let load = |name: &str, bytes: &[u8]| {
        let (_scratch, path) = temp(name);
        std::fs::write(&path, bytes).unwrap();
        load_safetensors::<f32>(&path, None).unwrap_err()
    };
    let err = load("cut.safetensors", &bytes[..bytes.len() - 4]);
    assert!(
        matches!(
            err,
            CheckpointError::Truncated {
                part: "tensor data",
                ..
            }
        ),
        "{err}"
    );
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 4]);
    let err = load("long.safetensors", &longer);
    assert!(
        matches!(err, CheckpointError::TrailingBytes { .. }),
        "{err}"
    );
    let err = load("short.safetensors", &bytes[..5]);
    assert!(
        matches!(
            err,
            CheckpointError::Truncated {
                part: "header",
                expected: 8,
                found: 5
            }
        ),
        "{err}"
    );
    // a header that claims an exabyte: refused by its length, nothing set aside for it
    let mut huge = bytes.clone();
    huge[..8].copy_from_slice(&(1u64 << 60).to_le_bytes());
    let err = load("huge.safetensors", &huge);
    assert!(
        err.to_string().contains("more than the 100000000 allowed"),
        "{err}"
    );
    let mut past = bytes.clone();
    past[..8].copy_from_slice(&(bytes.len() as u64).to_le_bytes());
    let err = load("past.safetensors", &past);
    assert!(
        matches!(err, CheckpointError::Truncated { part: "header", .. }),
        "{err}"
    );
    let mut garbled = bytes.clone();
    garbled[9] = b'#';
    let err = load("garbled.safetensors", &garbled);
    assert!(matches!(err, CheckpointError::Safetensors(_)), "{err}");
    let err = load_safetensors::<f32>(&std::env::temp_dir(), None).unwrap_err();
    assert!(
        matches!(err, CheckpointError::NotRegularFile { .. }),
        "{err}"
    );
    // a model saved as f32 is not read as f64
    let (_scratch, path) = temp("f32.safetensors");
    std::fs::write(&path, &bytes).unwrap();
    let err = load_safetensors::<f64>(&path, None).unwrap_err();
    assert!(
        matches!(
            err,
            CheckpointError::TensorDtype {
                expected: "F64",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn the_reader_survives_thousands_of_seeded_mutations() {
    use rand::RngExt;
    let (model, params) = seeded_model::<f32>(mlp(&[6, 5, 3], cosine(4)), 0);
    let bytes = safetensors_bytes(&model, &params, &InputScaling::none());
    let header_end = 8 + u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut rng = seeded_rng(9);
    let (mut refused, mut read) = (0, 0);
    for _ in 0..3000 {
        let mut mutated = bytes.clone();
        match rng.random_range(0..4) {
            // a byte of the header (lengths, names, shapes, offsets, metadata) changed
            0 | 1 => {
                let at = rng.random_range(0..header_end);
                mutated[at] = rng.random();
            }
            // a digit of the header swapped for another
            2 => {
                let digits: Vec<usize> = (8..header_end)
                    .filter(|&i| mutated[i].is_ascii_digit())
                    .collect();
                let at = digits[rng.random_range(0..digits.len())];
                mutated[at] = b'0' + rng.random_range(0..10u8);
            }
            // cut anywhere
            _ => mutated.truncate(rng.random_range(0..bytes.len())),
        }
        match decode_safetensors::<f32>(&mutated, None) {
            Ok(loaded) => {
                read += 1;
                assert_eq!(loaded.params.len(), params.len());
            }
            Err(e) => {
                refused += 1;
                assert!(!e.to_string().is_empty());
            }
        }
    }
    assert!(refused > 1000, "{refused} refused, {read} read");
}
