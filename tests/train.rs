//! The trainer end to end on small data, its exact resume and its thread setting, its output
//! folder and memory checks, and the data paths it relies on (IDX files, synthetic data,
//! open-set splits). The command-line programs are tested in `tests/cli.rs`.

mod common;

use margrad::checkpoint::{self, Checkpoint, CheckpointError};
use margrad::data::{Augment, MnistSplit, SyntheticConfig, load_mnist, parse_idx, synthetic};
use margrad::loss::{ExtraSettings, LossKind};
use margrad::nn::HeadConfig;
use margrad::optim::OptimizerState;
use margrad::train::{
    CHECKPOINT_FILE, DataSettings, DataSource, EXPORT_FILE, Event, MethodName, ModelKind,
    ResumeError, TrainConfig, TrainError, evaluate, prepare_data, train,
};
use margrad::{Error, Params, Tensor};
use std::path::{Path, PathBuf};

/// A path `name` in a scratch folder of its own, removed when the returned guard drops.
fn temp(name: &str) -> (common::Scratch, PathBuf) {
    common::scratch_path("train", name)
}

fn small(kind: LossKind) -> TrainConfig {
    let mut config = TrainConfig {
        hidden: vec![64],
        embed_dim: 16,
        epochs: 8,
        lr: 5e-3,
        ..TrainConfig::default()
    };
    config.loss.kind = kind;
    config
}

#[test]
fn a_run_writes_every_output_and_verify_reproduces_its_figures() {
    let (_scratch, out) = temp("run");
    let mut epochs_seen = 0;
    let metrics = train(&small(LossKind::Enhanced), &out, &mut |e| {
        if let margrad::train::Event::Epoch(_) = e {
            epochs_seen += 1;
        }
    })
    .unwrap();
    assert_eq!(epochs_seen, 8);
    for file in [
        CHECKPOINT_FILE,
        EXPORT_FILE,
        "metrics.json",
        "loss.svg",
        "accuracy.svg",
        "roc.svg",
    ] {
        assert!(out.join(file).exists(), "{file} missing");
    }
    assert!(
        metrics.final_metrics.test_accuracy > 0.9,
        "{}",
        metrics.final_metrics.test_accuracy
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["status"], "complete");
    assert_eq!(json["history"].as_array().unwrap().len(), 8);
    let f = &json["final"];
    for key in [
        "accuracy_mean",
        "accuracy_std",
        "auc",
        "eer",
        "tar_at_far_1e-3",
        "tar_at_far_1e-2",
        "pairs",
    ] {
        assert!(
            f["verification"][key].is_number(),
            "final.verification.{key}"
        );
    }
    for key in [
        "intra_angle_deg",
        "inter_min_angle_deg",
        "inter_mean_angle_deg",
    ] {
        assert!(f["geometry"][key].is_number(), "final.geometry.{key}");
    }
    assert!(f["test_accuracy"].is_number());
    for key in [
        "mean",
        "std",
        "min",
        "p5",
        "median",
        "p95",
        "max",
        "mean_correct",
    ] {
        assert!(
            f["feature_norms"][key].is_number(),
            "final.feature_norms.{key}"
        );
    }
    assert!(
        f.get("magface_norms").is_none(),
        "MagFace's figures for AM-Softmax"
    );
    // the file reads back, and so does one written before the norms were measured
    let read: margrad::train::Metrics = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(read, metrics);
    let mut older = json.clone();
    older["final"]
        .as_object_mut()
        .unwrap()
        .remove("feature_norms");
    let read: margrad::train::Metrics = serde_json::from_value(older).unwrap();
    assert_eq!(read.final_metrics.feature_norms, None);
    // what verify does: reload, re-prepare the data, evaluate: the same figures
    let checkpoint = checkpoint::load::<f32>(&out.join(CHECKPOINT_FILE)).unwrap();
    let settings = &small(LossKind::Enhanced).data;
    let data = prepare_data(settings).unwrap();
    let again = evaluate(&checkpoint.model, &checkpoint.params, &data, settings)
        .unwrap()
        .metrics;
    assert_eq!(again, metrics.final_metrics);
    assert!(
        std::fs::read_to_string(out.join("roc.svg"))
            .unwrap()
            .starts_with("<svg")
    );
}

#[test]
fn every_loss_trains_on_the_digits() {
    for kind in LossKind::ALL {
        let (_scratch, out) = temp(kind.name());
        let metrics = train(&small(kind), &out, &mut |_| {}).unwrap();
        let first = metrics.history.first().unwrap().loss;
        assert!(
            metrics.history.iter().all(|r| r.loss.is_finite()),
            "{}",
            kind.name()
        );
        assert!(
            metrics.final_metrics.test_accuracy > 0.8,
            "{}: {:?}",
            kind.name(),
            metrics.final_metrics
        );
        assert!(first.is_finite());
    }
}

#[test]
fn holdout_verifies_on_unseen_classes_and_draws_the_sphere() {
    let mut config = small(LossKind::Am);
    config.embed_dim = 3;
    config.data.holdout_classes = 4;
    let (_scratch, out) = temp("holdout");
    let metrics = train(&config, &out, &mut |_| {}).unwrap();
    assert_eq!(metrics.data.classes, 6);
    assert!(
        metrics
            .final_metrics
            .verification_set
            .contains("unseen classes 6..=9")
    );
    // the legend names the six trained digits the test split holds, each once
    let figure = std::fs::read_to_string(out.join("embedding.svg")).unwrap();
    let named: Vec<&str> = figure
        .split("<text class=\"legend\"")
        .skip(1)
        .map(|t| &t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()])
        .collect();
    assert_eq!(
        named,
        ["0", "1", "2", "3", "4", "5", "far hemisphere (pale)"]
    );
}

#[test]
fn divergence_stops_the_run_names_the_step_and_writes_no_metrics() {
    let mut config = small(LossKind::Softmax);
    config.optimizer = MethodName::Sgd;
    config.momentum = 0.0;
    config.lr = 1e30;
    let (_scratch, out) = temp("nan");
    let err = train(&config, &out, &mut |_| {}).unwrap_err();
    let TrainError::Diverged { epoch, step, .. } = &err else {
        panic!("expected divergence, got {err}");
    };
    assert!(
        err.to_string()
            .starts_with(&format!("training diverged at epoch {epoch}, step {step}")),
        "{err}"
    );
    assert!(
        !out.join("metrics.json").exists(),
        "no partial metrics passed off as complete"
    );
}

#[test]
fn bad_settings_are_errors_before_training() {
    let mut config = small(LossKind::Am);
    config.loss.margin = -0.5;
    assert!(matches!(
        train(&config, &temp("bad").1, &mut |_| {}),
        Err(TrainError::Input(Error::InvalidSetting { .. }))
    ));
    let mut config = small(LossKind::Am);
    config.data.holdout_classes = 10;
    assert!(matches!(
        train(&config, &temp("bad2").1, &mut |_| {}),
        Err(TrainError::Input(Error::InvalidSetting {
            name: "holdout classes",
            ..
        }))
    ));
    let mut config = small(LossKind::Am);
    config.data.source = DataSource::Mnist {
        dir: temp("no-such-dir").1,
    };
    let err = train(&config, &temp("bad3").1, &mut |_| {}).unwrap_err();
    assert!(err.to_string().contains("train-images-idx3-ubyte"), "{err}");
}

// ---- resuming, threads ----

/// A short run that exercises every part of the state: BatchNorm's running statistics,
/// dropout's draws, Adam's moments and the cosine schedule.
fn resumable() -> TrainConfig {
    let mut config = small(LossKind::Am);
    config.hidden = vec![32];
    config.batch_norm = true;
    config.epochs = 4;
    config.data.pairs = 200;
    config
}

fn bits(t: &Tensor<f32>) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

fn assert_same_params(a: &Params<f32>, b: &Params<f32>) {
    assert_eq!(a.len(), b.len());
    for (i, j) in a.ids().zip(b.ids()) {
        assert_eq!(a.name(i), b.name(j));
        assert_eq!(a.get(i).shape(), b.get(j).shape(), "{}", a.name(i));
        assert!(
            bits(a.get(i)) == bits(b.get(j)),
            "{} differs in its bits",
            a.name(i)
        );
    }
}

