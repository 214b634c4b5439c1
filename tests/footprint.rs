//! The memory a run counts before it starts ([`Footprint::of_run`]) against the peak resident
//! memory the run reaches (Linux: `/proc/self/status`). This file holds one test, so that no
//! other test shares the process's peak.

use margrad::data::SyntheticConfig;
use margrad::train::{
    DataSettings, DataShape, DataSource, Footprint, TrainConfig, prepare_data, train,
};

/// The process's resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes, where the
/// system says them.
fn resident() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

#[test]
fn a_run_of_many_steps_holds_no_more_than_it_counted() {
    // 2,000 steps of 8 rows of 2,048 features: each step copies its batch (64 KiB) out of the
    // data set; when each copy stayed in the buffer pool, the run held 128 MiB more than the
    // few MiB it counts
    let config = TrainConfig {
        data: DataSettings {
            source: DataSource::Synthetic(SyntheticConfig {
                identities: 50,
                train_per_identity: 40,
                test_per_identity: 10,
                input_dim: 2048,
                ..SyntheticConfig::default()
            }),
            holdout_classes: 0,
            pairs: 200,
            seed: 0,
        },
        hidden: vec![64],
        embed_dim: 32,
        epochs: 8,
        batch: 8,
        threads: Some(1),
        ..TrainConfig::default()
    };
    let shape = DataShape::of(&prepare_data(&config.data).expect("valid data settings"));
    assert_eq!(shape.train.div_ceil(config.batch) * config.epochs, 2000);
    let counted = Footprint::of_run(&config, &shape)
        .and_then(|f| f.bytes())
        .expect("a small run counts");
    let out = std::env::temp_dir().join(format!("margrad-footprint-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    // the peak starts again from the present, where the system allows it
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = resident();
    train(&config, &out, &mut |_| {}).expect("the run completes");
    let _ = std::fs::remove_dir_all(&out);
    let Some(((before, _), (_, peak))) = before.zip(resident()) else {
        eprintln!("note: resident memory not measurable here, not checked");
        return;
    };
    let held = peak.saturating_sub(before);
    eprintln!(
        "the run added {} MiB to the resident memory; it counted {} MiB",
        held >> 20,
        counted >> 20
    );
    assert!(
        held <= counted,
        "the run raised the resident memory by {} MiB, more than the {} MiB it counted",
        held >> 20,
        counted >> 20
    );
}
