//! Checkpoints: bit-exact round trips, an exact resume, a clear error for every kind of damage,
//! a seeded mutation fuzzer over the loader, head-only loading, and a refused non-finite save.

use margrad::checkpoint::{
    self, Checkpoint, CheckpointError, HEADER_LEN, TrainingState, load_head,
};
use margrad::data::InputScaling;
use margrad::loss::MarginLoss;
use margrad::metrics::{EpochRecord, pair_scores};
use margrad::nn::{Forward, HeadConfig, MlpConfig, Model, ModelConfig, SequentialConfig};
use margrad::optim::{Method, Optimizer, ParamState};
use margrad::train::model_step;
use margrad::{Element, Graph, Labels, Params, SeededRng, Tensor, seeded_rng};
use rand::RngExt;
use rand::seq::SliceRandom;
use std::path::PathBuf;

mod common;
use common::{in_little_memory, within, write_sparse};

/// A path `name` in a scratch folder of its own, removed when the returned guard drops.
fn temp(name: &str) -> (common::Scratch, PathBuf) {
    common::scratch_path("ckpt", name)
}

fn embedder(sizes: &[usize]) -> SequentialConfig {
    MlpConfig {
        batch_norm: true,
        dropout: 0.1,
        ..MlpConfig::new(sizes)
    }
    .sequential()
    .unwrap()
}

fn config(head: HeadConfig) -> ModelConfig {
    ModelConfig {
        embedder: embedder(&[6, 12, 4]),
        head,
    }
}

fn cosine() -> HeadConfig {
    HeadConfig::Cosine {
        classes: 3,
        loss: MarginLoss::enhanced(10.0, 0.2).unwrap(),
    }
}

fn built<F: Element>(head: HeadConfig) -> (Model<F>, Params<F>) {
    let mut params = Params::new();
    let model = Model::new(config(head), &mut params, &mut seeded_rng(0)).unwrap();
    (model, params)
}

fn same_bits<F: Element>(a: &Params<F>, b: &Params<F>) -> bool {
    a.len() == b.len()
        && a.ids().zip(b.ids()).all(|(i, j)| {
            a.name(i) == b.name(j)
                && a.is_trainable(i) == b.is_trainable(j)
                && a.get(i).shape() == b.get(j).shape()
                && a.get(i)
                    .data()
                    .iter()
                    .zip(b.get(j).data())
                    .all(|(x, y)| x.to_f64().to_bits() == y.to_f64().to_bits())
        })
}

// ---- round trips ----

#[test]
fn round_trip_is_bit_exact_for_both_heads_and_element_types() {
    fn check<F: Element>(head: HeadConfig) {
        let (model, params) = built::<F>(head);
        let (_scratch, path) = temp(&format!("round-{}-{}.bin", F::NAME, params.len()));
        checkpoint::save(&path, &model, &params, None).unwrap();
        let loaded: Checkpoint<F> = checkpoint::load(&path).unwrap();
        assert_eq!(loaded.model, model);
        assert!(same_bits(&loaded.params, &params));
        assert!(loaded.training.is_none());
        let x = Tensor::<F>::randn(&[5, 6], 0.0, 1.0, &mut seeded_rng(3));
        assert_eq!(
            loaded.model.predict(&loaded.params, &x),
            model.predict(&params, &x)
        );
    }
    check::<f32>(cosine());
    check::<f64>(cosine());
    check::<f32>(HeadConfig::Linear { classes: 3 });
}

/// One epoch of Adam on a fixed toy set, shuffled by `rng` (which dropout also draws from).
fn epoch(model: &Model, params: &mut Params<f32>, opt: &mut Optimizer<f32>, rng: &mut SeededRng) {
    let x = Tensor::<f32>::randn(&[40, 6], 0.0, 1.0, &mut seeded_rng(9));
    let y: Vec<usize> = (0..40).map(|i| i % 3).collect();
    let mut order: Vec<usize> = (0..40).collect();
    order.shuffle(rng);
    for batch in order.chunks(8) {
        let xb = Tensor::from_fn(&[batch.len(), 6], |k| x.data()[batch[k / 6] * 6 + k % 6]);
        let labels = Labels::new(batch.iter().map(|&i| y[i]).collect(), 3).unwrap();
        model_step(model, params, opt, rng, xb, &labels).unwrap();
    }
}

#[test]
fn resuming_from_a_checkpoint_continues_exactly() {
    let new_run = || {
        let (model, params) = built::<f32>(cosine());
        let opt = Optimizer::new(Method::adam(), &params, 0.01, 1e-4).unwrap();
        (model, params, opt, seeded_rng(1))
    };
    // two epochs straight
    let (model, mut straight, mut opt, mut rng) = new_run();
    epoch(&model, &mut straight, &mut opt, &mut rng);
    epoch(&model, &mut straight, &mut opt, &mut rng);

    // one epoch, save, load, one more
    let (model, mut params, mut opt, mut rng) = new_run();
    epoch(&model, &mut params, &mut opt, &mut rng);
    let (_scratch, path) = temp("resume.bin");
    let state = TrainingState {
        optimizer: opt.state().clone(),
        epoch: 1,
        rng: rng.clone(),
        history: Vec::new(),
    };
    checkpoint::save(&path, &model, &params, Some(&state)).unwrap();
    drop((params, opt, rng));
    let Checkpoint {
        model,
        mut params,
        training,
    } = checkpoint::load::<f32>(&path).unwrap();
    let training = training.unwrap();
    assert_eq!(training.epoch, 1);
    let mut opt = Optimizer::from_state(training.optimizer, &params).unwrap();
    let mut rng = training.rng;
    epoch(&model, &mut params, &mut opt, &mut rng);

    assert!(
        same_bits(&params, &straight),
        "resumed weights differ from the straight run"
    );
}