fn assert_same_optimizer(a: &OptimizerState<f32>, b: &OptimizerState<f32>) {
    assert_eq!((&a.method, &a.groups), (&b.method, &b.groups));
    assert_eq!(a.lr_factor.to_bits(), b.lr_factor.to_bits());
    assert_eq!(a.per_param.len(), b.per_param.len());
    for (i, (x, y)) in a.per_param.iter().zip(&b.per_param).enumerate() {
        let (Some(x), Some(y)) = (x, y) else {
            assert!(x.is_none() && y.is_none(), "slot {i}");
            continue;
        };
        assert_eq!(x.steps, y.steps, "slot {i}");
        assert!(bits(&x.first) == bits(&y.first), "slot {i}: first moment");
        assert!(
            bits(&x.second) == bits(&y.second),
            "slot {i}: second moment"
        );
    }
}

/// Trains `config`, keeping a copy of the checkpoint written after epoch `keep`.
fn train_keeping(config: &TrainConfig, out: &Path, keep: usize) -> PathBuf {
    let kept = out.with_extension(format!("epoch{keep}.bin"));
    let model = out.join(CHECKPOINT_FILE);
    train(config, out, &mut |e| {
        if let Event::Epoch(r) = e
            && r.epoch == keep
        {
            std::fs::copy(&model, &kept).unwrap();
        }
    })
    .unwrap();
    kept
}

/// The single-process trainer is the loop written out below from the public step, bit for bit:
/// per epoch the cosine learning rate, the run's generator shuffling the training set into
/// batches (the last one shorter: 1,437 samples in batches of 100) and then drawing the dropout
/// masks step by step, augmentation seeded by the seed, the epoch and the step, and the mean
/// loss over the samples. The checkpoint holds the same parameters, optimiser state and
/// generator.
#[test]
fn one_process_trains_bit_for_bit_as_the_loop_over_its_steps_written_out() {
    use margrad::optim::{LrSchedule, Method, Optimizer, Schedule};
    use margrad::train::{model_config, model_step};
    let config = TrainConfig {
        hidden: vec![32],
        embed_dim: 8,
        dropout: 0.3,
        augment: Some(Augment {
            translate: 1,
            erase: 0.5,
        }),
        epochs: 2,
        batch: 100,
        optimizer: MethodName::Sgd,
        lr: 0.05,
        momentum: 0.9,
        ..TrainConfig::default()
    };
    let (_scratch, out) = temp("written-out");
    let metrics = train(&config, &out, &mut |_| {}).unwrap();

    let data = prepare_data(&config.data).unwrap();
    assert!(!data.train.len().is_multiple_of(config.batch));
    let mut rng = margrad::seeded_rng(config.seed);
    let mut params = Params::new();
    let shape = model_config(&config, data.train.dim(), data.train.classes).unwrap();
    let model = margrad::nn::Model::new(shape, &mut params, &mut rng).unwrap();
    let sgd = Method::Sgd {
        momentum: config.momentum,
        nesterov: true,
    };
    let mut optimizer = Optimizer::new(sgd, &params, config.lr, config.weight_decay).unwrap();
    let schedule = LrSchedule {
        schedule: Schedule::Cosine {
            total: config.epochs,
            min_factor: 0.01,
        },
        warmup: 0,
    };
    let augment = config.augment.unwrap();
    for epoch in 1..=config.epochs {
        optimizer.set_lr_factor(schedule.factor(epoch - 1));
        let (mut loss_sum, mut samples) = (0.0, 0);
        let batches = data.train.shuffled_batches(config.batch, &mut rng);
        for (index, (x, labels)) in batches.enumerate() {
            let x = augment.apply(&x, [1, 8, 8], config.seed, epoch as u64, index as u64 + 1);
            let outcome =
                model_step(&model, &mut params, &mut optimizer, &mut rng, x, &labels).unwrap();
            loss_sum += outcome.loss * labels.len() as f64;
            samples += labels.len();
        }
        let loss = loss_sum / samples as f64;
        let recorded = metrics.history[epoch - 1].loss;
        assert_eq!(
            loss.to_bits(),
            recorded.to_bits(),
            "epoch {epoch}: {loss} vs {recorded}"
        );
    }
    let saved = checkpoint::load::<f32>(&out.join(CHECKPOINT_FILE)).unwrap();
    assert_same_params(&saved.params, &params);
    let training = saved.training.unwrap();
    assert_same_optimizer(&training.optimizer, optimizer.state());
    assert_eq!(training.rng, rng);
}

#[test]
fn a_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does() {
    let config = resumable();
    let (_scratch, straight_dir) = temp("straight");
    let kept = train_keeping(&config, &straight_dir, 2);
    let straight = checkpoint::load::<f32>(&straight_dir.join(CHECKPOINT_FILE)).unwrap();

    // the same run, stopped after its second epoch and resumed from that checkpoint
    let (_scratch, resumed_dir) = temp("resumed");
    let mut resumed_config = config.clone();
    resumed_config.resume = Some(kept.clone());
    let mut seen = Vec::new();
    let metrics = train(&resumed_config, &resumed_dir, &mut |e| match e {
        Event::Resumed { from, epoch } => seen.push(format!("resumed {} {epoch}", from.display())),
        Event::Epoch(r) => seen.push(format!("epoch {}", r.epoch)),
        Event::Step { .. } | Event::Communication { .. } => {}
    })
    .unwrap();
    assert_eq!(
        seen,
        [
            format!("resumed {} 2", kept.display()),
            "epoch 3".into(),
            "epoch 4".into()
        ]
    );
    let resumed = checkpoint::load::<f32>(&resumed_dir.join(CHECKPOINT_FILE)).unwrap();
    assert_eq!(resumed.model, straight.model);
    assert_same_params(&resumed.params, &straight.params);
    let (a, b) = (resumed.training.unwrap(), straight.training.unwrap());
    assert_same_optimizer(&a.optimizer, &b.optimizer);
    assert_eq!((a.epoch, &a.rng), (4, &b.rng));

    // the whole history, the first two epochs' records carried over from the checkpoint
    let figures = |h: &[margrad::metrics::EpochRecord]| -> Vec<(usize, u64, u64, u64)> {
        h.iter()
            .map(|r| {
                let bits = f64::to_bits;
                (
                    r.epoch,
                    bits(r.loss),
                    bits(r.train_accuracy),
                    bits(r.test_accuracy),
                )
            })
            .collect()
    };
    assert_eq!(figures(&a.history), figures(&b.history));
    assert_eq!(figures(&metrics.history), figures(&b.history));
    assert_eq!(a.history[..2], b.history[..2], "carried over as recorded");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(resumed_dir.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(json["history"].as_array().unwrap().len(), 4);
    assert_eq!(json["config"]["resume"], kept.display().to_string());
    let straight_metrics: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(straight_dir.join("metrics.json")).unwrap())
            .unwrap();
    assert_eq!(json["final"], straight_metrics["final"]);
}

fn resume_error(config: &TrainConfig, name: &str) -> (ResumeError, String) {
    match train(config, &temp(name).1, &mut |_| {}) {
        Err(e @ TrainError::Resume { .. }) => {
            let message = e.to_string();
            let TrainError::Resume { reason, .. } = e else {
                unreachable!()
            };
            (reason, message)
        }
        Err(e) => panic!("expected a resume error, got {e}"),
        Ok(_) => panic!("resumed"),
    }
}

