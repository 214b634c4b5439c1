//! The synthetic identities made on demand: the same bits from the same seed whatever the
//! order and the threads, trained and unseen identities apart, and clusters with the
//! statistics the generator states.

use margrad::data::{BatchSampler, IdentitiesConfig, SyntheticIdentities};

fn identities(config: IdentitiesConfig) -> SyntheticIdentities {
    SyntheticIdentities::new(config).unwrap()
}

fn small() -> SyntheticIdentities {
    identities(IdentitiesConfig {
        trained: 1_000_000,
        unseen: 1000,
        ..IdentitiesConfig::default()
    })
}

fn sample(g: &SyntheticIdentities, identity: usize, index: u64) -> Vec<f32> {
    let mut out = vec![0.0; g.input_dim()];
    g.sample_into(identity, index, &mut out);
    out
}

#[test]
fn a_sample_depends_on_the_seed_the_identity_and_the_index_only() {
    let g = small();
    let again = small();
    let a = sample(&g, 999_999, 7);
    // made after others, by another generator of the same settings: the same bits
    let _ = g.features(&[(3, 1), (5, 2)]);
    assert_eq!(sample(&again, 999_999, 7), a);
    assert_ne!(sample(&g, 999_999, 8), a, "another index, another sample");
    assert_ne!(
        sample(&g, 999_998, 7),
        a,
        "another identity, another sample"
    );
    let other_seed = identities(IdentitiesConfig {
        trained: 1_000_000,
        unseen: 1000,
        seed: 1,
        ..IdentitiesConfig::default()
    });
    assert_ne!(
        sample(&other_seed, 999_999, 7),
        a,
        "another seed, another sample"
    );
}

#[test]
fn a_batch_is_the_same_bits_in_any_order_and_on_any_number_of_threads() {
    let g = small();
    let pairs: Vec<(usize, u64)> = (0..300)
        .map(|i| (i * 3331 % 1_000_000, i as u64 % 7))
        .collect();
    let run = |threads: usize, pairs: &[(usize, u64)]| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| g.features(pairs))
    };
    let one = run(1, &pairs);
    let two = run(2, &pairs);
    assert_eq!(one.data(), two.data());
    let reversed: Vec<_> = pairs.iter().rev().copied().collect();
    let back = run(2, &reversed);
    let d = g.input_dim();
    for (i, row) in one.data().chunks(d).enumerate() {
        let j = pairs.len() - 1 - i;
        assert_eq!(row, &back.data()[j * d..(j + 1) * d]);
        assert_eq!(row, sample(&g, pairs[i].0, pairs[i].1).as_slice());
    }
}

#[test]
fn the_batch_of_a_step_is_drawn_from_the_seed_and_the_step_alone() {
    let sampler = BatchSampler::new(1_000_000, 40, 256, 5).unwrap();
    let later = sampler.batch(1234);
    for step in 0..10 {
        let _ = sampler.batch(step);
    }
    assert_eq!(
        sampler.batch(1234),
        later,
        "the same pairs whatever came before"
    );
    assert_ne!(sampler.batch(1235), later);
    assert_eq!(later.len(), 256);
    assert!(later.iter().all(|&(k, j)| k < 1_000_000 && j < 40));
    // identities spread over the whole range: about half of them in the upper half
    let upper = (0..40)
        .flat_map(|s| sampler.batch(s))
        .filter(|&(k, _)| k >= 500_000)
        .count();
    let n = 40 * 256;
    assert!(
        (upper as f64 / n as f64 - 0.5).abs() < 0.03,
        "{upper} of {n}"
    );
    for (identities, samples, batch) in [(0, 1, 1), (1, 0, 1), (1, 1, 0)] {
        assert!(BatchSampler::new(identities, samples, batch, 0).is_err());
    }
}

#[test]
fn unseen_identities_are_never_trained_on() {
    let g = small();
    assert_eq!(g.trained(), 0..1_000_000);
    assert_eq!(g.unseen(), 1_000_000..1_001_000);
    let sampler = BatchSampler::new(g.trained().len(), 40, 512, 0).unwrap();
    for step in 0..50 {
        assert!(
            sampler
                .batch(step)
                .iter()
                .all(|&(k, _)| g.trained().contains(&k))
        );
    }
    let verify = g.dataset(g.unseen(), 0, 3).unwrap();
    assert_eq!((verify.len(), verify.classes), (3000, 1000));
    // relabelled from 0, in order: class c is unseen identity 1,000,000 + c
    assert_eq!(verify.labels[..7], [0, 0, 0, 1, 1, 1, 2]);
    assert_eq!(
        &verify.features.data()[3 * 128..4 * 128],
        sample(&g, 1_000_001, 0).as_slice()
    );
}