// ---- damage: each gives its own error ----

fn valid_bytes() -> Vec<u8> {
    let (model, params) = built::<f32>(cosine());
    checkpoint::encode(&model, &params, None)
}

/// Recomputes the body checksum, so that damage reaches the body decoder.
fn reseal(bytes: &mut [u8]) {
    let crc = crc32fast::hash(&bytes[HEADER_LEN..]);
    bytes[40..44].copy_from_slice(&crc.to_le_bytes());
}

fn decode_err(bytes: &[u8]) -> CheckpointError {
    checkpoint::decode::<f32>(bytes).unwrap_err()
}

#[test]
fn the_body_stores_each_layer_as_its_kind_and_its_settings_as_json() {
    let bytes = valid_bytes();
    // the layout itself is pinned by the committed files (see the tests at the end)
    assert_eq!(
        u32::from_le_bytes(bytes[8..12].try_into().unwrap()),
        checkpoint::FORMAT_VERSION
    );
    let body = String::from_utf8_lossy(&bytes[HEADER_LEN..]);
    for text in [
        "linear",
        r#"{"bias":true,"init":"KaimingNormal","inputs":6,"outputs":12}"#,
        "batch_norm1d",
        r#"{"eps":0.00001,"features":12,"momentum":0.1}"#,
        "relu",
        r#"{"p":0.1}"#,
    ] {
        assert!(body.contains(text), "{text} is not in the body");
    }
}

#[test]
fn truncated_files() {
    let bytes = valid_bytes();
    let body = (bytes.len() - HEADER_LEN) as u64;
    assert_eq!(
        decode_err(&bytes[..20]),
        CheckpointError::Truncated {
            part: "header",
            expected: 48,
            found: 20
        }
    );
    let cut = decode_err(&bytes[..bytes.len() - 10]);
    assert_eq!(
        cut,
        CheckpointError::Truncated {
            part: "body",
            expected: body,
            found: body - 10
        }
    );
    assert_eq!(
        cut.to_string(),
        format!(
            "truncated checkpoint: the body needs {body} bytes, the file has {}",
            body - 10
        )
    );
}

#[test]
fn a_header_that_declares_more_data_than_the_file_holds() {
    let mut bytes = valid_bytes();
    bytes[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(
        decode_err(&bytes),
        CheckpointError::Truncated {
            part: "body",
            expected: u64::MAX,
            ..
        }
    ));
    let mut extra = valid_bytes();
    extra.extend_from_slice(b"junk");
    assert!(matches!(
        decode_err(&extra),
        CheckpointError::TrailingBytes { .. }
    ));
}