#[test]
fn resuming_another_model_or_optimiser_is_refused_by_name() {
    let mut config = resumable();
    config.epochs = 2;
    let (_scratch, out) = temp("to-resume");
    let kept = train_keeping(&config, &out, 1);
    let mut other = config.clone();
    other.resume = Some(kept.clone());
    other.hidden = vec![48];
    let (reason, message) = resume_error(&other, "other-model");
    assert_eq!(
        reason,
        ResumeError::Mismatch {
            setting: "model.embedder.layers[0].config.outputs".into(),
            checkpoint: "32".into(),
            config: "48".into()
        }
    );
    assert_eq!(
        message,
        format!(
            "cannot resume from {}: it was trained with model.embedder.layers[0].config.outputs = 32, the \
             configuration says 48 (resume with the interrupted run's settings)",
            kept.display()
        )
    );
    let mut other = config.clone();
    other.resume = Some(kept.clone());
    other.loss.margin = 0.2;
    let (reason, _) = resume_error(&other, "other-margin");
    assert!(
        matches!(&reason, ResumeError::Mismatch { setting, .. } if setting.starts_with("model.head")),
        "{reason}"
    );
    let mut other = config.clone();
    other.resume = Some(kept.clone());
    other.lr = 0.01;
    let (reason, _) = resume_error(&other, "other-lr");
    assert_eq!(
        reason,
        ResumeError::Mismatch {
            setting: "optimizer.groups[0].lr".into(),
            checkpoint: "0.005".into(),
            config: "0.01".into()
        }
    );
    // a run already as long as asked
    let mut done = config.clone();
    done.resume = Some(kept.clone());
    done.epochs = 1;
    let (reason, message) = resume_error(&done, "done");
    assert_eq!(
        reason,
        ResumeError::Finished {
            completed: 1,
            epochs: 1
        }
    );
    assert!(message.ends_with("nothing is left to train"), "{message}");
    // a model saved without its training state
    let (_scratch, bare) = temp("bare.bin");
    let Checkpoint { model, params, .. } = checkpoint::load::<f32>(&kept).unwrap();
    checkpoint::save(&bare, &model, &params, None).unwrap();
    let mut inference_only = config.clone();
    inference_only.resume = Some(bare);
    assert_eq!(
        resume_error(&inference_only, "bare").0,
        ResumeError::NoTrainingState
    );
}

#[test]
fn resuming_from_a_missing_or_truncated_file_is_a_clear_error() {
    let mut config = resumable();
    config.epochs = 2;
    let (_scratch, out) = temp("to-truncate");
    let kept = train_keeping(&config, &out, 1);
    config.resume = Some(temp("nowhere").1.join(CHECKPOINT_FILE));
    let (reason, message) = resume_error(&config, "missing");
    assert!(
        matches!(reason, ResumeError::Checkpoint(CheckpointError::Io { .. })),
        "{reason}"
    );
    assert!(message.starts_with("cannot resume from "), "{message}");

    let bytes = std::fs::read(&kept).unwrap();
    std::fs::write(&kept, &bytes[..bytes.len() / 2]).unwrap();
    config.resume = Some(kept);
    let (reason, message) = resume_error(&config, "truncated");
    assert!(
        matches!(
            reason,
            ResumeError::Checkpoint(CheckpointError::Truncated { part: "body", .. })
        ),
        "{reason}"
    );
    assert!(message.contains("truncated checkpoint"), "{message}");
}

#[test]
fn one_thread_and_two_give_the_same_bits() {
    let run = |threads: usize| {
        let mut config = resumable();
        config.epochs = 2;
        config.threads = Some(threads);
        let (_scratch, out) = temp(&format!("threads-{threads}"));
        let mut seen = 0;
        train(&config, &out, &mut |_| seen = rayon::current_num_threads()).unwrap();
        assert_eq!(seen, threads, "the run is on a pool of {threads}");
        checkpoint::load::<f32>(&out.join(CHECKPOINT_FILE)).unwrap()
    };
    let (one, two) = (run(1), run(2));
    assert_same_params(&one.params, &two.params);
    assert_same_optimizer(
        &one.training.unwrap().optimizer,
        &two.training.unwrap().optimizer,
    );
}

// ---- data ----

fn idx(magic: [u8; 4], dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    dims.iter()
        .for_each(|d| out.extend_from_slice(&d.to_be_bytes()));
    out.extend_from_slice(data);
    out
}

#[test]
fn idx_files_are_validated() {
    let ok = idx([0, 0, 8, 2], &[2, 3], &[1, 2, 3, 4, 5, 6]);
    let a = parse_idx(&ok, "t").unwrap();
    assert_eq!((a.dims, a.data), (vec![2, 3], vec![1, 2, 3, 4, 5, 6]));
    let message = |bytes: &[u8]| parse_idx(bytes, "t").unwrap_err().to_string();
    assert_eq!(
        message(&idx([0, 0, 9, 1], &[1], &[0])),
        "malformed t at magic: expected element type 0x08 (unsigned byte), found 0x09"
    );
    assert!(message(&idx([1, 0, 8, 1], &[1], &[0])).contains("expected bytes 0-1 to be zero"));
    assert_eq!(
        message(&idx([0, 0, 8, 2], &[2, 3], &[1, 2, 3])),
        "malformed t at data: dimensions [2, 3] need 6 bytes, found 3"
    );
    assert!(message(&[0, 0, 8, 3, 0, 0]).contains("3 dimensions need 16 header bytes"));
    // a header whose dimensions overflow claims no allocation, only an error
    let overflow = message(&idx([0, 0, 8, 3], &[u32::MAX, u32::MAX, u32::MAX], &[]));
    assert!(
        overflow.contains(&format!(
            "hold more elements than a {}-bit count reaches (their product overflows)",
            usize::BITS
        )),
        "{overflow}"
    );
}

fn write_mnist(dir: &Path, images: usize, labels: &[u8]) {
    std::fs::create_dir_all(dir).unwrap();
    let pixels = vec![7u8; images * 784];
    std::fs::write(
        dir.join("train-images-idx3-ubyte"),
        idx([0, 0, 8, 3], &[images as u32, 28, 28], &pixels),
    )
    .unwrap();
    std::fs::write(
        dir.join("train-labels-idx1-ubyte"),
        idx([0, 0, 8, 1], &[labels.len() as u32], labels),
    )
    .unwrap();
}

#[test]
fn mnist_files_must_agree() {
    let (_scratch, dir) = temp("mnist-ok");
    write_mnist(&dir, 3, &[1, 2, 3]);
    let d = load_mnist(&dir, MnistSplit::Train).unwrap();
    assert_eq!(
        (d.len(), d.dim(), d.labels.clone()),
        (3, 784, vec![1, 2, 3])
    );
    let (_scratch, dir) = temp("mnist-count");
    write_mnist(&dir, 3, &[1, 2]);
    let err = load_mnist(&dir, MnistSplit::Train).unwrap_err().to_string();
    assert!(
        err.contains("expected [3] labels to match 3 images, found [2]"),
        "{err}"
    );
    let (_scratch, dir) = temp("mnist-label");
    write_mnist(&dir, 2, &[1, 12]);
    assert!(matches!(
        load_mnist(&dir, MnistSplit::Train),
        Err(Error::LabelOutOfRange {
            index: 1,
            label: 12,
            classes: 10
        })
    ));
}

#[test]
fn synthetic_data_is_seeded_and_the_holdout_is_disjoint() {
    let config = SyntheticConfig {
        identities: 20,
        train_per_identity: 5,
        test_per_identity: 3,
        ..Default::default()
    };
    let (train_a, test_a) = synthetic(&config).unwrap();
    let (train_b, _) = synthetic(&config).unwrap();
    assert_eq!(train_a, train_b);
    assert_eq!((train_a.len(), test_a.len(), train_a.dim()), (100, 60, 128));
    let settings = DataSettings {
        source: DataSource::Synthetic(config),
        holdout_classes: 8,
        pairs: 100,
        seed: 0,
    };
    let data = prepare_data(&settings).unwrap();
    assert_eq!((data.train.classes, data.verify.classes), (12, 8));
    assert_eq!(data.verify.len(), 8 * 3);
    // the unseen identities' samples are not among the trained ones
    let rows = |d: &margrad::data::Dataset| -> Vec<Vec<u32>> {
        d.features
            .data()
            .chunks(d.dim())
            .map(|r| r.iter().map(|v| v.to_bits()).collect())
            .collect()
    };
    let trained = rows(&data.train);
    assert!(rows(&data.verify).iter().all(|r| !trained.contains(r)));
    let bad = SyntheticConfig {
        identities: 0,
        ..Default::default()
    };
    assert!(matches!(
        synthetic(&bad),
        Err(Error::InvalidSetting {
            name: "identities",
            ..
        })
    ));
    let _ = Tensor::<f32>::zeros(&[1]);
}

