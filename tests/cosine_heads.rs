//! The three cosine heads ([`CosineHead`](margrad::nn::CosineHead), centres one class per
//! column; [`CentresHead`](margrad::nn::CentresHead), one class per row;
//! [`ExtendedHead`](margrad::nn::ExtendedHead), the newer losses' head) against checkpoints of
//! each committed in `tests/data/heads/`: every file loads as the model its seeds build, and
//! its scores are the cosines of the stored centres, computed here directly.

use margrad::checkpoint;
use margrad::loss::{AdaFace, ArcFallback, ExtendedLoss, MarginLoss, SphereFace2};
use margrad::nn::{HeadConfig, MlpConfig, Model, ModelConfig, Module};
use margrad::{Graph, Params, Tensor, seeded_rng};
use std::path::PathBuf;

const DIM: usize = 4;
const CLASSES: usize = 3;

/// Each kind of cosine head, by name; the extended head with each thing it can keep besides
/// its centres (sub-centres, running state, a bias).
fn heads() -> Vec<(&'static str, HeadConfig)> {
    let am = MarginLoss::am(30.0, 0.35).unwrap();
    let extended = |loss| HeadConfig::Extended {
        classes: CLASSES,
        loss,
    };
    vec![
        (
            "cosine",
            HeadConfig::Cosine {
                classes: CLASSES,
                loss: am.clone(),
            },
        ),
        (
            "centres",
            HeadConfig::Centres {
                classes: CLASSES,
                loss: am,
            },
        ),
        (
            "subcenter-arcface",
            extended(ExtendedLoss::SubcenterArcFace {
                subcenters: 2,
                loss: MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).unwrap(),
            }),
        ),
        (
            "adaface",
            extended(ExtendedLoss::AdaFace(AdaFace::default())),
        ),
        (
            "sphereface2",
            extended(ExtendedLoss::SphereFace2(SphereFace2::default())),
        ),
    ]
}

/// The model `head` sits on, from seeded draws only (no kernel whose rounding depends on the
/// CPU), its buffers moved off their starting values so that a file's are seen to be read.
fn built(head: HeadConfig) -> (Model<f32>, Params<f32>) {
    let config = ModelConfig {
        embedder: MlpConfig::new(&[5, 6, DIM]).sequential().unwrap(),
        head,
    };
    let mut params = Params::new();
    let model = Model::new(config, &mut params, &mut seeded_rng(21)).unwrap();
    for id in model.head().buffers() {
        params.get_mut(id).data_mut()[0] *= 1.5;
    }
    (model, params)
}

fn fixture_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("tests/data/heads/{name}.margrad"))
}

/// Each class's score computed from `params`' centres in f64: the largest cosine of a feature
/// and the class's `k` centres (rows of `head.weight` when `by_rows`, else columns).
fn cosines_by_hand(
    features: &Tensor<f32>,
    params: &Params<f32>,
    by_rows: bool,
    k: usize,
) -> Vec<f64> {
    let w = params.get(params.find("head.weight").unwrap());
    let columns = CLASSES * k;
    let centre = |j: usize| -> Vec<f64> {
        (0..DIM)
            .map(|d| {
                f64::from(
                    w.data()[if by_rows {
                        j * DIM + d
                    } else {
                        d * columns + j
                    }],
                )
            })
            .collect()
    };
    let unit = |v: Vec<f64>| {
        let norm = v.iter().map(|x| x * x).sum::<f64>().sqrt();
        v.into_iter().map(|x| x / norm).collect::<Vec<f64>>()
    };
    let mut scores = Vec::new();
    for row in features.data().chunks(DIM) {
        let x = unit(row.iter().map(|&v| f64::from(v)).collect());
        for class in 0..CLASSES {
            let best = (0..k)
                .map(|a| {
                    let c = unit(centre(class * k + a));
                    x.iter().zip(&c).map(|(p, q)| p * q).sum::<f64>()
                })
                .fold(f64::NEG_INFINITY, f64::max);
            scores.push(best);
        }
    }
    scores
}

/// To write a missing file: `MARGRAD_WRITE_FIXTURE=1 cargo test --release --test cosine_heads`.
#[test]
fn committed_checkpoints_of_each_cosine_head_load_and_score_their_stored_centres() {
    for (name, head) in heads() {
        let path = fixture_path(name);
        let (model, params) = built(head.clone());
        if !path.exists() && std::env::var_os("MARGRAD_WRITE_FIXTURE").is_some() {
            checkpoint::save(&path, &model, &params, None).unwrap();
        }
        let loaded = checkpoint::load::<f32>(&path)
            .unwrap_or_else(|e| panic!("{name}: {}: {e}", path.display()));
        assert_eq!(loaded.model, model, "{name}");
        assert_eq!(loaded.params.len(), params.len(), "{name}");
        for (a, b) in loaded.params.ids().zip(params.ids()) {
            let (x, y) = (loaded.params.get(a), params.get(b));
            assert_eq!(loaded.params.name(a), params.name(b), "{name}");
            assert_eq!(
                loaded.params.is_trainable(a),
                params.is_trainable(b),
                "{name}"
            );
            assert_eq!(x.shape(), y.shape(), "{name}");
            let bits = |t: &Tensor<f32>| t.data().iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(x), bits(y), "{name}: {}", params.name(b));
        }

        // its scores: the cosines of the stored centres, from the model and from the head alone
        let x = Tensor::randn(&[6, 5], 0.0, 1.0, &mut seeded_rng(22));
        let features = loaded.model.features(&loaded.params, &x);
        let k = match &head {
            HeadConfig::Extended { loss, .. } => loss.subcenters(),
            _ => 1,
        };
        let by_rows = matches!(head, HeadConfig::Centres { .. });
        let expected = cosines_by_hand(&features, &loaded.params, by_rows, k);
        let g = Graph::inference();
        let mut cx = margrad::nn::Forward::eval(&g, &loaded.params);
        let scores = loaded.model.logits(&mut cx, g.constant(x)).to_tensor();
        let alone = checkpoint::load_head::<f32>(&path).unwrap();
        assert_eq!(alone.scores(&features), scores, "{name}");
        assert_eq!(
            Module::<f32>::spec(alone.head()),
            loaded.model.head().spec()
        );
        for (i, (&s, e)) in scores.data().iter().zip(&expected).enumerate() {
            assert!(
                (f64::from(s) - e).abs() < 1e-5,
                "{name}: score {i} is {s}, the stored centres give {e}"
            );
        }
    }
}
