//! The losses beyond the softmax family against the fused AM-Softmax and against their composed
//! twins: forward + backward from `[256, C]` cosines (`[256, 3C]` for three sub-centres per
//! class), f32, both cores. AdaFace, MagFace, CurricularFace and ElasticFace-Arc are timed at
//! C = 100 000 in a second table.
//!
//! `cargo bench --bench losses_beyond` (`-- --adaptive-only` for the second table alone)

#[path = "harness.rs"]
mod harness;

use margrad::loss::composed::{
    adaface_loss_composed, curricularface_loss_composed, elasticface_loss_composed,
    magface_loss_composed, margin_cross_entropy_composed, max_over_subcenters_composed,
    sphereface2_loss_composed,
};
use margrad::loss::{
    AdaFace, AdaFaceNorms, ArcFallback, CurricularFace, CurricularFaceState, ElasticFace, MagFace,
    MarginLoss, Reduction, SphereFace2, adaface_loss, curricularface_loss, elasticface_loss,
    magface_loss, margin_cross_entropy_with, max_over_subcenters, sphereface2_loss,
};
use margrad::{Graph, Labels, Tensor};
use rand::SeedableRng;

const K: usize = 3;

fn am(cos: &Tensor<f32>, labels: &Labels) {
    let loss = MarginLoss::am(30.0, 0.35).expect("valid");
    let g = Graph::new();
    let x = g.leaf(cos.clone());
    let out = margin_cross_entropy_with(x, labels, &loss, Reduction::Mean, None).expect("valid");
    std::hint::black_box(out.backward());
}

fn subcenter_arcface(cos: &Tensor<f32>, labels: &Labels, composed: bool) {
    let loss = MarginLoss::arcface(64.0, 0.5, ArcFallback::Threshold).expect("valid");
    let g = Graph::new();
    let x = g.leaf(cos.clone());
    let out = if composed {
        let c = max_over_subcenters_composed(x, K).expect("K ≥ 1");
        margin_cross_entropy_composed(c, labels, &loss, Reduction::Mean, None)
    } else {
        let c = max_over_subcenters(x, K).expect("K ≥ 1");
        margin_cross_entropy_with(c, labels, &loss, Reduction::Mean, None)
    };
    std::hint::black_box(out.expect("valid").backward());
}

fn sphereface2(cos: &Tensor<f32>, labels: &Labels, composed: bool) {
    let loss = SphereFace2::default();
    let g = Graph::new();
    let x = g.leaf(cos.clone());
    let b = g.leaf(Tensor::from_vec(vec![-10.0f32], &[1]).expect("one value"));
    let which = if composed {
        sphereface2_loss_composed
    } else {
        sphereface2_loss
    };
    let out = which(x, b, labels, &loss, Reduction::Mean, None).expect("valid");
    std::hint::black_box(out.backward());
}

/// One batch of the norm-aware and curriculum losses: cosines, labels, feature norms, and the
/// margins ElasticFace drew for it.
struct Batch {
    cos: Tensor<f32>,
    labels: Labels,
    norms: Tensor<f32>,
    margins: Vec<f64>,
}

fn adaface(batch: &Batch, composed: bool) {
    let (loss, stats) = (AdaFace::default(), AdaFaceNorms::default());
    let g = Graph::new();
    let x = g.leaf(batch.cos.clone());
    let a = g.constant(batch.norms.clone());
    let which = if composed {
        adaface_loss_composed
    } else {
        adaface_loss
    };
    let out = which(x, a, &batch.labels, &loss, &stats, Reduction::Mean, None).expect("valid");
    std::hint::black_box(out.backward());
}

fn magface(batch: &Batch, composed: bool) {
    let loss = MagFace::default();
    let g = Graph::new();
    let x = g.leaf(batch.cos.clone());
    let a = g.leaf(batch.norms.clone());
    let which = if composed {
        magface_loss_composed
    } else {
        magface_loss
    };
    let out = which(x, a, &batch.labels, &loss, Reduction::Mean, None).expect("valid");
    std::hint::black_box(out.backward());
}

fn curricularface(batch: &Batch, composed: bool) {
    let (loss, state) = (CurricularFace::default(), CurricularFaceState { t: 0.3 });
    let g = Graph::new();
    let x = g.leaf(batch.cos.clone());
    let which = if composed {
        curricularface_loss_composed
    } else {
        curricularface_loss
    };
    let out = which(x, &batch.labels, &loss, &state, Reduction::Mean, None).expect("valid");
    std::hint::black_box(out.backward());
}

fn elasticface(batch: &Batch, composed: bool) {
    let loss = ElasticFace::arc();
    let g = Graph::new();
    let x = g.leaf(batch.cos.clone());
    let which = if composed {
        elasticface_loss_composed
    } else {
        elasticface_loss
    };
    let out = which(
        x,
        &batch.labels,
        &loss,
        &batch.margins,
        Reduction::Mean,
        None,
    );
    std::hint::black_box(out.expect("valid").backward());
}