#[test]
fn an_output_that_cannot_be_written_is_named_as_such() {
    // the folder itself: a file stands where it should be
    let (_scratch, blocked) = temp("blocked-folder");
    std::fs::write(&blocked, b"a file").unwrap();
    let mut config = small(LossKind::Am);
    config.epochs = 1;
    match train(&config, &blocked, &mut |_| {}) {
        Err(TrainError::Output { path, .. }) => assert_eq!(path, blocked),
        other => panic!("expected an output error, got {other:?}"),
    }
    // a figure: a folder stands where loss.svg goes, put there after the checkpoint was written
    let (_scratch, out) = temp("blocked-figure");
    let err = train(&config, &out, &mut |e| {
        if let Event::Epoch(_) = e {
            std::fs::create_dir_all(out.join("loss.svg")).unwrap();
        }
    })
    .unwrap_err();
    let TrainError::Output { path, .. } = &err else {
        panic!("expected an output error, got {err:?}")
    };
    assert_eq!(path, &out.join("loss.svg"));
    assert!(err.to_string().starts_with("cannot write "), "{err}");
    assert!(!err.to_string().contains("checkpoint"), "{err}");
    let _ = std::fs::remove_dir_all(&out);
    let _ = std::fs::remove_file(&blocked);
}

#[test]
fn a_step_that_overflows_the_weights_is_refused_after_the_update() {
    use margrad::optim::{Method, Optimizer};
    use margrad::train::{StepError, train_step};
    let mut params = margrad::Params::<f32>::new();
    let w = params.add("w", Tensor::ones(&[1, 4]));
    let sgd = Method::Sgd {
        momentum: 0.0,
        nesterov: false,
    };
    // a finite rate and finite gradients (100 each) whose product overflows f32
    let mut optimizer = Optimizer::new(sgd, &params, 3e38, 0.0).unwrap();
    let labels = margrad::Labels::new(vec![0], 1).unwrap();
    let mut rng = margrad::seeded_rng(0);
    let x = Tensor::full(&[1, 4], 100.0);
    let err = train_step(&mut params, &mut optimizer, &mut rng, &labels, |cx| {
        let loss = (cx.graph().constant(x) * cx.param(w)).sum();
        Ok((loss, None))
    })
    .unwrap_err();
    match err {
        StepError::NonFinite { what, value } => {
            assert_eq!(what, "w after the update");
            assert!(value.is_infinite(), "{value}");
        }
        other => panic!("expected a non-finite parameter, got {other:?}"),
    }
}

#[test]
fn a_learning_rate_infinite_in_f32_is_refused_before_training() {
    let mut config = small(LossKind::Am);
    config.lr = 1e39;
    let (_scratch, out) = temp("lr-1e39");
    match train(&config, &out, &mut |_| {}) {
        Err(TrainError::Input(Error::InvalidSetting { name, .. })) => {
            assert_eq!(name, "learning rate")
        }
        other => panic!("expected an invalid learning rate, got {other:?}"),
    }
    assert!(!out.join(CHECKPOINT_FILE).exists());
}

#[test]
fn an_empty_data_set_is_refused_before_training() {
    let (_scratch, dir) = temp("mnist-empty");
    write_mnist(&dir, 0, &[]);
    // a test split with samples, so that only the training split is empty
    let pixels = vec![7u8; 3 * 784];
    let test_images = idx([0, 0, 8, 3], &[3, 28, 28], &pixels);
    std::fs::write(dir.join("t10k-images-idx3-ubyte"), test_images).unwrap();
    let test_labels = idx([0, 0, 8, 1], &[3], &[1, 2, 3]);
    std::fs::write(dir.join("t10k-labels-idx1-ubyte"), test_labels).unwrap();
    let mut config = small(LossKind::Am);
    config.data.source = DataSource::Mnist { dir: dir.clone() };
    let (_scratch, out) = temp("mnist-empty-out");
    let err = train(&config, &out, &mut |_| {}).unwrap_err();
    match &err {
        TrainError::Input(Error::EmptyData { what }) => assert_eq!(what, "training samples"),
        other => panic!("expected empty training data, got {other:?}"),
    }
    assert!(err.to_string().starts_with("no training samples"), "{err}");
    assert!(!out.join("metrics.json").exists() && !out.join(CHECKPOINT_FILE).exists());
}

// ---- settings that only some runs read ----

#[test]
fn the_settings_each_loss_reads_are_the_ones_its_formula_uses() {
    use margrad::loss::ArcFallback;
    use margrad::train::Setting;
    // a setting is read when changing it changes the loss a kind builds
    let base = TrainConfig::default().loss;
    for kind in LossKind::ALL {
        let settings = margrad::loss::LossSettings {
            kind,
            ..base.clone()
        };
        let built = settings.head_loss().unwrap();
        for setting in Setting::ALL {
            let mut changed = settings.clone();
            let extra = &mut changed.extra;
            match setting {
                Setting::Scale => changed.scale = 17.0,
                Setting::Margin => changed.margin = 0.11,
                Setting::NontargetMargin => changed.nontarget_margin = Some(0.07),
                Setting::TargetDivisor => changed.target_divisor = Some(1.3),
                Setting::Combined => changed.combined = (1.2, 0.1, 0.05),
                Setting::Fallback => changed.fallback = ArcFallback::EasyMargin,
                Setting::AdaFaceH => extra.adaface_h = 0.5,
                Setting::StateMomentum => extra.state_momentum = 0.1,
                Setting::MagFace => extra.magface_lambda_g = 20.0,
                Setting::Subcenters => extra.subcenters = 2,
                Setting::SphereFace2 => extra.sphereface2_t = 2.0,
                Setting::MarginStd => extra.margin_std = 0.1,
                Setting::Momentum => continue,
            }
            let read = changed.head_loss().unwrap() != built;
            assert_eq!(
                setting.read_by(kind, MethodName::Adam),
                read,
                "{setting:?} for {}",
                kind.name()
            );
        }
    }
    for (method, reads) in [
        (MethodName::Sgd, true),
        (MethodName::Adam, false),
        (MethodName::AdamW, false),
    ] {
        assert_eq!(Setting::Momentum.read_by(LossKind::Am, method), reads);
    }
}

#[test]
fn fewer_than_20_pairs_are_refused_by_train_and_by_prepare_data_alike() {
    let mut config = small(LossKind::Am);
    config.data.pairs = 10;
    let refused = |e: &Error| matches!(e, Error::InvalidSetting { name: "pairs", .. });
    assert!(refused(&prepare_data(&config.data).unwrap_err()));
    match train(&config, &temp("pairs-10").1, &mut |_| {}) {
        Err(TrainError::Input(e)) => assert!(refused(&e), "{e}"),
        other => panic!("expected too few pairs, got {other:?}"),
    }
}

// ---- memory ----

#[test]
fn settings_too_large_for_memory_are_refused_before_anything_is_allocated() {
    /// A case's name, its change to a small run, the setting named, whether the bytes counted.
    type Case = (&'static str, fn(&mut TrainConfig), &'static str, bool);
    let cases: [Case; 6] = [
        ("threads", |c| c.threads = Some(1 << 40), "threads", true),
        (
            "embed_dim",
            |c| c.embed_dim = 10_000_000_000,
            "embed_dim",
            true,
        ),
        ("hidden", |c| c.hidden = vec![usize::MAX], "hidden", false),
        (
            "hidden-wide",
            |c| c.hidden = vec![100_000_000],
            "hidden",
            true,
        ),
        ("pairs", |c| c.data.pairs = usize::MAX, "pairs", false),
        (
            "test-per-identity",
            |c| {
                c.data.source = DataSource::Synthetic(SyntheticConfig {
                    test_per_identity: usize::MAX,
                    ..SyntheticConfig::default()
                })
            },
            "test_per_identity",
            false,
        ),
    ];
    for (name, change, setting, counted) in cases {
        let mut config = small(LossKind::Am);
        change(&mut config);
        let (_scratch, out) = temp(&format!("too-large-{name}"));
        let err =
            common::in_little_memory(name, || train(&config, &out, &mut |_| {})).expect_err(name);
        let message = err.to_string();
        match err {
            TrainError::Input(Error::TooLarge {
                setting: named,
                needed,
                ..
            }) => {
                assert_eq!(named, setting, "{message}");
                assert_eq!(needed.is_some(), counted, "{message}");
            }
            other => panic!("{name}: expected too large, got {other:?}"),
        }
        assert!(message.starts_with(&format!("{setting} = ")), "{message}");
        assert!(!out.exists(), "{name}: the folder is not touched");
    }
}