#[test]
fn flipped_bits_fail_the_checksum() {
    let mut bytes = valid_bytes();
    let at = HEADER_LEN + (bytes.len() - HEADER_LEN) / 2;
    bytes[at] ^= 0x10;
    let err = decode_err(&bytes);
    assert!(matches!(err, CheckpointError::Checksum { .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("corrupt checkpoint: body checksum")
    );
}

#[test]
fn wrong_magic_future_version_wrong_element_type() {
    let mut bytes = valid_bytes();
    bytes[..8].copy_from_slice(b"NOTMARGR");
    assert_eq!(
        decode_err(&bytes).to_string(),
        "not a margrad checkpoint: it begins with the bytes 4e 4f 54 4d 41 52 47 52, where a \
         checkpoint begins with 4d 41 52 47 52 41 44 00 (\"MARGRAD\" and a zero byte)"
    );
    let current = checkpoint::FORMAT_VERSION;
    let ours = Some(env!("CARGO_PKG_VERSION").to_string());
    for (version, says) in [
        (
            current + 5,
            "written by a newer margrad (0.1.0); upgrade to read it",
        ),
        (
            checkpoint::OLDEST_READABLE_VERSION - 1,
            "written by an older margrad (0.1.0)",
        ),
        (
            0,
            "0 is not a version margrad ever wrote; the header is damaged or the file was not \
             written by margrad",
        ),
    ] {
        let mut bytes = valid_bytes();
        bytes[8..12].copy_from_slice(&version.to_le_bytes());
        let err = decode_err(&bytes);
        assert_eq!(
            err,
            CheckpointError::UnsupportedVersion {
                found: version,
                supported: current,
                written_by: ours.clone(),
            }
        );
        let message = err.to_string();
        let both = format!(
            "format version {version}, but this margrad reads versions {} to {current}",
            checkpoint::OLDEST_READABLE_VERSION
        );
        assert!(
            message.contains(&both) && message.contains(says),
            "{message}"
        );
        assert!(version != 0 || !message.contains("newer"), "{message}");
    }
    let err = checkpoint::decode::<f64>(&valid_bytes()).unwrap_err();
    assert_eq!(
        err.to_string(),
        "checkpoint holds f32 tensors, expected f64"
    );
    let mut bytes = valid_bytes();
    bytes[12..16].copy_from_slice(&[0xff, 1, 0, 0]);
    assert_eq!(
        decode_err(&bytes).to_string(),
        "checkpoint holds bytes ff 01 00 00 tensors, expected f32"
    );
}

#[test]
fn a_file_without_the_magic_is_not_a_checkpoint_whatever_its_length_and_says_what_it_looks_like() {
    let (model, params) = built::<f32>(cosine());
    let mut pickle = b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec(); // torch.save, legacy
    pickle.resize(200, 0);
    let cases: Vec<(Vec<u8>, Option<&str>)> = vec![
        (b"{\"a\": 1}\n".to_vec(), Some("JSON text")), // nine bytes
        (b"  [1, 2]".to_vec(), Some("JSON text")),
        (
            checkpoint::safetensors_bytes(&model, &params, &InputScaling::none()),
            Some("a safetensors file"),
        ),
        (
            b"PK\x03\x04\x14\x00\x00\x00".repeat(10),
            Some("a zip archive"),
        ),
        (pickle, Some("a Python pickle")),
        (
            b"\x1f\x8b\x08\x00rest".to_vec(),
            Some("gzip-compressed data"),
        ),
        (b"\x93NUMPY\x01\x00".to_vec(), Some("a NumPy .npy file")),
        (b"hello".to_vec(), None),
        (
            b"MARGRAD\x01 and more than a header's worth of bytes after it".to_vec(),
            None,
        ),
    ];
    for (bytes, kind) in cases {
        let err = decode_err(&bytes);
        let first = bytes[..bytes.len().min(8)].to_vec();
        assert!(
            matches!(&err, CheckpointError::BadMagic { found, looks_like }
                if *found == first && looks_like.is_some() == kind.is_some()),
            "{err:?}"
        );
        let message = err.to_string();
        assert!(
            message.starts_with("not a margrad checkpoint: "),
            "{message}"
        );
        if let Some(kind) = kind {
            assert!(
                message.contains(&format!("it looks like {kind}")),
                "{message}"
            );
        }
        assert!(!message.contains("\\u{"), "{message}");
    }
    // from a file too, a short one included
    let (_scratch, path) = temp("metrics.json");
    std::fs::write(&path, b"{\"a\": 1}\n").unwrap();
    let err = checkpoint::load::<f32>(&path).unwrap_err();
    assert!(err.to_string().contains("it looks like JSON text"), "{err}");
    std::fs::remove_file(&path).unwrap();
    // a file that begins as a checkpoint and stops is truncated, the empty file included
    let whole = checkpoint::encode(&model, &params, None);
    for len in [0, 5, 8, 47] {
        assert_eq!(
            decode_err(&whole[..len]),
            CheckpointError::Truncated {
                part: "header",
                expected: HEADER_LEN as u64,
                found: len as u64
            }
        );
    }
}

#[test]
fn reserved_header_bytes_must_be_zero_and_the_crate_version_readable() {
    let mut bytes = valid_bytes();
    bytes[45] = 1;
    let err = decode_err(&bytes);
    assert_eq!(
        err,
        CheckpointError::HeaderField {
            field: "reserved",
            start: 44,
            found: vec![0, 1, 0, 0],
            requirement: "zero",
        }
    );
    assert_eq!(
        err.to_string(),
        "damaged checkpoint header: bytes 44..48 (reserved) are 00 01 00 00, but must be zero"
    );
    for crate_version in [
        [0u8; 16],                                              // empty
        *b"0.1.0\0\0\0\0x\0\0\0\0\0\0",                         // text after the padding
        *b"0.1.0\n\0\0\0\0\0\0\0\0\0\0",                        // not printable
        [0xc3, 0xa9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], // not ASCII
    ] {
        let mut bytes = valid_bytes();
        bytes[16..32].copy_from_slice(&crate_version);
        let err = decode_err(&bytes);
        assert!(
            matches!(&err, CheckpointError::HeaderField { field: "crate version", start: 16, found, .. }
                if found[..] == crate_version[..]),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .starts_with("damaged checkpoint header: bytes 16..32 (crate version) are "),
            "{err}"
        );
    }
    // any printable version text is accepted: it is for people, not for the reader
    let mut bytes = valid_bytes();
    bytes[16..32].copy_from_slice(b"9.99.0-beta.1+ab");
    checkpoint::decode::<f32>(&bytes).unwrap();
}

#[test]
fn tensors_that_do_not_fit_the_configuration() {
    // parameters of a 12-wide hidden layer under a configuration that says 10
    let (_, params) = built::<f32>(cosine());
    let mut narrower = config(cosine());
    narrower.embedder = embedder(&[6, 10, 4]);
    let other = Model::new(narrower, &mut Params::<f32>::new(), &mut seeded_rng(0)).unwrap();
    let err = decode_err(&checkpoint::encode(&other, &params, None));
    assert_eq!(
        err.to_string(),
        "checkpoint tensor \"embed.0.weight\" has shape [12, 6], its configuration says [10, 6]"
    );
    // a tensor missing, and one too many
    let (model, params) = built::<f32>(cosine());
    let mut fewer = Params::<f32>::new();
    for id in params.ids().filter(|&id| params.name(id) != "head.weight") {
        fewer.add(params.name(id), params.get(id).clone());
    }
    assert_eq!(
        decode_err(&checkpoint::encode(&model, &fewer, None)),
        CheckpointError::MissingTensor("head.weight".into())
    );
    let mut more = params.clone();
    more.add("stray", Tensor::zeros(&[2]));
    assert_eq!(
        decode_err(&checkpoint::encode(&model, &more, None)),
        CheckpointError::UnexpectedTensor("stray".into())
    );
}

#[test]
fn an_invalid_stored_configuration_is_an_error() {
    // a file written by a buggy or hostile tool: the loss scale (10.0) patched to −1.0, with
    // a valid checksum, so that only the configuration check can catch it
    let mut bytes = valid_bytes();
    let ten = 10.0f64.to_le_bytes();
    let at = bytes
        .windows(8)
        .position(|w| w == ten)
        .expect("the scale is stored as an f64");
    bytes[at..at + 8].copy_from_slice(&(-1.0f64).to_le_bytes());
    reseal(&mut bytes);
    let err = decode_err(&bytes);
    assert_eq!(
        err.to_string(),
        "checkpoint holds an invalid configuration: invalid scale = -1: must be positive and \
         finite"
    );
}

#[test]
fn a_missing_file_is_an_io_error() {
    let err = checkpoint::load::<f32>(&temp("does-not-exist.bin").1).unwrap_err();
    assert!(matches!(err, CheckpointError::Io { .. }), "{err}");
}

// ---- fuzzing the loader ----

#[test]
fn the_loader_survives_thousands_of_seeded_mutations() {
    let original = {
        let (model, params) = built::<f32>(cosine());
        let opt = Optimizer::new(Method::adam(), &params, 0.01, 0.0).unwrap();
        let state = TrainingState {
            optimizer: opt.state().clone(),
            epoch: 3,
            rng: seeded_rng(5),
            history: Vec::new(),
        };
        checkpoint::encode(&model, &params, Some(&state))
    };
    let mut rng = seeded_rng(2024);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..4000 {
        let mut bytes = original.clone();
        let edits = rng.random_range(1..4);
        for _ in 0..edits {
            let at = rng.random_range(0..bytes.len());
            match rng.random_range(0..5) {
                0 => bytes[at] ^= 1 << rng.random_range(0..8),
                1 => bytes[at] = rng.random(),
                2 => bytes.truncate(at.max(1)),
                3 => {
                    // a huge length where a length may stand
                    let end = (at + 8).min(bytes.len());
                    bytes[at..end].fill(0xff);
                }
                _ => {
                    let chunk = bytes[at..(at + 16).min(bytes.len())].to_vec();
                    bytes.splice(at..at, chunk);
                }
            }
        }
        // half the rounds carry a valid checksum, so the damage reaches the body decoder
        if round % 2 == 0 && bytes.len() >= HEADER_LEN {
            let body_len = (bytes.len() - HEADER_LEN) as u64;
            bytes[32..40].copy_from_slice(&body_len.to_le_bytes());
            reseal(&mut bytes);
        }
        match std::panic::catch_unwind(|| checkpoint::decode::<f32>(&bytes)) {
            Ok(Ok(_)) => accepted += 1,
            Ok(Err(e)) => {
                rejected += 1;
                let message = e.to_string();
                // a sentence, not a Rust value: no `UnexpectedEnd { additional: 3 }`,
                // `OtherString("…")`, `Some(6)`, `\u{3}`
                for debug in ["{ ", "String(", "Some(", "None", "\\u{", "Error"] {
                    assert!(
                        !message.contains(debug),
                        "round {round}: {debug:?} in the message: {message}"
                    );
                }
            }
            Err(_) => panic!("the loader panicked on mutation round {round}"),
        }
    }
    assert!(rejected > 3000, "{rejected} rejected, {accepted} accepted");
}

// ---- the head alone ----

#[test]
fn the_head_alone_predicts_and_scores_pairs() {
    for head in [cosine(), HeadConfig::Linear { classes: 3 }] {
        let (model, params) = built::<f32>(head.clone());
        let (_scratch, path) = temp(&format!(
            "head-{}.bin",
            matches!(head, HeadConfig::Linear { .. })
        ));
        checkpoint::save(&path, &model, &params, None).unwrap();
        let trained = load_head::<f32>(&path).unwrap();
        assert_eq!(trained.config(), &head);
        let x = Tensor::<f32>::randn(&[7, 6], 0.0, 1.0, &mut seeded_rng(4));
        let g = Graph::inference();
        let mut cx = Forward::eval(&g, &params);
        let embeddings = model.embed(&mut cx, g.constant(x.clone())).to_tensor();
        assert_eq!(trained.predict(&embeddings), model.predict(&params, &x));
        assert_eq!(
            trained.centres().is_some(),
            matches!(head, HeadConfig::Cosine { .. })
        );
    }
    // rows 0, 1 against rows 2, 3
    let e = Tensor::from_vec(vec![1.0f32, 0.0, 3.0, 4.0, 0.0, 2.0, 3.0, 4.0], &[4, 2]).unwrap();
    let scores = pair_scores(&e, &[(0, 2), (1, 3)]);
    assert!(
        scores[0].abs() < 1e-7 && (scores[1] - 1.0).abs() < 1e-6,
        "{scores:?}"
    );
}

// ---- the format, pinned by committed files ----

/// The model, parameters and training state of `tests/data/checkpoint-v{N}.bin`, built from
/// seeded draws only (no kernel whose rounding depends on the CPU), so every machine builds
/// the same bits: BatchNorm and dropout in the embedder, an Enhanced head, AdamW's moments,
/// an epoch's history.
fn fixture() -> (Model<f32>, Params<f32>, TrainingState<f32>) {
    let (model, params) = built::<f32>(cosine());
    let mut rng = seeded_rng(11);
    let mut optimizer = Optimizer::new(Method::adamw(), &params, 1e-2, 1e-4)
        .unwrap()
        .state()
        .clone();
    optimizer.lr_factor = 0.5;
    optimizer.per_param = params
        .ids()
        .map(|id| {
            let shape = params.get(id).shape();
            params.is_trainable(id).then(|| ParamState {
                steps: 3,
                first: Tensor::randn(shape, 0.0, 0.1, &mut rng),
                second: Tensor::rand_uniform(shape, 0.0, 0.01, &mut rng),
            })
        })
        .collect();
    let training = TrainingState {
        optimizer,
        epoch: 1,
        rng: seeded_rng(12),
        history: vec![EpochRecord {
            epoch: 1,
            loss: 2.5,
            train_accuracy: 0.375,
            test_accuracy: 0.5,
            samples_per_sec: 1234.5,
            seconds: 0.25,
        }],
    };
    (model, params, training)
}

fn fixture_path(version: u32) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/checkpoint-v{version}.bin"))
}

/// Loads the committed checkpoint of the current format version, and checks that this build
/// writes the same body: a change to the stored layout (a field added to a configuration, a
/// type changed) fails here until `FORMAT_VERSION` is bumped and a file of the new version is
/// committed. To write it: `MARGRAD_WRITE_FIXTURE=1 cargo test --release --test checkpoint`
/// with the file absent.
#[test]
fn the_committed_checkpoint_of_this_format_version_loads_and_matches_what_we_write() {
    let version = checkpoint::FORMAT_VERSION;
    let path = fixture_path(version);
    let (model, params, training) = fixture();
    let written = checkpoint::encode(&model, &params, Some(&training));
    if !path.exists() && std::env::var_os("MARGRAD_WRITE_FIXTURE").is_some() {
        std::fs::write(&path, &written).unwrap();
    }
    let stored = std::fs::read(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e}. Every format version has a committed checkpoint: after bumping \
             FORMAT_VERSION, write one with MARGRAD_WRITE_FIXTURE=1",
            path.display()
        )
    });
    let loaded: Checkpoint<f32> = checkpoint::decode(&stored).unwrap();
    assert_eq!(loaded.model, model);
    assert!(same_bits(&loaded.params, &params));
    assert_eq!(loaded.training.as_ref(), Some(&training));
    // the header but for the crate version (bytes 16..32), and the whole body
    assert_eq!(stored[..16], written[..16]);
    assert_eq!(
        stored[32..],
        written[32..],
        "this build writes another checkpoint layout than format version {version}'s: bump \
         checkpoint::FORMAT_VERSION and commit a file of the new version"
    );
}