/// AdaFace, MagFace, CurricularFace and ElasticFace-Arc at `[256, 100 000]`: the fused ops
/// interleaved with the fused AM-Softmax, then each fused op interleaved with its composed twin.
fn norm_and_curriculum_losses(rng: &mut rand::rngs::Xoshiro256PlusPlus) {
    let (b, classes) = (256, 100_000);
    let cos = Tensor::<f32>::rand_uniform(&[b, classes], -1.0, 1.0, rng);
    let labels =
        Labels::new((0..b).map(|i| (i * 7919) % classes).collect(), classes).expect("in range");
    let batch = Batch {
        cos,
        labels,
        norms: Tensor::rand_uniform(&[b], 5.0, 120.0, rng),
        margins: ElasticFace::arc().draw_margins(b, rng).expect("valid"),
    };
    type Loss = fn(&Batch, bool);
    let losses: [(&str, Loss); 4] = [
        ("AdaFace", adaface),
        ("MagFace", magface),
        ("CurricularFace", curricularface),
        ("ElasticFace-Arc", elasticface),
    ];
    let batch = &batch;
    let mut fused: Vec<Box<dyn FnMut()>> = vec![Box::new(|| am(&batch.cos, &batch.labels))];
    for &(_, run) in &losses {
        fused.push(Box::new(move || run(batch, false)));
    }
    let mut refs: Vec<&mut dyn FnMut()> = fused.iter_mut().map(|f| &mut **f as _).collect();
    let t: Vec<f64> = harness::interleaved(7, 0.3, &mut refs)
        .into_iter()
        .map(|s| s * 1e3)
        .collect();
    println!();
    println!("forward+backward from [256, 100 000] cosines, f32: median ms");
    println!("(fused: 7 rounds interleaved with the fused AM-Softmax; composed: 3 rounds");
    println!(" interleaved with its fused op)");
    println!(
        "{:>16} {:>9} {:>9} {:>10} {:>10} {:>9}",
        "loss", "fused", "x AM", "fused'", "composed", "comp/fused'"
    );
    println!("{:>16} {:>9.2}", "AM-Softmax", t[0]);
    for (i, &(name, run)) in losses.iter().enumerate() {
        let mut pair: [Box<dyn FnMut()>; 2] = [
            Box::new(|| run(batch, false)),
            Box::new(|| run(batch, true)),
        ];
        let mut refs: Vec<&mut dyn FnMut()> = pair.iter_mut().map(|f| &mut **f as _).collect();
        let p: Vec<f64> = harness::interleaved(3, 0.3, &mut refs)
            .into_iter()
            .map(|s| s * 1e3)
            .collect();
        println!(
            "{name:>16} {:>9.2} {:>8.2}x {:>10.2} {:>10.1} {:>8.1}x",
            t[i + 1],
            t[i + 1] / t[0],
            p[0],
            p[1],
            p[1] / p[0]
        );
    }
}

fn main() {
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
    if std::env::args().any(|a| a == "--adaptive-only") {
        return norm_and_curriculum_losses(&mut rng);
    }
    let b = 256;
    println!("forward+backward from [256, C] cosines, f32: median ms of 5 interleaved rounds");
    println!(
        "{:>7} {:>9} {:>13} {:>13} {:>13} {:>13} {:>13}",
        "C", "AM fused", "AM on 3C", "subc. fused", "subc. comp.", "SF2 fused", "SF2 comp."
    );
    for classes in [10_000, 100_000] {
        let cos = Tensor::<f32>::rand_uniform(&[b, classes], -1.0, 1.0, &mut rng);
        let wide = Tensor::<f32>::rand_uniform(&[b, classes * K], -1.0, 1.0, &mut rng);
        let labels =
            Labels::new((0..b).map(|i| (i * 7919) % classes).collect(), classes).expect("in range");
        let wide_labels = Labels::new(labels.values().to_vec(), classes * K).expect("in range");
        let composed_too = classes <= 10_000; // the composed twins hold a dozen B×C tensors
        let mut runs: Vec<Box<dyn FnMut()>> = vec![
            Box::new(|| am(&cos, &labels)),
            Box::new(|| subcenter_arcface(&wide, &labels, false)),
            Box::new(|| sphereface2(&cos, &labels, false)),
            Box::new(|| am(&wide, &wide_labels)),
        ];
        if composed_too {
            runs.push(Box::new(|| subcenter_arcface(&wide, &labels, true)));
            runs.push(Box::new(|| sphereface2(&cos, &labels, true)));
        }
        let mut refs: Vec<&mut dyn FnMut()> = runs.iter_mut().map(|f| &mut **f as _).collect();
        let t: Vec<f64> = harness::interleaved(5, 0.2, &mut refs)
            .into_iter()
            .map(|s| s * 1e3)
            .collect();
        let cell = |i: usize| {
            t.get(i).map_or("-".to_string(), |&ms| {
                format!("{ms:.2} ({:.1}x)", ms / t[0])
            })
        };
        println!(
            "{classes:>7} {:>9.2} {:>13} {:>13} {:>13} {:>13} {:>13}",
            t[0],
            cell(3),
            cell(1),
            cell(4),
            cell(2),
            cell(5)
        );
    }
    println!("(x: time relative to the fused AM-Softmax of the same C; AM on 3C: the same cosines");
    println!(" as sub-centre ArcFace reads, K = 3 columns a class)");
    norm_and_curriculum_losses(&mut rng);
}