#[test]
fn a_footprint_names_its_largest_share_and_the_bytes_needed_and_available() {
    use margrad::train::{DataShape, Footprint};
    let shape = DataShape {
        train: 1000,
        test: 200,
        verify: 200,
        input_dim: 64,
        classes: 10,
    };
    let mut config = small(LossKind::Am);
    config.embed_dim = 1 << 20;
    let footprint = Footprint::of_run(&config, &shape).unwrap();
    let needed = footprint.bytes().unwrap();
    // at least the weights of the last layer and the head, their gradients and Adam's moments
    assert!(needed > (4 * 4 * (64 + 10)) << 20, "{needed}");
    assert_eq!(footprint.check(Some(needed)), Ok(needed));
    assert_eq!(footprint.check(None), Ok(needed));
    let err = footprint.check(Some(needed - 1)).unwrap_err();
    assert_eq!(
        err,
        Error::TooLarge {
            setting: "embed_dim",
            value: 1 << 20,
            needed: Some(needed),
            available: Some(needed - 1),
        }
    );
    let message = err.to_string();
    assert!(
        message.starts_with("embed_dim = 1048576 is too large: the run would hold ")
            && message.contains(&format!("{needed} bytes"))
            && message.contains(&format!("the {} bytes", needed - 1)),
        "{message}"
    );
    // an overflow anywhere is refused, naming the setting
    let mut total = Footprint::new();
    total.add(8, &[("a", usize::MAX / 16)]).unwrap();
    total.add(8, &[("b", usize::MAX / 16)]).unwrap();
    assert!(total.bytes().is_ok());
    total.add(8, &[("c", usize::MAX / 8)]).unwrap();
    assert!(matches!(
        total.bytes(),
        Err(Error::TooLarge { needed: None, .. })
    ));
    assert!(margrad::train::available_memory().is_none_or(|bytes| bytes > 0));
}

#[test]
fn a_cnn_footprint_counts_the_planes_of_every_image_of_the_batch_and_refuses_a_batch_too_large() {
    use margrad::train::{DataShape, Footprint};
    let shape = DataShape {
        train: 60_000,
        test: 10_000,
        verify: 10_000,
        input_dim: 784,
        classes: 10,
    };
    // the first convolution's planes of one image: LeNet++ 32 × 28 × 28, the ResNet 16 × 28 × 28
    for (model, planes) in [
        (ModelKind::LeNetPlusPlus, 32 * 28 * 28u64),
        (ModelKind::ResNet, 16 * 28 * 28),
    ] {
        let footprint = |batch| {
            let config = TrainConfig {
                model,
                batch,
                ..small(LossKind::Am)
            };
            Footprint::of_run(&config, &shape).unwrap()
        };
        let bytes = |batch| footprint(batch).bytes().unwrap();
        // each image more holds at least the value and gradient of those planes
        let per_image = (bytes(2000) - bytes(1000)) / 1000;
        assert!(per_image >= 2 * 4 * planes, "{model:?}: {per_image} bytes");
        // a batch whose first planes alone exceed the memory is refused, naming the batch
        let batch = 60_000;
        let available = batch as u64 * 4 * planes;
        match footprint(batch).check(Some(available)) {
            Err(Error::TooLarge {
                setting: "batch",
                value: 60_000,
                needed: Some(needed),
                available: Some(a),
            }) => assert!(needed > a, "{model:?}: {needed} ≤ {a}"),
            other => panic!("{model:?}: expected the batch refused, got {other:?}"),
        }
    }
}

// ---- the output folder ----

/// A one-epoch run.
fn quick() -> TrainConfig {
    TrainConfig {
        epochs: 1,
        ..small(LossKind::Am)
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn every_file_a_run_writes_is_listed_as_a_run_file() {
    use margrad::train::{EXPORT_FILE, METRICS_FILE, RUN_FILES};
    let mut config = quick();
    config.embed_dim = 2; // draws the embedding too
    let (_scratch, out) = temp("listed");
    train(&config, &out, &mut |_| {}).unwrap();
    let written = files_in(&out);
    for name in &written {
        assert!(RUN_FILES.contains(&name.as_str()), "{name} is not listed");
    }
    assert_eq!(written.len(), RUN_FILES.len(), "{written:?}");
    for name in [CHECKPOINT_FILE, EXPORT_FILE, METRICS_FILE] {
        assert!(written.contains(&name.to_string()));
    }
}

#[test]
fn a_new_run_refuses_a_folder_that_is_not_empty() {
    use margrad::train::FolderError;
    let (_scratch, out) = temp("not-empty");
    train(&quick(), &out, &mut |_| {}).unwrap();
    let before = files_in(&out);
    let metrics_before = std::fs::read(out.join("metrics.json")).unwrap();
    let err = train(&quick(), &out, &mut |_| {}).unwrap_err();
    match &err {
        TrainError::OutputFolder {
            dir,
            reason: FolderError::NotEmpty { found },
        } => {
            assert_eq!((dir, found.as_str()), (&out, "accuracy.svg"));
        }
        other => panic!("expected the folder refused, got {other:?}"),
    }
    assert!(err.to_string().contains("is not empty"), "{err}");
    assert_eq!(files_in(&out), before);
    assert_eq!(
        std::fs::read(out.join("metrics.json")).unwrap(),
        metrics_before
    );
    // a folder with a user's file in it alone is refused too
    let (_scratch, mine) = temp("not-empty-mine");
    std::fs::create_dir_all(&mine).unwrap();
    std::fs::write(mine.join("notes.txt"), b"mine").unwrap();
    assert!(matches!(
        train(&quick(), &mine, &mut |_| {}),
        Err(TrainError::OutputFolder { .. })
    ));
    assert_eq!(files_in(&mine), ["notes.txt"]);
    // an empty folder is a new run's
    let (_scratch, empty) = temp("empty");
    std::fs::create_dir_all(&empty).unwrap();
    train(&quick(), &empty, &mut |_| {}).unwrap();
}

#[test]
fn an_overwrite_removes_only_a_runs_files_and_refuses_a_folder_with_others() {
    use margrad::train::{FolderError, OutputPolicy};
    let (_scratch, out) = temp("overwrite");
    let mut config = quick();
    config.embed_dim = 2;
    train(&config, &out, &mut |_| {}).unwrap();
    assert!(out.join("embedding.svg").exists());
    // the new run draws no embedding: the previous one's is gone, not left behind
    let mut again = quick();
    again.output = OutputPolicy::Overwrite;
    train(&again, &out, &mut |_| {}).unwrap();
    assert!(!out.join("embedding.svg").exists());
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["config"]["embed_dim"], 16);
    // a user's file (or folder) in it: refused, and nothing removed
    for foreign in ["notes.txt", "figures"] {
        let path = out.join(foreign);
        if foreign == "figures" {
            std::fs::create_dir(&path).unwrap();
        } else {
            std::fs::write(&path, b"mine").unwrap();
        }
        let before = files_in(&out);
        match train(&again, &out, &mut |_| {}).unwrap_err() {
            TrainError::OutputFolder {
                reason: FolderError::Foreign { found },
                ..
            } => assert_eq!(found, foreign),
            other => panic!("expected a foreign file, got {other:?}"),
        }
        assert_eq!(files_in(&out), before);
        if foreign == "figures" {
            std::fs::remove_dir(&path).unwrap();
        } else {
            std::fs::remove_file(&path).unwrap();
        }
    }
    // overwriting while resuming would remove the checkpoint it continues
    let mut resuming = again.clone();
    resuming.epochs = 2;
    resuming.resume = Some(out.join(CHECKPOINT_FILE));
    assert!(matches!(
        train(&resuming, &out, &mut |_| {}),
        Err(TrainError::OutputFolder {
            reason: FolderError::OverwriteWhileResuming,
            ..
        })
    ));
    assert!(out.join(CHECKPOINT_FILE).exists());
}

#[test]
fn a_failed_run_leaves_nothing_that_passes_as_complete() {
    use margrad::train::OutputPolicy;
    // a completed run, then a diverging one told to overwrite it
    let (_scratch, out) = temp("overwrite-diverged");
    train(&quick(), &out, &mut |_| {}).unwrap();
    let mut diverging = quick();
    diverging.loss.kind = LossKind::Softmax;
    diverging.optimizer = MethodName::Sgd;
    diverging.momentum = 0.0;
    diverging.lr = 1e30;
    diverging.output = OutputPolicy::Overwrite;
    let err = train(&diverging, &out, &mut |_| {}).unwrap_err();
    assert!(matches!(err, TrainError::Diverged { .. }), "{err}");
    for stale in ["metrics.json", "model.safetensors", "loss.svg", "roc.svg"] {
        assert!(
            !out.join(stale).exists(),
            "{stale} of the previous run left"
        );
    }
    // a resumed run continues in the folder: the final outputs of the run it continues go
    // before it trains, and come back only if it completes
    let (_scratch, out) = temp("resume-in-place");
    let mut config = quick();
    train(&config, &out, &mut |_| {}).unwrap();
    config.epochs = 3;
    config.resume = Some(out.join(CHECKPOINT_FILE));
    let mut outputs_during_training = Vec::new();
    train(&config, &out, &mut |e| {
        if let Event::Epoch(_) = e {
            outputs_during_training = files_in(&out);
        }
    })
    .unwrap();
    assert_eq!(outputs_during_training, [CHECKPOINT_FILE]);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["history"].as_array().unwrap().len(), 3);
}