#[test]
fn a_checkpoint_written_by_an_earlier_format_is_refused_naming_both_versions() {
    let current = checkpoint::FORMAT_VERSION;
    for version in 1..checkpoint::OLDEST_READABLE_VERSION {
        let bytes = std::fs::read(fixture_path(version)).unwrap();
        let err = checkpoint::decode::<f32>(&bytes).unwrap_err();
        assert_eq!(
            err,
            CheckpointError::UnsupportedVersion {
                found: version,
                supported: current,
                written_by: Some("0.1.0".into()),
            }
        );
        let message = err.to_string();
        assert!(
            message.contains(&format!(
                "format version {version}, but this margrad reads versions {} to {current}",
                checkpoint::OLDEST_READABLE_VERSION
            )) && message.contains("older margrad"),
            "{message}"
        );
    }
}

/// A version that only added a kind to a stored choice reads the files of the versions before
/// it: the committed file of every readable version loads as the model it holds.
#[test]
fn a_checkpoint_of_every_readable_earlier_version_still_loads() {
    let (model, params, training) = fixture();
    for version in checkpoint::OLDEST_READABLE_VERSION..checkpoint::FORMAT_VERSION {
        let stored = std::fs::read(fixture_path(version)).unwrap();
        let loaded: Checkpoint<f32> = checkpoint::decode(&stored).unwrap();
        assert_eq!(loaded.model, model);
        assert!(same_bits(&loaded.params, &params));
        assert_eq!(loaded.training.as_ref(), Some(&training));
    }
}

