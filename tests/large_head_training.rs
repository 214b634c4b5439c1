//! The large-head trainer on a small problem: it learns (verification on unseen identities far
//! above chance), its checkpoint loads and its head alone loads, bad settings and a run too
//! large for memory are refused before anything is allocated, and the stored centres head
//! scores as the blocked head trains.

mod common;

use margrad::checkpoint::{self, load_head};
use margrad::data::IdentitiesConfig;
use margrad::distributed::ClassParallelHead;
use margrad::loss::{BlockedHead, MarginLoss};
use margrad::nn::{CentresHead, HeadConfig, Model, Module};
use margrad::train::{
    LargeHeadConfig, LargeHeadError, LargeHeadEvent, nearest_centres, resume_large_head,
    train_large_head,
};
use margrad::{Error, Graph, Labels, Params, Tensor, seeded_rng};

fn small(sample_rate: f64) -> LargeHeadConfig {
    LargeHeadConfig {
        identities: IdentitiesConfig {
            trained: 600,
            unseen: 100,
            ..IdentitiesConfig::default()
        },
        hidden: vec![64],
        embed_dim: 32,
        block: 128,
        sample_rate,
        batch: 64,
        steps: 200,
        pairs: 2000,
        accuracy_identities: 200,
        ..LargeHeadConfig::default()
    }
}

/// A path `name` in a scratch folder of its own, removed when the returned guard drops.
fn temp(name: &str) -> (common::Scratch, std::path::PathBuf) {
    common::scratch_path("large", name)
}

#[test]
fn the_trainer_learns_an_embedding_that_verifies_unseen_identities_and_saves_it() {
    let (_scratch, path) = temp("full.margrad");
    let config = small(1.0);
    let report = train_large_head(&config, Some(&path), 50, |_| {}).unwrap();
    assert!(
        report.last_loss < 0.5 * report.first_loss,
        "{} -> {}",
        report.first_loss,
        report.last_loss
    );
    let v = &report.verification;
    assert!(v.accuracy_mean.unwrap() > 0.9, "{v:?}");
    assert!(v.eer.unwrap() < 0.1, "{v:?}");
    assert!(
        report.accuracy > 0.5,
        "closed-set accuracy {}",
        report.accuracy
    );

    // the checkpoint: the model, its centres one identity per row, the centres' momentum
    let loaded = checkpoint::load::<f32>(&path).unwrap();
    assert_eq!(loaded.model.config(), &config.model().unwrap());
    let id = loaded.params.find("head.weight").unwrap();
    assert_eq!(loaded.params.get(id).shape(), &[600, 32]);
    let training = loaded.training.unwrap();
    let momentum = training.optimizer.per_param[id.index()].as_ref().unwrap();
    assert_eq!(momentum.first.shape(), &[600, 32]);
    assert!(momentum.first.data().iter().any(|&v| v != 0.0));
    // its head alone predicts as the trainer's blocked argmax does
    let head = load_head::<f32>(&path).unwrap();
    assert!(matches!(
        head.config(),
        HeadConfig::Centres { classes: 600, .. }
    ));
    let e = Tensor::randn(&[20, 32], 0.0, 1.0, &mut seeded_rng(3));
    assert_eq!(
        head.predict(&e),
        nearest_centres(&e, loaded.params.get(id), 128)
    );
}

#[test]
fn class_sampling_trains_too_and_runs_are_deterministic() {
    let config = small(0.2);
    let a = train_large_head(&config, None, 1000, |_| {}).unwrap();
    let b = train_large_head(&config, None, 1000, |_| {}).unwrap();
    assert_eq!(a.last_loss, b.last_loss);
    assert_eq!(a.verification, b.verification);
    assert!(
        a.verification.accuracy_mean.unwrap() > 0.85,
        "{:?}",
        a.verification
    );
}