#[test]
fn a_killed_writers_temporary_file_does_not_hold_the_folder_but_a_live_one_does() {
    use margrad::train::FolderError;
    let dead = {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    };
    let (_scratch, out) = temp("killed-writer");
    std::fs::create_dir_all(&out).unwrap();
    let stale = out.join(format!(".{CHECKPOINT_FILE}.tmp-{dead}-0"));
    std::fs::write(&stale, b"half a checkpoint").unwrap();
    train(&quick(), &out, &mut |_| {}).unwrap();
    assert!(!stale.exists());
    // a live writer's (this process's) stays, and the folder is not a new run's
    let (_scratch, live) = temp("live-writer");
    std::fs::create_dir_all(&live).unwrap();
    let name = format!(".{CHECKPOINT_FILE}.tmp-{}-0", std::process::id());
    std::fs::write(live.join(&name), b"being written").unwrap();
    match train(&quick(), &live, &mut |_| {}).unwrap_err() {
        TrainError::OutputFolder {
            reason: FolderError::NotEmpty { found },
            ..
        } => assert_eq!(found, name),
        other => panic!("expected the folder refused, got {other:?}"),
    }
}

#[test]
fn a_resume_into_the_folder_of_another_run_is_refused_before_it_replaces_its_checkpoint() {
    use margrad::train::FolderError;
    let ((_first_scratch, first), (_second_scratch, second)) =
        (temp("resume-first"), temp("resume-second"));
    train(&quick(), &first, &mut |_| {}).unwrap();
    train(&quick(), &second, &mut |_| {}).unwrap();
    let theirs = std::fs::read(second.join(CHECKPOINT_FILE)).unwrap();
    let mut resuming = quick();
    resuming.epochs = 2;
    resuming.resume = Some(first.join(CHECKPOINT_FILE));
    match train(&resuming, &second, &mut |_| {}).unwrap_err() {
        TrainError::OutputFolder {
            reason: FolderError::OtherCheckpoint,
            ..
        } => {}
        other => panic!("expected the folder refused, got {other:?}"),
    }
    assert_eq!(std::fs::read(second.join(CHECKPOINT_FILE)).unwrap(), theirs);
    // into its own folder, or an empty one, it continues
    let (_scratch, elsewhere) = temp("resume-elsewhere");
    train(&resuming, &elsewhere, &mut |_| {}).unwrap();
    train(&resuming, &first, &mut |_| {}).unwrap();
}

// ---- convolutional models ----

fn cnn(model: ModelKind, data: &Path) -> TrainConfig {
    TrainConfig {
        model,
        embed_dim: 8,
        epochs: 3,
        batch: 16,
        lr: 2e-3,
        data: DataSettings {
            source: DataSource::Mnist {
                dir: data.to_path_buf(),
            },
            holdout_classes: 0,
            pairs: 40,
            seed: 0,
        },
        ..TrainConfig::default()
    }
}

#[test]
fn lenet_and_resnet_train_on_images_and_their_checkpoints_give_the_same_figures() {
    let (_scratch, data) = temp("tiny-mnist");
    common::write_tiny_mnist(&data);
    for model in [ModelKind::LeNetPlusPlus, ModelKind::ResNet] {
        let (_scratch, out) = temp(&format!("cnn-{}", model.name()));
        let config = cnn(model, &data);
        let metrics = train(&config, &out, &mut |_| {}).unwrap();
        let losses: Vec<f64> = metrics.history.iter().map(|r| r.loss).collect();
        assert!(losses[2] < losses[0], "{}: losses {losses:?}", model.name());
        // metrics.json names the model and lists its layers
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap())
                .unwrap();
        assert_eq!(json["config"]["model"], model.name());
        assert_eq!(json["model"]["embedder"]["layers"][0]["kind"], "unflatten");
        // the checkpoint rebuilds the CNN, and verify's path gives the run's figures exactly
        let saved = checkpoint::load::<f32>(&out.join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(saved.model.config(), &metrics.model);
        let prepared = prepare_data(&config.data).unwrap();
        let again = evaluate(&saved.model, &saved.params, &prepared, &config.data).unwrap();
        assert_eq!(again.metrics, metrics.final_metrics, "{}", model.name());
    }
}

#[test]
fn an_augmented_cnn_run_resumed_ends_bit_for_bit_where_an_uninterrupted_one_does() {
    let (_scratch, data) = temp("tiny-mnist-resume");
    common::write_tiny_mnist(&data);
    let config = TrainConfig {
        augment: Some(Augment {
            translate: 2,
            erase: 0.5,
        }),
        ..cnn(ModelKind::ResNet, &data)
    };
    let (_scratch, straight_dir) = temp("cnn-straight");
    let kept = train_keeping(&config, &straight_dir, 1);
    let (_scratch, resumed_dir) = temp("cnn-resumed");
    let resumed = TrainConfig {
        resume: Some(kept),
        ..config.clone()
    };
    train(&resumed, &resumed_dir, &mut |_| {}).unwrap();
    let a = checkpoint::load::<f32>(&straight_dir.join(CHECKPOINT_FILE)).unwrap();
    let b = checkpoint::load::<f32>(&resumed_dir.join(CHECKPOINT_FILE)).unwrap();
    assert_same_params(&a.params, &b.params); // BatchNorm2d's running statistics included
    let (a, b) = (a.training.unwrap(), b.training.unwrap());
    assert_same_optimizer(&a.optimizer, &b.optimizer);
    let figures = |h: &[margrad::metrics::EpochRecord]| -> Vec<[u64; 3]> {
        h.iter()
            .map(|r| [r.loss, r.train_accuracy, r.test_accuracy].map(f64::to_bits))
            .collect()
    };
    assert_eq!(figures(&a.history), figures(&b.history));
    // the augmentation changes the run: without it, other losses
    let (_scratch, plain_dir) = temp("cnn-plain");
    train_keeping(&cnn(ModelKind::ResNet, &data), &plain_dir, 1);
    let plain = checkpoint::load::<f32>(&plain_dir.join(CHECKPOINT_FILE)).unwrap();
    assert_ne!(
        figures(&plain.training.unwrap().history),
        figures(&a.history)
    );
}

