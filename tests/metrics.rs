//! Evaluation metrics against cases worked out by hand.

use margrad::metrics::{Roc, geometry, make_pairs, pair_scores, top1_accuracy, verification};
use margrad::{Error, Tensor, seeded_rng};
use rand::RngExt;

#[test]
fn accuracy() {
    assert_eq!(top1_accuracy(&[0, 1, 2, 2], &[0, 1, 1, 2]), 0.75);
}

#[test]
fn roc_auc_eer_tar_on_a_hand_example() {
    // scores 0.9 (same), 0.8 (diff), 0.7 (same), 0.1 (diff):
    // points (0,0) (0,.5) (.5,.5) (.5,1) (1,1); AUC = .5·.5 + .5·1 = .75
    let roc = Roc::new(&[0.9, 0.8, 0.7, 0.1], &[true, false, true, false]).unwrap();
    assert_eq!(roc.far, [0.0, 0.0, 0.5, 0.5, 1.0]);
    assert_eq!(roc.tar, [0.0, 0.5, 0.5, 1.0, 1.0]);
    assert_eq!(roc.auc(), 0.75);
    assert_eq!(roc.eer(), 0.5);
    assert_eq!(roc.tar_at_far(0.0), 0.5);
    assert_eq!(roc.tar_at_far(0.6), 1.0);
}

#[test]
fn tied_scores_form_one_point() {
    // all tied: the curve is the diagonal, AUC 0.5
    let roc = Roc::new(&[0.3; 4], &[true, false, true, false]).unwrap();
    assert_eq!(roc.far, [0.0, 1.0]);
    assert_eq!(roc.auc(), 0.5);
}

#[test]
fn separable_scores_verify_perfectly_and_random_ones_do_not() {
    let mut rng = seeded_rng(1);
    let same: Vec<bool> = (0..6000).map(|i| i % 2 == 0).collect();
    let separable: Vec<f64> = same
        .iter()
        .map(|&s| if s { 0.8 } else { 0.2 } + rng.random::<f64>() * 0.1)
        .collect();
    let v = verification(&separable, &same, 10).unwrap();
    assert_eq!(
        (v.accuracy_mean, v.accuracy_std, v.auc, v.eer),
        (1.0, 0.0, 1.0, 0.0)
    );
    assert_eq!(
        (v.tar_at_far_1e3, v.pairs, v.positive_pairs),
        (1.0, 6000, 3000)
    );
    let random: Vec<f64> = (0..6000).map(|_| rng.random::<f64>()).collect();
    let v = verification(&random, &same, 10).unwrap();
    assert!((v.auc - 0.5).abs() < 0.03, "{}", v.auc);
    assert!((v.eer - 0.5).abs() < 0.03, "{}", v.eer);
    assert!(v.accuracy_mean < 0.55, "{}", v.accuracy_mean);
}

#[test]
fn fold_thresholds_come_from_the_other_folds() {
    // fold 0 alone has its classes swapped: a threshold chosen on folds 1-9 gets it all wrong
    let n = 100;
    let same: Vec<bool> = (0..n).map(|i| i % 2 == 0).collect();
    let scores: Vec<f64> = (0..n)
        .map(|i| match (i < 10, same[i]) {
            (false, true) | (true, false) => 0.9,
            _ => 0.1,
        })
        .collect();
    let v = verification(&scores, &same, 10).unwrap();
    assert!((v.accuracy_mean - 0.9).abs() < 1e-12, "{}", v.accuracy_mean);
    assert!((v.accuracy_std - 0.3).abs() < 1e-12, "{}", v.accuracy_std);
}

#[test]
fn non_finite_scores_are_errors() {
    // same-class pairs first, as make_pairs returns them, every score NaN: once AUC 1, EER 0
    let same: Vec<bool> = (0..600).map(|i| i < 300).collect();
    let nan = vec![f64::NAN; 600];
    let err = verification(&nan, &same, 10).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFiniteScores {
                count: 600,
                total: 600,
                first: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(Roc::new(&nan, &same).is_err());
    // a few among finite ones, infinities too: counted, the first named
    let mut scores: Vec<f64> = (0..600).map(|i| i as f64 / 600.0).collect();
    scores[7] = f64::INFINITY;
    scores[300] = f64::NAN;
    scores[599] = f64::NEG_INFINITY;
    let err = verification(&scores, &same, 10).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFiniteScores {
                count: 3,
                total: 600,
                first: 7,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("3 of 600"), "{err}");
    let err = Roc::new(&scores, &same).unwrap_err();
    assert!(err.to_string().contains("3 of 600"), "{err}");
    // what a model with non-finite weights gives: NaN embeddings, NaN cosines
    let e = Tensor::from_vec(vec![f32::NAN, 0.0, 1.0, 0.0, 0.0, 1.0], &[3, 2]).unwrap();
    let scores = pair_scores(&e, &[(0, 1), (1, 2)]);
    let err = verification(&scores, &[true, false], 2).unwrap_err();
    assert!(
        matches!(
            err,
            Error::NonFiniteScores {
                count: 1,
                first: 0,
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn pairs_are_distinct_balanced_seeded_and_labelled_right() {
    let labels: Vec<usize> = (0..300).map(|i| i % 7).collect();
    let pairs = make_pairs(&labels, 1000, &mut seeded_rng(3));
    assert_eq!(pairs, make_pairs(&labels, 1000, &mut seeded_rng(3)));
    assert_eq!(pairs.len(), 1000);
    assert_eq!(pairs.iter().filter(|p| p.same).count(), 500);
    let mut keys: Vec<_> = pairs.iter().map(|p| (p.a.min(p.b), p.a.max(p.b))).collect();
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 1000);
    assert!(
        pairs
            .iter()
            .all(|p| p.a != p.b && (labels[p.a] == labels[p.b]) == p.same)
    );
    // too little data: as many as exist
    let few = make_pairs(&[0, 0, 1], 100, &mut seeded_rng(0));
    assert_eq!(few.iter().filter(|p| p.same).count(), 1);
    assert_eq!(few.iter().filter(|p| !p.same).count(), 2);
}

#[test]
fn pair_scores_are_cosine_similarities() {
    let e = Tensor::from_vec(vec![1.0f32, 0.0, 0.0, 2.0, 3.0, 3.0], &[3, 2]).unwrap();
    let pairs = [
        margrad::metrics::Pair {
            a: 0,
            b: 1,
            same: false,
        },
        margrad::metrics::Pair {
            a: 0,
            b: 2,
            same: true,
        },
    ];
    let s = pair_scores(&e, &pairs);
    assert!(
        s[0].abs() < 1e-12 && (s[1] - 0.5f64.sqrt()).abs() < 1e-7,
        "{s:?}"
    );
}

#[test]
fn geometry_of_orthogonal_classes() {
    // class 0 at ±10° around x, class 1 exactly on y: centres 90° apart
    let (c, s) = (10f64.to_radians().cos(), 10f64.to_radians().sin());
    let e = Tensor::from_vec(vec![c, s, c, -s, 0.0, 3.0, 0.0, 1.0], &[4, 2]).unwrap();
    let g = geometry(&e, &[0, 0, 1, 1]);
    assert!((g.intra_angle_deg - 5.0).abs() < 1e-9, "{g:?}"); // (10 + 10 + 0 + 0) / 4
    assert!((g.inter_min_angle_deg - 90.0).abs() < 1e-9);
    assert!((g.inter_mean_angle_deg - 90.0).abs() < 1e-9);
}