#[test]
fn bad_settings_and_a_head_too_large_for_memory_are_refused_before_allocating() {
    for (config, name) in [
        (
            LargeHeadConfig {
                sample_rate: 0.0,
                ..small(1.0)
            },
            "class sampling rate",
        ),
        (
            LargeHeadConfig {
                sample_rate: 1.5,
                ..small(1.0)
            },
            "class sampling rate",
        ),
        (
            LargeHeadConfig {
                block: 0,
                ..small(1.0)
            },
            "class block",
        ),
        (
            LargeHeadConfig {
                momentum: 1.0,
                ..small(1.0)
            },
            "momentum",
        ),
    ] {
        let err = train_large_head(&config, None, 1, |_| {}).unwrap_err();
        assert!(
            matches!(&err, LargeHeadError::Input(Error::InvalidSetting { name: n, .. }) if *n == name),
            "{err}"
        );
    }
    // 10¹² identities of 32 features: 128 TB of centres and momentum, refused naming the bytes
    let mut huge = small(1.0);
    huge.identities.trained = 1_000_000_000_000;
    let err = train_large_head(&huge, None, 1, |_| {}).unwrap_err();
    match err {
        LargeHeadError::Input(Error::TooLarge {
            setting, needed, ..
        }) => {
            assert_eq!(setting, "identities");
            assert!(needed.unwrap() > 1_000_000_000_000 * 32 * 8);
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_rank_counts_its_shard_of_the_head_and_no_more_so_its_footprint_falls_with_the_ranks() {
    let config = small(1.0);
    let (c, d) = (config.identities.trained, config.embed_dim as u64);
    let one = config.footprint().unwrap().bytes().unwrap();
    assert_eq!(
        config.footprint_of_rank(0, 1).unwrap().bytes().unwrap(),
        one
    );
    // 600 classes on 7 ranks: shards of 86 and 85; each rank holds its shard and its
    // momentum, never the rest of the head
    for rank in 0..7 {
        let shard = ClassParallelHead::shard_of(c, 7, rank).len() as u64;
        let bytes = config.footprint_of_rank(rank, 7).unwrap().bytes().unwrap();
        assert_eq!(bytes, one - 8 * (c as u64 - shard) * d, "rank {rank}");
    }
    let rank_0 = |ranks| config.footprint_of_rank(0, ranks).unwrap().bytes().unwrap();
    assert!(rank_0(1) > rank_0(2) && rank_0(2) > rank_0(3) && rank_0(3) > rank_0(600));
}

#[test]
fn the_stored_centres_head_gives_the_cosines_and_loss_the_blocked_head_trains() {
    let loss = MarginLoss::enhanced(16.0, 0.3).unwrap();
    let config = margrad::nn::ModelConfig {
        embedder: margrad::nn::MlpConfig::new(&[8, 6]).sequential().unwrap(),
        head: HeadConfig::Centres {
            classes: 9,
            loss: loss.clone(),
        },
    };
    let mut params = Params::<f64>::new();
    let model = Model::new(config, &mut params, &mut seeded_rng(4)).unwrap();
    let head: &dyn Module<f64> = model.head();
    let w_id = head.parameters()[0];
    assert_eq!(params.get(w_id).shape(), &[9, 6]);
    let x = Tensor::<f64>::randn(&[5, 6], 0.0, 1.0, &mut seeded_rng(5));
    let labels = Labels::new(vec![0, 3, 8, 3, 1], 9).unwrap();
    let dense = {
        let g = Graph::new();
        let mut cx = margrad::nn::Forward::eval(&g, &params);
        let l = model
            .head()
            .loss(&mut cx, g.constant(x.clone()), &labels)
            .unwrap();
        l.value().data()[0]
    };
    let blocked = {
        let g = Graph::new();
        let w = g.constant(params.get(w_id).clone());
        let l = BlockedHead::new(loss, 4)
            .unwrap()
            .loss(g.constant(x.clone()), w, &labels)
            .unwrap();
        l.value().data()[0]
    };
    assert!(
        (dense - blocked).abs() < 1e-12 * dense.abs(),
        "{dense} vs {blocked}"
    );
    let _ = CentresHead::KIND;
}

/// The parameters and the training state of a checkpoint, to compare bit for bit.
fn saved_state(path: &std::path::Path) -> (Vec<Vec<u32>>, String) {
    let loaded = checkpoint::load::<f32>(path).unwrap();
    let params = loaded
        .params
        .ids()
        .map(|id| {
            loaded
                .params
                .get(id)
                .data()
                .iter()
                .map(|v| v.to_bits())
                .collect()
        })
        .collect();
    (params, format!("{:?}", loaded.training.unwrap()))
}

#[test]
fn a_resumed_run_ends_bit_for_bit_where_the_uninterrupted_one_does() {
    // sampled classes, so that the generator's state matters too
    let config = LargeHeadConfig {
        steps: 12,
        checkpoint_every: 5,
        ..small(0.3)
    };
    let ((_whole_scratch, whole), (_mid_scratch, mid)) =
        (temp("whole.margrad"), temp("mid.margrad"));
    // the uninterrupted run; the checkpoint it wrote at step 10 is copied aside at step 11
    train_large_head(&config, Some(&whole), 1, |event| {
        let LargeHeadEvent::Steps { step, .. } = event;
        if step == 11 {
            std::fs::copy(&whole, &mid).unwrap();
        }
    })
    .unwrap();
    // a run stopped after 4 steps, resumed to 12
    let ((_stopped_scratch, stopped), (_resumed_scratch, resumed)) =
        (temp("stopped.margrad"), temp("resumed.margrad"));
    let short = LargeHeadConfig {
        steps: 4,
        ..config.clone()
    };
    train_large_head(&short, Some(&stopped), 1000, |_| {}).unwrap();
    let mut steps = Vec::new();
    resume_large_head(&config, &stopped, Some(&resumed), 1, |event| {
        let LargeHeadEvent::Steps { step, .. } = event;
        steps.push(step);
    })
    .unwrap();
    assert_eq!(steps, (5..=12).collect::<Vec<_>>());
    let want = saved_state(&whole);
    assert_eq!(saved_state(&resumed), want, "resumed after 4 steps");
    // from the periodic checkpoint at step 10
    let (_scratch, again) = temp("again.margrad");
    resume_large_head(&config, &mid, Some(&again), 1000, |_| {}).unwrap();
    assert_eq!(saved_state(&again), want, "resumed after 10 steps");
    // the short run differs: the comparison can fail
    assert_ne!(saved_state(&stopped), want);
}

#[test]
fn resuming_from_another_model_or_past_the_end_is_refused() {
    let (_scratch, path) = temp("other.margrad");
    let config = LargeHeadConfig {
        steps: 3,
        ..small(1.0)
    };
    train_large_head(&config, Some(&path), 1000, |_| {}).unwrap();
    let wider = LargeHeadConfig {
        embed_dim: 16,
        ..config.clone()
    };
    let fewer = LargeHeadConfig {
        steps: 2,
        ..config.clone()
    };
    // a checkpoint that already holds every step leaves nothing to run (and no loss to report)
    for other in [wider, fewer, config.clone()] {
        let err = resume_large_head(&other, &path, None, 1000, |_| {}).unwrap_err();
        assert!(
            matches!(err, LargeHeadError::Input(Error::InvalidSetting { .. })),
            "{err}"
        );
    }
    let (_scratch, missing) = temp("missing.margrad");
    let err = resume_large_head(&config, &missing, None, 1000, |_| {}).unwrap_err();
    assert!(matches!(err, LargeHeadError::Checkpoint(_)), "{err}");
}

#[test]
fn resuming_with_other_settings_is_refused_and_only_more_steps_are_accepted() {
    let (_scratch, path) = temp("settings.margrad");
    let config = LargeHeadConfig {
        steps: 2,
        ..small(0.5)
    };
    train_large_head(&config, Some(&path), 1000, |_| {}).unwrap();
    let more = LargeHeadConfig {
        steps: 3,
        checkpoint_every: 1,
        ..config.clone()
    };
    let differ = |other: LargeHeadConfig, named: &str| {
        let err = resume_large_head(&other, &path, None, 1000, |_| {}).unwrap_err();
        match &err {
            LargeHeadError::SettingsDiffer { settings } => {
                assert!(settings.contains(named), "{err}")
            }
            _ => panic!("{err}"),
        }
    };
    differ(
        LargeHeadConfig {
            lr: 0.05,
            ..more.clone()
        },
        "lr",
    );
    differ(
        LargeHeadConfig {
            momentum: 0.5,
            ..more.clone()
        },
        "momentum",
    );
    differ(
        LargeHeadConfig {
            sample_rate: 0.25,
            ..more.clone()
        },
        "sample_rate",
    );
    differ(
        LargeHeadConfig {
            batch: 32,
            ..more.clone()
        },
        "batch",
    );
    let mut reseeded = more.clone();
    reseeded.identities.seed ^= 1;
    differ(reseeded, "identities");
    let report = resume_large_head(&more, &path, None, 1000, |_| {}).unwrap();
    assert_eq!(report.steps_run, 1);

    // a checkpoint written before the settings' fingerprint (epoch count 1) is still read,
    // its learning rate and momentum checked
    let (_scratch, old) = temp("settings-old.margrad");
    let loaded = checkpoint::load::<f32>(&path).unwrap();
    let mut training = loaded.training.unwrap();
    assert_ne!(training.epoch, 1);
    training.epoch = 1;
    checkpoint::save(&old, &loaded.model, &loaded.params, Some(&training)).unwrap();
    resume_large_head(&more, &old, None, 1000, |_| {}).unwrap();
    let err = resume_large_head(
        &LargeHeadConfig {
            lr: 0.05,
            ..more.clone()
        },
        &old,
        None,
        1000,
        |_| {},
    )
    .unwrap_err();
    assert!(
        matches!(err, LargeHeadError::SettingsDiffer { .. }),
        "{err}"
    );
}

#[test]
fn the_first_report_after_a_resume_averages_the_steps_it_covers() {
    let config = LargeHeadConfig {
        steps: 9,
        ..small(1.0)
    };
    // every step's loss, from the uninterrupted run
    let mut losses = Vec::new();
    train_large_head(&config, None, 1, |event| {
        let LargeHeadEvent::Steps { loss, .. } = event;
        losses.push(loss);
    })
    .unwrap();
    let (_scratch, stopped) = temp("report.margrad");
    let short = LargeHeadConfig {
        steps: 4,
        ..config.clone()
    };
    train_large_head(&short, Some(&stopped), 1000, |_| {}).unwrap();
    let mut reports = Vec::new();
    resume_large_head(&config, &stopped, None, 3, |event| {
        let LargeHeadEvent::Steps { step, loss, .. } = event;
        reports.push((step, loss));
    })
    .unwrap();
    // steps 5 and 6, then 7 to 9
    let mean = |steps: std::ops::RangeInclusive<usize>| {
        let n = steps.clone().count() as f64;
        steps.map(|s| losses[s - 1]).sum::<f64>() / n
    };
    assert_eq!(reports.len(), 2);
    assert_eq!(reports[0].0, 6);
    assert!((reports[0].1 - mean(5..=6)).abs() < 1e-9, "{reports:?}");
    assert_eq!(reports[1].0, 9);
    assert!((reports[1].1 - mean(7..=9)).abs() < 1e-9, "{reports:?}");
}