#[test]
fn data_a_cnn_cannot_take_is_refused_before_training() {
    let refused = |config: TrainConfig, needle: &str| {
        let (_scratch, out) = temp("cnn-refused");
        match train(&config, &out, &mut |_| panic!("it trained")) {
            Err(TrainError::Input(e)) => assert!(e.to_string().contains(needle), "{e}"),
            Err(e) => panic!("{e}"),
            Ok(_) => panic!("trained"),
        }
        assert!(!out.exists(), "the output folder was touched");
    };
    let lenet = TrainConfig {
        model: ModelKind::LeNetPlusPlus,
        ..TrainConfig::default()
    };
    refused(
        lenet.clone(),
        "the data does not fit the model: --model lenet++ takes 28×28 grey images, --data \
         digits gives 8×8 images",
    );
    let mut synthetic = TrainConfig {
        model: ModelKind::ResNet,
        ..TrainConfig::default()
    };
    synthetic.data.source = DataSource::Synthetic(SyntheticConfig::default());
    refused(
        synthetic.clone(),
        "--data synthetic gives features, not images",
    );
    // augmentation is for images
    synthetic.model = ModelKind::Mlp;
    synthetic.augment = Some(Augment {
        translate: 2,
        erase: 0.0,
    });
    refused(synthetic, "invalid augment");
    let wide = TrainConfig {
        augment: Some(Augment {
            translate: 8,
            erase: 0.0,
        }),
        ..TrainConfig::default()
    };
    refused(
        wide,
        "invalid translate = 8: must be smaller than the image's side",
    );
}

// ---- the losses beyond the softmax family's formula ----

/// The losses that need more than the cosines: their own head ([`ExtendedHead`]).
const EXTENDED: [LossKind; 7] = [
    LossKind::AdaFace,
    LossKind::MagFace,
    LossKind::CurricularFace,
    LossKind::SubcenterArcFace,
    LossKind::SphereFace2,
    LossKind::ElasticFaceArc,
    LossKind::ElasticFaceCos,
];

/// `kind` with its paper's `s` and `m`, on 40 synthetic identities (the last 10 never trained
/// on), an MLP, 6 epochs.
fn synthetic_run(kind: LossKind) -> TrainConfig {
    let mut config = small(kind);
    (config.loss.scale, config.loss.margin) = kind.default_scale_and_margin();
    config.data.source = DataSource::Synthetic(SyntheticConfig {
        identities: 40,
        train_per_identity: 20,
        test_per_identity: 6,
        ..SyntheticConfig::default()
    });
    config.data.holdout_classes = 10;
    config.data.pairs = 600;
    config.epochs = 6;
    config
}

#[test]
fn each_newer_loss_trains_on_a_synthetic_open_set_with_its_papers_settings() {
    for kind in EXTENDED {
        let metrics = train(&synthetic_run(kind), &temp(kind.name()).1, &mut |_| {}).unwrap();
        let (first, last) = (&metrics.history[0], metrics.history.last().unwrap());
        assert!(
            last.loss < 0.8 * first.loss,
            "{}: loss {} -> {}",
            kind.name(),
            first.loss,
            last.loss
        );
        // 30 trained identities: chance is 1/30; unseen pairs: chance is an AUC of 0.5
        let f = &metrics.final_metrics;
        assert!(f.test_accuracy > 0.5, "{}: {f:?}", kind.name());
        assert!(
            f.verification.auc.unwrap() > 0.8,
            "{}: {:?}",
            kind.name(),
            f.verification
        );
        assert!(
            matches!(metrics.model.head, HeadConfig::Extended { .. }),
            "{}",
            kind.name()
        );
    }
}

#[test]
fn the_softmax_family_keeps_its_cosine_head() {
    for kind in LossKind::ALL {
        let head = margrad::train::head_config(&small(kind).loss, 10).unwrap();
        let extended = matches!(head, HeadConfig::Extended { .. });
        assert_eq!(extended, EXTENDED.contains(&kind), "{}", kind.name());
    }
}

#[test]
fn the_newer_losses_refuse_settings_out_of_range_naming_them() {
    type Change = fn(&mut ExtraSettings);
    let cases: [(LossKind, Change, &str); 9] = [
        (LossKind::AdaFace, |x| x.adaface_h = -0.1, "AdaFace h"),
        (
            LossKind::AdaFace,
            |x| x.state_momentum = 0.0,
            "AdaFace momentum",
        ),
        (
            LossKind::CurricularFace,
            |x| x.state_momentum = 1.5,
            "CurricularFace momentum",
        ),
        (
            LossKind::MagFace,
            |x| x.magface_norms = (110.0, 10.0),
            "MagFace upper norm u_a",
        ),
        (
            LossKind::MagFace,
            |x| x.magface_margins = (0.8, 0.45),
            "MagFace upper margin u_m",
        ),
        (
            LossKind::SubcenterArcFace,
            |x| x.subcenters = 0,
            "sub-centres per class K",
        ),
        (
            LossKind::SphereFace2,
            |x| x.sphereface2_lambda = 1.0,
            "SphereFace2 λ",
        ),
        (
            LossKind::SphereFace2,
            |x| x.sphereface2_t = 0.5,
            "SphereFace2 exponent t",
        ),
        (
            LossKind::ElasticFaceArc,
            |x| x.margin_std = f64::NAN,
            "ElasticFace std σ",
        ),
    ];
    for (kind, change, setting) in cases {
        let mut config = small(kind);
        change(&mut config.loss.extra);
        let (_scratch, out) = temp("refused-extended");
        match train(&config, &out, &mut |_| {}) {
            Err(TrainError::Input(Error::InvalidSetting { name, .. })) => {
                assert_eq!(name, setting, "{}", kind.name())
            }
            other => panic!("{}: expected {setting} refused, got {other:?}", kind.name()),
        }
        assert!(!out.exists(), "nothing written for a refused run");
    }
    // the loss's own s and m are checked too
    let mut config = small(LossKind::AdaFace);
    config.loss.margin = 2.0;
    assert!(matches!(
        config.validate(),
        Err(Error::InvalidSetting {
            name: "AdaFace margin m",
            ..
        })
    ));
    // SphereFace2 balances a class against the others: one class is refused
    let sphereface2 = small(LossKind::SphereFace2).loss;
    assert!(matches!(
        margrad::train::head_config(&sphereface2, 1).and_then(|head| {
            let mut params = Params::<f32>::new();
            head.build(&mut params, "head", 4, &mut margrad::seeded_rng(0))
        }),
        Err(Error::InvalidSetting {
            name: "classes",
            ..
        })
    ));
}

/// The value of the one-element tensor `name` in `params`.
fn scalar(params: &Params<f32>, name: &str) -> f32 {
    params.get(params.find(name).unwrap()).data()[0]
}