// ---- reading a file without trusting it ----

/// A sparse file `name` of `len` bytes that begins with `head`.
fn sparse(name: &str, head: &[u8], len: u64) -> (common::Scratch, PathBuf) {
    let (scratch, path) = temp(name);
    write_sparse(&path, head, len);
    (scratch, path)
}

const GIB: u64 = 1 << 30;

#[cfg(unix)]
#[test]
fn a_named_pipe_is_refused_at_once_without_waiting_for_a_writer() {
    let (_scratch, path) = temp("pipe.bin");
    let _ = std::fs::remove_file(&path);
    match std::process::Command::new("mkfifo").arg(&path).status() {
        Ok(status) if status.success() => {}
        other => {
            eprintln!("note: mkfifo unavailable ({other:?}); the FIFO test is skipped");
            return;
        }
    }
    let at = path.clone();
    let err = within(10, move || checkpoint::load::<f32>(&at).unwrap_err());
    assert_eq!(
        err,
        CheckpointError::NotRegularFile {
            path: path.clone(),
            kind: "a named pipe (FIFO)"
        }
    );
    assert_eq!(
        err.to_string(),
        format!(
            "{} is a named pipe (FIFO), not a regular file: a checkpoint is read from a file \
             only",
            path.display()
        )
    );
    let at = path.clone();
    let err = within(10, move || load_head::<f32>(&at).unwrap_err());
    assert!(
        matches!(err, CheckpointError::NotRegularFile { .. }),
        "{err}"
    );
    std::fs::remove_file(&path).unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn a_symlink_to_dev_zero_is_refused_as_the_device_it_points_to() {
    let (_scratch, path) = temp("zero.bin");
    let _ = std::fs::remove_file(&path);
    std::os::unix::fs::symlink("/dev/zero", &path).unwrap();
    let at = path.clone();
    let err = in_little_memory("loading /dev/zero", || {
        within(10, move || checkpoint::load::<f32>(&at).unwrap_err())
    });
    assert_eq!(
        err,
        CheckpointError::NotRegularFile {
            path: path.clone(),
            kind: "a character device"
        }
    );
    std::fs::remove_file(&path).unwrap();
}

#[cfg(unix)]
#[test]
fn a_directory_is_refused_naming_what_it_is() {
    let (_scratch, dir) = temp("a-directory.bin");
    std::fs::create_dir_all(&dir).unwrap();
    let err = checkpoint::load::<f32>(&dir).unwrap_err();
    assert_eq!(
        err,
        CheckpointError::NotRegularFile {
            path: dir.clone(),
            kind: "a directory"
        }
    );
    std::fs::remove_dir(&dir).unwrap();
}

#[test]
fn a_gigabyte_without_the_magic_is_refused_after_reading_its_header_only() {
    let (_scratch, path) = sparse("zeros.bin", b"NOTMARGR", GIB);
    let err = in_little_memory("a 1 GiB file with a bad magic", || {
        checkpoint::load::<f32>(&path).unwrap_err()
    });
    assert_eq!(
        err,
        CheckpointError::BadMagic {
            found: b"NOTMARGR".to_vec(),
            looks_like: None,
        }
    );
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_body_length_unlike_the_files_is_refused_before_the_body_is_read() {
    let bytes = valid_bytes();
    let body = (bytes.len() - HEADER_LEN) as u64;
    // a header declaring u64::MAX bytes: nothing is allocated by the claim
    let mut header = bytes[..HEADER_LEN].to_vec();
    header[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
    let (_scratch, path) = temp("claims-max.bin");
    std::fs::write(&path, &header).unwrap();
    assert_eq!(
        checkpoint::load::<f32>(&path).unwrap_err(),
        CheckpointError::Truncated {
            part: "body",
            expected: u64::MAX,
            found: 0
        }
    );
    std::fs::remove_file(&path).unwrap();
    // ... nor is the file read when it is a gigabyte
    let (_scratch, path) = sparse("claims-max-gib.bin", &header, GIB);
    let err = in_little_memory("a 1 GiB file declaring u64::MAX", || {
        checkpoint::load::<f32>(&path).unwrap_err()
    });
    assert_eq!(
        err,
        CheckpointError::Truncated {
            part: "body",
            expected: u64::MAX,
            found: GIB - HEADER_LEN as u64
        }
    );
    std::fs::remove_file(&path).unwrap();
    // a whole checkpoint followed by a gigabyte: refused without reading either
    let (_scratch, path) = sparse("trailing-gib.bin", &bytes, GIB);
    let err = in_little_memory("a checkpoint followed by 1 GiB", || {
        checkpoint::load::<f32>(&path).unwrap_err()
    });
    assert_eq!(
        err,
        CheckpointError::TrailingBytes {
            expected: body,
            found: GIB - HEADER_LEN as u64
        }
    );
    std::fs::remove_file(&path).unwrap();
    // a header cut short, and one whose file ends inside the body, read from a file
    let (_scratch, path) = temp("short.bin");
    std::fs::write(&path, &bytes[..30]).unwrap();
    assert_eq!(
        checkpoint::load::<f32>(&path).unwrap_err(),
        CheckpointError::Truncated {
            part: "header",
            expected: HEADER_LEN as u64,
            found: 30
        }
    );
    std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
    assert_eq!(
        checkpoint::load::<f32>(&path).unwrap_err(),
        CheckpointError::Truncated {
            part: "body",
            expected: body,
            found: body - 1
        }
    );
    // and the whole file still loads
    std::fs::write(&path, &bytes).unwrap();
    checkpoint::load::<f32>(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_model_with_non_finite_weights_is_never_saved() {
    let (model, mut params) = built::<f32>(cosine());
    let (_scratch, path) = temp("non-finite.bin");
    checkpoint::save(&path, &model, &params, None).unwrap();
    let before = std::fs::read(&path).unwrap();
    let id = params.find("embed.0.weight").unwrap();
    params.get_mut(id).data_mut()[3] = f32::NAN;
    let err = checkpoint::save(&path, &model, &params, None).unwrap_err();
    assert!(matches!(err, CheckpointError::NonFinite(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "refusing to save a model with non-finite value in embed.0.weight: element 3 is NaN"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the previous file stays"
    );
    let (_scratch, export) = temp("non-finite.safetensors");
    let err =
        checkpoint::save_safetensors(&export, &model, &params, &InputScaling::none()).unwrap_err();
    assert!(matches!(err, CheckpointError::NonFinite(_)), "{err:?}");
    assert!(!export.exists());
}

// ---- saving: atomic, concurrent, and cleaning up after killed writers ----

#[test]
fn threads_saving_to_one_path_at_once_leave_one_whole_save() {
    let (_scratch, path) = temp("concurrent.bin");
    // four different models, each thread saving its own again and again
    let saves: Vec<(Model<f32>, Params<f32>)> = (0..4)
        .map(|seed| {
            let mut params = Params::new();
            let model = Model::new(config(cosine()), &mut params, &mut seeded_rng(seed)).unwrap();
            (model, params)
        })
        .collect();
    let encoded: Vec<Vec<u8>> = saves
        .iter()
        .map(|(model, params)| checkpoint::encode(model, params, None))
        .collect();
    std::thread::scope(|scope| {
        for (model, params) in &saves {
            let path = &path;
            scope.spawn(move || {
                for _ in 0..25 {
                    checkpoint::save(path, model, params, None).unwrap();
                }
            });
        }
    });
    let written = std::fs::read(&path).unwrap();
    assert!(
        encoded.contains(&written),
        "the file is not any one thread's save ({} bytes)",
        written.len()
    );
    checkpoint::load::<f32>(&path).unwrap();
    let dir = path.parent().unwrap();
    let left: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".concurrent.bin.tmp-"))
        .collect();
    assert!(left.is_empty(), "temporary files left: {left:?}");
    std::fs::remove_file(&path).unwrap();
}

#[cfg(target_os = "linux")]
#[test]
fn a_save_removes_the_temporary_files_of_dead_writers_only() {
    let (_scratch, dir) = temp("stale.d");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("model.bin");
    // a writer killed mid-save: a process that has exited (and been reaped)
    let mut dead = std::process::Command::new("true").spawn().unwrap();
    let dead_pid = dead.id();
    dead.wait().unwrap();
    // a writer still at work
    let mut live = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let stale = [
        dir.join(format!(".model.bin.tmp-{dead_pid}-3")),
        dir.join(format!(".model.bin.tmp-{dead_pid}")), // the name older builds used
    ];
    let kept = [
        dir.join(format!(".model.bin.tmp-{}-0", live.id())),
        dir.join(format!(".model.bin.tmp-{}-99", std::process::id())),
        dir.join(format!(".other.bin.tmp-{dead_pid}-0")), // another target's
        dir.join(format!(".model.bin.tmp-{dead_pid}-x")), // not a name a save makes
    ];
    for p in stale.iter().chain(&kept) {
        std::fs::write(p, b"half a checkpoint").unwrap();
    }
    let (model, params) = built::<f32>(cosine());
    checkpoint::save(&path, &model, &params, None).unwrap();
    live.kill().unwrap();
    live.wait().unwrap();
    for p in &stale {
        assert!(!p.exists(), "{} was left", p.display());
    }
    for p in &kept {
        assert!(p.exists(), "{} was removed", p.display());
    }
    checkpoint::load::<f32>(&path).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

// ---- sizes read from a file ----

/// A source that hands out an empty tensor whatever the shape: a way to write a configuration
/// whose widths no tensor could have.
struct Empty;

impl<F: Element> margrad::nn::ParamSource<F> for Empty {
    fn tensor(&mut self, _: &str, _: &[usize], _: margrad::nn::Fill) -> Tensor<F> {
        Tensor::zeros(&[0])
    }
}

/// Runs in debug builds too (`cargo test --test checkpoint`), where an overflow would panic.
#[test]
fn widths_at_the_limit_of_usize_are_refused_by_shape_without_overflowing() {
    use margrad::nn::{Init, LinearConfig};
    let max = usize::MAX;
    for head in [
        HeadConfig::Cosine {
            classes: max,
            loss: MarginLoss::enhanced(10.0, 0.2).unwrap(),
        },
        HeadConfig::Linear { classes: max },
    ] {
        let config = ModelConfig {
            embedder: SequentialConfig::new()
                .with(
                    LinearConfig::new(max, max)
                        .with_init(Init::XavierNormal)
                        .spec(),
                )
                .with(LinearConfig::new(max, max).spec()),
            head,
        };
        let mut params = Params::<f32>::new();
        let model = Model::new(config, &mut params, &mut Empty).unwrap();
        let err = decode_err(&checkpoint::encode(&model, &params, None));
        assert_eq!(
            err,
            CheckpointError::TensorShape {
                name: "embed.0.weight".into(),
                expected: vec![max, max],
                found: vec![0],
            }
        );
    }
}

// ---- a body that does not decode: the part, the byte, a sentence ----

/// `bytes` with its declared length and checksum made good again, so that the damage reaches
/// the body decoder.
fn resealed(mut bytes: Vec<u8>) -> Vec<u8> {
    let body = (bytes.len() - HEADER_LEN) as u64;
    bytes[32..40].copy_from_slice(&body.to_le_bytes());
    reseal(&mut bytes);
    bytes
}

#[test]
fn a_body_that_does_not_decode_names_the_part_and_the_byte_in_a_sentence() {
    let bytes = valid_bytes();
    let body = bytes.len() - HEADER_LEN;
    // the last byte says whether a training state follows (0: none); 2 is neither
    let mut two = bytes.clone();
    *two.last_mut().unwrap() = 2;
    assert_eq!(
        decode_err(&resealed(two)).to_string(),
        format!(
            "checkpoint body does not decode: the training state, from body byte {}: a field \
             with 2 possible kinds holds kind number 2 (they are numbered from 0)",
            body - 1
        )
    );
    // bytes after the last part
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 4]);
    assert_eq!(
        decode_err(&resealed(longer)),
        CheckpointError::Body {
            part: "the end of the body".into(),
            offset: body as u64,
            message: format!("4 bytes follow the last part, of {} in all", body + 4),
        }
    );
    // a body cut inside the last tensor (without its training-state byte and a little more)
    let cut = resealed(bytes[..bytes.len() - 3].to_vec());
    let err = decode_err(&cut);
    let message = err.to_string();
    assert!(
        matches!(&err, CheckpointError::Body { part, .. } if part == "tensor \"head.weight\""),
        "{err:?}"
    );
    assert!(
        message.starts_with(
            "checkpoint body does not decode: tensor \"head.weight\", from body byte "
        ) && message.ends_with(": the body ends in the middle of it"),
        "{message}"
    );
}

// ---- the training state: what is saved loads back ----

fn adam_state(params: &Params<f32>) -> TrainingState<f32> {
    let mut optimizer = Optimizer::new(Method::adam(), params, 1e-3, 0.0)
        .unwrap()
        .state()
        .clone();
    optimizer.per_param = params
        .ids()
        .map(|id| {
            let shape = params.get(id).shape();
            params.is_trainable(id).then(|| ParamState {
                steps: 2,
                first: Tensor::zeros(shape),
                second: Tensor::zeros(shape),
            })
        })
        .collect();
    TrainingState {
        optimizer,
        epoch: 1,
        rng: seeded_rng(7),
        history: Vec::new(),
    }
}

#[test]
fn a_generator_stuck_at_zero_is_refused_on_load() {
    let (model, params) = built::<f32>(cosine());
    let mut training = adam_state(&params);
    checkpoint::decode::<f32>(&checkpoint::encode(&model, &params, Some(&training))).unwrap();
    // xoshiro256++'s all-zero state: no seed gives it, and it draws 0 for ever
    training.rng = serde_json::from_str(r#"{"s":[0,0,0,0]}"#).unwrap();
    let err = decode_err(&checkpoint::encode(&model, &params, Some(&training)));
    assert_eq!(
        err.to_string(),
        "checkpoint holds an invalid configuration: malformed training state at rng: the \
         generator's state is all zeros, which xoshiro256++ never leaves (every draw would be \
         0) and no seed gives"
    );
}

#[test]
fn a_training_state_that_would_not_load_is_never_saved() {
    let (model, params) = built::<f32>(cosine());
    let (_scratch, path) = temp("overflowed-moment.bin");
    let mut training = adam_state(&params);
    checkpoint::save(&path, &model, &params, Some(&training)).unwrap();
    let before = std::fs::read(&path).unwrap();
    // g² overflowed in f32: the weights are finite, the second moment is not
    let id = params.find("embed.0.weight").unwrap();
    let state = training.optimizer.per_param[id.index()].as_mut().unwrap();
    state.second.data_mut()[5] = f32::INFINITY;
    let err = checkpoint::save(&path, &model, &params, Some(&training)).unwrap_err();
    assert!(
        matches!(err, CheckpointError::UnsoundTrainingState(_)),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        "refusing to save a training state that would not load back: malformed optimizer state \
         at per_param[0].second (embed.0.weight): element 5 is inf, where a moment must be finite"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the previous file stays"
    );
    checkpoint::load::<f32>(&path).unwrap();
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn a_stored_shape_of_a_hundred_dimensions_is_shown_in_brief() {
    let (model, params) = built::<f32>(cosine());
    let mut odd = Params::<f32>::new();
    for id in params.ids() {
        let tensor = match params.name(id) {
            "embed.0.weight" => Tensor::zeros(&[1; 100]),
            _ => params.get(id).clone(),
        };
        odd.add(params.name(id), tensor);
    }
    assert_eq!(
        decode_err(&checkpoint::encode(&model, &odd, None)).to_string(),
        "checkpoint tensor \"embed.0.weight\" has shape [1, 1, 1, 1, 1, 1, 1, 1, … (100 \
         dimensions)], its configuration says [12, 6]"
    );
}

#[cfg(unix)]
#[test]
fn a_save_never_writes_through_a_link_planted_at_a_temporary_name() {
    let (_scratch, dir) = temp("planted.d");
    std::fs::create_dir_all(&dir).unwrap();
    let victim = dir.join("victim.txt");
    std::fs::write(&victim, b"keep me").unwrap();
    // links at every name this process's next saves could take (each save counts one)
    let pid = std::process::id();
    let links: Vec<PathBuf> = (0..3000)
        .map(|n| dir.join(format!(".model.bin.tmp-{pid}-{n}")))
        .collect();
    for link in &links {
        std::os::unix::fs::symlink(&victim, link).unwrap();
    }
    let (model, params) = built::<f32>(cosine());
    let path = dir.join("model.bin");
    checkpoint::save(&path, &model, &params, None).unwrap();
    assert!(
        std::fs::read(&victim).unwrap() == b"keep me",
        "the save wrote through a planted link"
    );
    checkpoint::load::<f32>(&path).unwrap();
    assert!(
        links.iter().all(|l| l.symlink_metadata().is_ok()),
        "a link was removed"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
