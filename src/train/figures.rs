//! The run's figures: what each shows, its title, axes and series, drawn by [`crate::plot`].

use super::{DataSource, Evaluation, Metrics, PreparedData};
use crate::Params;
use crate::loss::{LossKind, LossSettings};
use crate::metrics::EpochRecord;
use crate::nn::Model;
use crate::plot::{Axis, Series, embedding_figure, line_chart};

/// At most this many test samples are drawn in the embedding figure.
const MAX_EMBEDDING_POINTS: usize = 3000;

/// Points of the chance line TAR = FAR, spread evenly over its decades.
const CHANCE_POINTS: usize = 60;

/// The loss with its settings, as a title names it: `am (s = 30, m = 0.35)`.
fn loss_name(loss: &LossSettings) -> String {
    let (s, m) = (loss.scale, loss.margin);
    let (m1, m2, m3) = loss.combined;
    match loss.kind {
        LossKind::Softmax => "softmax".to_string(),
        LossKind::NormFace => format!("normface (s = {s})"),
        LossKind::Combined => format!("combined (s = {s}, m1 = {m1}, m2 = {m2}, m3 = {m3})"),
        kind => format!("{} (s = {s}, m = {m})", kind.name()),
    }
}

/// What the data set's classes are called, and the data set's name.
fn class_noun(source: &DataSource) -> (&'static str, &'static str) {
    match source {
        DataSource::Digits => ("digit", "digits"),
        DataSource::Mnist { .. } => ("digit", "MNIST"),
        DataSource::Synthetic(_) => ("identity", "synthetic identities"),
    }
}

/// The run's figures as `(file name, SVG)`: the training loss and the accuracies per epoch,
/// the ROC of the verification pairs, and for a 2-D or 3-D embedding the normalised
/// embeddings of the test split.
pub(super) fn figures(
    model: &Model,
    params: &Params<f32>,
    data: &PreparedData,
    metrics: &Metrics,
    evaluation: &Evaluation,
) -> Vec<(&'static str, String)> {
    let config = &metrics.config;
    let (noun, data_name) = class_noun(&config.data.source);
    let run = format!("{} on {data_name}", loss_name(&config.loss));
    let history = &metrics.history;
    let curve = |f: fn(&EpochRecord) -> f64| -> Vec<(f64, f64)> {
        history.iter().map(|r| (r.epoch as f64, f(r))).collect()
    };
    let mut out = vec![
        (
            "loss.svg",
            line_chart(
                &format!("Training loss per epoch: {run}"),
                Axis::integer("epoch"),
                Axis::linear("mean training loss per sample (nats)"),
                &[Series::new("training loss", curve(|r| r.loss))],
            ),
        ),
        (
            "accuracy.svg",
            line_chart(
                &format!("Top-1 accuracy per epoch: {run}"),
                Axis::integer("epoch"),
                Axis::linear("top-1 accuracy (%)"),
                &[
                    Series::new(
                        "training batches, as trained",
                        curve(|r| 100.0 * r.train_accuracy),
                    ),
                    Series::new(
                        "test split, after the epoch",
                        curve(|r| 100.0 * r.test_accuracy),
                    ),
                ],
            ),
        ),
    ];

    let final_metrics = &metrics.final_metrics;
    let v = &final_metrics.verification;
    let roc = &evaluation.roc;
    let summary = match (v.auc, v.eer) {
        (Some(auc), Some(eer)) => format!("AUC {auc:.4}, EER {eer:.4}"),
        _ => format!("undefined ({})", v.undefined.as_deref().unwrap_or("")),
    };
    let roc_points: Vec<(f64, f64)> = roc
        .far
        .iter()
        .copied()
        .zip(roc.tar.iter().copied())
        .collect();
    let mut roc_series = vec![Series::new(&final_metrics.verification_set, roc_points)];
    // chance, TAR = FAR, over the decades the ROC spans (from its smallest non-zero FAR)
    let smallest_far = roc
        .far
        .iter()
        .copied()
        .filter(|&f| f > 0.0)
        .fold(1.0, f64::min);
    if smallest_far < 1.0 {
        let lo = smallest_far.log10();
        let chance = (0..CHANCE_POINTS)
            .map(|k| {
                let far = 10f64.powf(lo * (1.0 - k as f64 / (CHANCE_POINTS - 1) as f64));
                (far, far)
            })
            .collect();
        roc_series.push(Series::reference("chance (TAR = FAR)", chance));
    }
    out.push((
        "roc.svg",
        line_chart(
            &format!("ROC of {} verification pairs: {summary}", v.pairs),
            Axis::log("false accept rate (log scale)"),
            Axis::linear("true accept rate"),
            &roc_series,
        ),
    ));

    let dim = model.embedding_dim();
    if dim == 2 || dim == 3 {
        let shown = data.test.len().min(MAX_EMBEDDING_POINTS);
        let idx: Vec<usize> = (0..shown).collect();
        let (x, labels) = data.test.batch(&idx);
        let e = model.embeddings(params, &x);
        let points: Vec<Vec<f64>> = e
            .data()
            .chunks(dim)
            .map(|r| r.iter().map(|&v| f64::from(v)).collect())
            .collect();
        out.push((
            "embedding.svg",
            embedding_figure(
                &format!("Normalised {dim}-D embeddings of {shown} test samples: {run}"),
                &points,
                labels.values(),
                noun,
            ),
        ));
    }
    out
}