#[test]
fn a_resumed_run_carries_the_losses_state_and_ends_bit_for_bit_as_an_uninterrupted_one() {
    // AdaFace's norm statistics and CurricularFace's t are carried from batch to batch;
    // ElasticFace draws its margins from the step's generator
    for (kind, state) in [
        (
            LossKind::AdaFace,
            vec![("head.norm_mean", 20.0), ("head.norm_std", 100.0)],
        ),
        (LossKind::CurricularFace, vec![("head.t", 0.0)]),
        (LossKind::ElasticFaceArc, vec![]),
        (LossKind::SphereFace2, vec![]),
    ] {
        let mut config = resumable();
        config.loss.kind = kind;
        (config.loss.scale, config.loss.margin) = kind.default_scale_and_margin();
        let (_scratch, straight_dir) = temp(&format!("straight-{}", kind.name()));
        let kept = train_keeping(&config, &straight_dir, 2);
        let straight = checkpoint::load::<f32>(&straight_dir.join(CHECKPOINT_FILE)).unwrap();
        let halfway = checkpoint::load::<f32>(&kept).unwrap();
        for &(name, start) in &state {
            // the state moved from its start, and the checkpoint holds where it was
            let (saved, end) = (
                scalar(&halfway.params, name),
                scalar(&straight.params, name),
            );
            assert!(
                saved != start && end != saved,
                "{name}: {start} {saved} {end}"
            );
        }
        let mut resumed_config = config.clone();
        resumed_config.resume = Some(kept);
        let (_scratch, resumed_dir) = temp(&format!("resumed-{}", kind.name()));
        let metrics = train(&resumed_config, &resumed_dir, &mut |_| {}).unwrap();
        let resumed = checkpoint::load::<f32>(&resumed_dir.join(CHECKPOINT_FILE)).unwrap();
        assert_eq!(resumed.model, straight.model, "{}", kind.name());
        assert_same_params(&resumed.params, &straight.params);
        // the export holds the bias and the state too, and reloads to the same model
        let export = straight_dir.join(EXPORT_FILE);
        let exported = checkpoint::load_safetensors::<f32>(&export, None).unwrap();
        assert_eq!(exported.model, straight.model, "{}", kind.name());
        assert_same_params(&exported.params, &straight.params);
        let (a, b) = (resumed.training.unwrap(), straight.training.unwrap());
        assert_same_optimizer(&a.optimizer, &b.optimizer);
        let figures = |h: &[margrad::metrics::EpochRecord]| -> Vec<(u64, u64, u64)> {
            let bits = f64::to_bits;
            h.iter()
                .map(|r| (bits(r.loss), bits(r.train_accuracy), bits(r.test_accuracy)))
                .collect()
        };
        assert_eq!(figures(&a.history), figures(&b.history), "{}", kind.name());
        assert_eq!(figures(&metrics.history), figures(&b.history));
    }
}

#[test]
fn metrics_list_each_class_dominant_subcenter() {
    let mut config = small(LossKind::SubcenterArcFace);
    config.loss.extra.subcenters = 2;
    config.epochs = 3;
    let (_scratch, out) = temp("subcenters");
    let metrics = train(&config, &out, &mut |_| {}).unwrap();
    let report = metrics.subcenters.clone().unwrap();
    assert_eq!((report.per_class, report.far_angle_degrees), (2, 75.0));
    assert_eq!(report.dominant.len(), 10);
    assert!(report.dominant.iter().all(|d| matches!(d, Some(0 | 1))));
    assert!(report.far_from_dominant < metrics.data.train_samples);
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    assert_eq!(json["subcenters"]["dominant"].as_array().unwrap().len(), 10);
    // the head holds K centres per class, and predicts with the best of each class's
    let checkpoint = checkpoint::load::<f32>(&out.join(CHECKPOINT_FILE)).unwrap();
    let centres = checkpoint.params.find("head.weight").unwrap();
    assert_eq!(checkpoint.params.get(centres).shape(), [16, 20]);
    // the safetensors export holds them one sub-centre per row and reloads to the same model
    let exported = checkpoint::load_safetensors::<f32>(&out.join(EXPORT_FILE), None).unwrap();
    assert_eq!(exported.model, checkpoint.model);
    assert_same_params(&exported.params, &checkpoint.params);
    // other losses write no such entry
    let plain = train(
        &small(LossKind::ArcFace),
        &temp("no-subcenters").1,
        &mut |_| {},
    )
    .unwrap();
    assert!(plain.subcenters.is_none());
}

/// The norms of the test split's features as a direct computation gives them: the embedder's
/// output on a graph of our own, each row's norm summed by hand.
fn norms_by_hand(model: &margrad::nn::Model, params: &Params<f32>, x: &Tensor<f32>) -> Vec<f64> {
    let g = margrad::Graph::inference();
    let mut cx = margrad::nn::Forward::eval(&g, params);
    let features = model.embed(&mut cx, g.constant(x.clone())).to_tensor();
    let d = features.shape()[1];
    features
        .data()
        .chunks(d)
        .map(|row| {
            row.iter()
                .map(|&v| f64::from(v) * f64::from(v))
                .sum::<f64>()
                .sqrt()
        })
        .collect()
}

#[test]
fn metrics_json_holds_the_test_features_norms_and_magfaces_share_of_its_range() {
    let mut config = small(LossKind::MagFace);
    (config.loss.scale, config.loss.margin) = LossKind::MagFace.default_scale_and_margin();
    // a norm range inside which the digits' small MLP leaves part of its features
    config.loss.extra.magface_norms = (1.2, 2.5);
    config.epochs = 2;
    let (_scratch, out) = temp("norms");
    train(&config, &out, &mut |_| {}).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("metrics.json")).unwrap()).unwrap();
    let (norms, magface) = (
        &json["final"]["feature_norms"],
        &json["final"]["magface_norms"],
    );

    let saved = checkpoint::load::<f32>(&out.join(CHECKPOINT_FILE)).unwrap();
    let data = prepare_data(&config.data).unwrap();
    let a = norms_by_hand(&saved.model, &saved.params, &data.test.features);
    let predicted = saved.model.predict(&saved.params, &data.test.features);
    let right: Vec<bool> = predicted
        .iter()
        .zip(&data.test.labels)
        .map(|(p, l)| p == l)
        .collect();
    let n = a.len() as f64;
    let mean = a.iter().sum::<f64>() / n;
    let std = (a.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
    let mut sorted = a.clone();
    sorted.sort_by(f64::total_cmp);
    // the median of an odd count is its middle element, of an even one the mean of the two
    let half = sorted.len() / 2;
    let median = if sorted.len() % 2 == 1 {
        sorted[half]
    } else {
        (sorted[half - 1] + sorted[half]) / 2.0
    };
    let mean_of = |keep: bool| {
        let picked: Vec<f64> = a
            .iter()
            .zip(&right)
            .filter(|&(_, &r)| r == keep)
            .map(|(&v, _)| v)
            .collect();
        picked.iter().sum::<f64>() / picked.len() as f64
    };
    let close = |key: &str, found: &serde_json::Value, expected: f64| {
        let found = found.as_f64().unwrap_or_else(|| panic!("{key}: {found}"));
        assert!(
            (found - expected).abs() <= 1e-9 * expected.abs().max(1.0),
            "{key}: metrics.json says {found}, the direct computation {expected}"
        );
    };
    assert_eq!(norms["samples"], a.len());
    assert_eq!(norms["correct"], right.iter().filter(|&&r| r).count());
    assert!(right.iter().any(|&r| r) && right.iter().any(|&r| !r));
    close("mean", &norms["mean"], mean);
    close("std", &norms["std"], std);
    close("min", &norms["min"], sorted[0]);
    close("max", &norms["max"], *sorted.last().unwrap());
    close("median", &norms["median"], median);
    close("mean_correct", &norms["mean_correct"], mean_of(true));
    close("mean_wrong", &norms["mean_wrong"], mean_of(false));
    for key in ["p5", "p25", "p75", "p95"] {
        let q = norms[key].as_f64().unwrap();
        assert!(sorted[0] <= q && q <= *sorted.last().unwrap(), "{key} {q}");
    }

    // MagFace: the shares at the ends of [l_a, u_a] = [1.2, 2.5] and the mean of
    // m(a) = 0.45 + 0.35·(clamp(a, 1.2, 2.5) − 1.2)/1.3
    let share = |keep: &dyn Fn(f64) -> bool| a.iter().filter(|&&v| keep(v)).count() as f64 / n;
    let (below, above) = (share(&|v| v <= 1.2), share(&|v| v >= 2.5));
    // some norms clamped, some inside the range, where the margin interpolates
    assert!(
        below + above > 0.0 && below + above < 1.0,
        "{below} {above}"
    );
    let margin = |v: f64| 0.45 + 0.35 * (v.clamp(1.2, 2.5) - 1.2) / 1.3;
    close("l_a", &magface["lower_norm"], 1.2);
    close("u_a", &magface["upper_norm"], 2.5);
    close("at_or_below_lower", &magface["at_or_below_lower"], below);
    close("at_or_above_upper", &magface["at_or_above_upper"], above);
    close(
        "mean_margin",
        &magface["mean_margin"],
        a.iter().map(|&v| margin(v)).sum::<f64>() / n,
    );
    std::fs::remove_dir_all(&out).unwrap();
}