#[test]
fn prototypes_are_standard_normal_and_samples_scatter_about_their_centre_with_the_noise() {
    let g = identities(IdentitiesConfig {
        within: 0.0,
        noise: 0.2,
        ..IdentitiesConfig::default()
    });
    // prototypes: N(0, 1) coordinates
    let z: Vec<f64> = (0..2000).flat_map(|k| g.prototype(k)).collect();
    let n = z.len() as f64;
    let mean = z.iter().sum::<f64>() / n;
    let var = z.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 4.0 / n.sqrt(), "prototype mean {mean}");
    assert!((var - 1.0).abs() < 0.03, "prototype variance {var}");
    // with σ_w = 0 a sample is its centre plus N(0, σ_o²) noise on every feature
    let mut residuals = Vec::new();
    for k in 0..50 {
        let centre = g.centre(k);
        for j in 0..40 {
            let x = sample(&g, k, j);
            residuals.extend(x.iter().zip(&centre).map(|(x, c)| f64::from(x - c)));
        }
    }
    let n = residuals.len() as f64;
    let mean = residuals.iter().sum::<f64>() / n;
    let var = residuals.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    assert!(mean.abs() < 4.0 * 0.2 / n.sqrt(), "noise mean {mean}");
    assert!(
        (var.sqrt() - 0.2).abs() < 0.004,
        "noise deviation {}",
        var.sqrt()
    );
}

#[test]
fn an_identitys_samples_are_nearer_each_other_than_other_identities_samples() {
    // the default spread: identities overlap somewhat, but a sample is nearer its own
    // identity's mean than another's nearly always
    let g = identities(IdentitiesConfig::default());
    let data = g.dataset(0..100, 0, 20).unwrap();
    let d = g.input_dim();
    let means: Vec<Vec<f64>> = (0..100)
        .map(|c| {
            let mut m = vec![0.0; d];
            for row in data.features.data()[c * 20 * d..(c + 1) * 20 * d].chunks(d) {
                m.iter_mut()
                    .zip(row)
                    .for_each(|(m, &x)| *m += f64::from(x) / 20.0);
            }
            m
        })
        .collect();
    let dist = |x: &[f32], m: &[f64]| -> f64 {
        x.iter()
            .zip(m)
            .map(|(&x, m)| (f64::from(x) - m).powi(2))
            .sum()
    };
    let nearest_own = data
        .features
        .data()
        .chunks(d)
        .zip(&data.labels)
        .filter(|&(x, &c)| {
            let own = dist(x, &means[c]);
            means
                .iter()
                .enumerate()
                .all(|(o, m)| o == c || dist(x, m) > own)
        })
        .count();
    assert!(
        nearest_own as f64 > 0.95 * data.len() as f64,
        "{nearest_own} of {}",
        data.len()
    );
}

#[test]
fn settings_out_of_range_are_refused_naming_them() {
    for (config, name) in [
        (
            IdentitiesConfig {
                trained: 0,
                ..IdentitiesConfig::default()
            },
            "trained identities",
        ),
        (
            IdentitiesConfig {
                unseen: 0,
                ..IdentitiesConfig::default()
            },
            "unseen identities",
        ),
        (
            IdentitiesConfig {
                train_samples: 0,
                ..IdentitiesConfig::default()
            },
            "training samples",
        ),
        (
            IdentitiesConfig {
                noise: f64::NAN,
                ..IdentitiesConfig::default()
            },
            "noise",
        ),
        (
            IdentitiesConfig {
                within: -1.0,
                ..IdentitiesConfig::default()
            },
            "within-identity",
        ),
        (
            IdentitiesConfig {
                trained: usize::MAX,
                unseen: 2,
                ..IdentitiesConfig::default()
            },
            "unseen identities",
        ),
    ] {
        let message = SyntheticIdentities::new(config).unwrap_err().to_string();
        assert!(message.contains(name), "{message}");
    }
}
