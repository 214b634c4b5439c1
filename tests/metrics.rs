//! Evaluation metrics against cases worked out by hand.

use margrad::metrics::{
    Pair, Roc, Verification, balanced_folds, geometry, make_pairs, pair_scores, top1_accuracy,
    verification,
};
use margrad::{Error, Tensor, seeded_rng};
use rand::RngExt;
use rand::seq::SliceRandom;

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
    assert_eq!(roc.auc(), Some(0.75));
    assert_eq!(roc.eer(), Some(0.5));
    assert_eq!(roc.tar_at_far(0.0), Some(0.5));
    assert_eq!(roc.tar_at_far(0.6), Some(1.0));
}

#[test]
fn tied_scores_form_one_point() {
    // all tied: the curve is the diagonal, AUC 0.5
    let roc = Roc::new(&[0.3; 4], &[true, false, true, false]).unwrap();
    assert_eq!(roc.far, [0.0, 1.0]);
    assert_eq!(roc.auc(), Some(0.5));
}

/// Pairs of distinct samples labelled `same`, in the order given.
fn pairs_of(same: &[bool]) -> Vec<Pair> {
    same.iter()
        .enumerate()
        .map(|(i, &same)| Pair {
            a: i,
            b: 1_000_000 + i,
            same,
        })
        .collect()
}

/// What `evaluate` verifies: `make_pairs` on 10 classes, same-class pairs first.
fn drawn_pairs(count: usize, seed: u64) -> Vec<Pair> {
    let labels: Vec<usize> = (0..600).map(|i| i % 10).collect();
    let pairs = make_pairs(&labels, count, &mut seeded_rng(seed));
    assert_eq!(pairs.len(), count);
    pairs
}

#[test]
fn scores_without_information_verify_at_chance() {
    // random scores, independent of the labels, on pairs as make_pairs returns them (all the
    // same-class ones first): about 50%, not the ~0% of folds holding one kind of pair each
    for seed in 0..5 {
        let pairs = drawn_pairs(6000, seed);
        let mut rng = seeded_rng(100 + seed);
        let scores: Vec<f64> = pairs.iter().map(|_| rng.random::<f64>()).collect();
        let v = verification(&pairs, &scores, 10, seed).unwrap();
        let (mean, std) = (v.accuracy_mean.unwrap(), v.accuracy_std.unwrap());
        assert!((mean - 0.5).abs() < 0.03, "seed {seed}: {mean}");
        assert!(std < 0.05, "seed {seed}: {std}");
        assert!((v.auc.unwrap() - 0.5).abs() < 0.03, "{:?}", v.auc);
        assert!((v.eer.unwrap() - 0.5).abs() < 0.03, "{:?}", v.eer);
    }
    // constant scores: one tied point, every threshold predicts a single kind
    let pairs = drawn_pairs(6000, 0);
    let v = verification(&pairs, &vec![0.3; 6000], 10, 0).unwrap();
    assert_eq!(v.accuracy_mean, Some(0.5));
    assert_eq!(v.auc, Some(0.5));
}

#[test]
fn folds_are_balanced() {
    // (same-class, different-class) pairs; the first is LFW's 300 + 300 per fold
    for (p, n) in [
        (3000, 3000),
        (3005, 2995),
        (2999, 3004),
        (1234, 567),
        (10, 10),
        (17, 13),
    ] {
        // same-class first, as make_pairs returns them
        let same: Vec<bool> = (0..p + n).map(|i| i < p).collect();
        let pairs = pairs_of(&same);
        let fold = balanced_folds(&pairs, 10, 7);
        assert_eq!(fold.len(), p + n);
        let (mut size, mut positives) = ([0usize; 10], [0usize; 10]);
        for (i, &f) in fold.iter().enumerate() {
            size[f] += 1;
            positives[f] += usize::from(same[i]);
        }
        let share = p as f64 / (p + n) as f64;
        for k in 0..10 {
            assert!(
                (positives[k] as f64 - share * size[k] as f64).abs() <= 1.0,
                "({p}, {n}) fold {k}: {} of {} same-class, overall share {share}",
                positives[k],
                size[k]
            );
            assert!(positives[k] == p / 10 || positives[k] == p.div_ceil(10));
        }
        let (lo, hi) = (size.iter().min().unwrap(), size.iter().max().unwrap());
        assert!(hi - lo <= 1, "({p}, {n}): fold sizes {size:?}");
        if (p, n) == (3000, 3000) {
            assert_eq!(positives, [300; 10]);
            assert_eq!(size, [600; 10]);
        }
    }
}

#[test]
fn fold_assignment_is_seeded_and_independent_of_pair_order() {
    let pairs = drawn_pairs(2000, 4);
    let fold = balanced_folds(&pairs, 10, 11);
    assert_eq!(fold, balanced_folds(&pairs, 10, 11));
    assert!(fold != balanced_folds(&pairs, 10, 12), "the seed shuffles");
    // the same pairs in another order: each pair keeps its fold
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.shuffle(&mut seeded_rng(5));
    let shuffled: Vec<Pair> = order.iter().map(|&i| pairs[i]).collect();
    let again = balanced_folds(&shuffled, 10, 11);
    for (k, &i) in order.iter().enumerate() {
        assert_eq!(again[k], fold[i], "pair {:?}", pairs[i]);
    }
    // and the figures are the same
    let mut rng = seeded_rng(6);
    let scores: Vec<f64> = pairs
        .iter()
        .map(|p| f64::from(u8::from(p.same)) * 0.3 + rng.random::<f64>())
        .collect();
    let reordered: Vec<f64> = order.iter().map(|&i| scores[i]).collect();
    assert_eq!(
        verification(&pairs, &scores, 10, 11).unwrap(),
        verification(&shuffled, &reordered, 10, 11).unwrap()
    );
}

#[test]
fn fold_thresholds_come_from_the_other_folds() {
    // fold 0 alone has its classes swapped: a threshold chosen on folds 1-9 gets it all wrong
    let same: Vec<bool> = (0..100).map(|i| i % 2 == 0).collect();
    let pairs = pairs_of(&same);
    let fold = balanced_folds(&pairs, 10, 3);
    let scores: Vec<f64> = (0..100)
        .map(|i| match (fold[i] == 0, same[i]) {
            (false, true) | (true, false) => 0.9,
            _ => 0.1,
        })
        .collect();
    let v = verification(&pairs, &scores, 10, 3).unwrap();
    let (mean, std) = (v.accuracy_mean.unwrap(), v.accuracy_std.unwrap());
    assert!((mean - 0.9).abs() < 1e-12, "{mean}");
    assert!((std - 0.3).abs() < 1e-12, "{std}");
}

#[test]
fn a_perfect_separator_verifies_perfectly() {
    let mut rng = seeded_rng(1);
    let pairs = drawn_pairs(6000, 1);
    let scores: Vec<f64> = pairs
        .iter()
        .map(|p| if p.same { 0.8 } else { 0.2 } + rng.random::<f64>() * 0.1)
        .collect();
    let v = verification(&pairs, &scores, 10, 0).unwrap();
    assert_eq!(
        (v.accuracy_mean, v.accuracy_std, v.auc, v.eer),
        (Some(1.0), Some(0.0), Some(1.0), Some(0.0))
    );
    assert_eq!((v.tar_at_far_1e3, v.tar_at_far_1e2), (Some(1.0), Some(1.0)));
    assert_eq!((v.pairs, v.positive_pairs, v.folds), (6000, 3000, 10));
    assert_eq!(v.undefined, None);
    // separated by the smallest gap there is: no float lies midway, the threshold must still
    // fall between the two kinds
    let (low, high) = (0.5, 0.5f64.next_up());
    let scores: Vec<f64> = pairs
        .iter()
        .map(|p| if p.same { high } else { low })
        .collect();
    let v = verification(&pairs, &scores, 10, 0).unwrap();
    assert_eq!((v.accuracy_mean, v.auc), (Some(1.0), Some(1.0)));
}

#[test]
fn non_finite_scores_are_errors() {
    // pairs in make_pairs' order, every score NaN: once AUC 1, EER 0
    let pairs = drawn_pairs(600, 2);
    let same: Vec<bool> = pairs.iter().map(|p| p.same).collect();
    let nan = vec![f64::NAN; 600];
    let err = verification(&pairs, &nan, 10, 0).unwrap_err();
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
    let err = verification(&pairs, &scores, 10, 0).unwrap_err();
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
    let pairs = [
        Pair {
            a: 0,
            b: 1,
            same: true,
        },
        Pair {
            a: 1,
            b: 2,
            same: false,
        },
    ];
    let err = verification(&pairs, &pair_scores(&e, &pairs), 2, 0).unwrap_err();
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
fn figures_of_one_kind_of_pair_are_undefined() {
    let mut rng = seeded_rng(8);
    let scores: Vec<f64> = (0..600).map(|_| rng.random::<f64>()).collect();
    for (kind, same) in [("no different-class", true), ("no same-class", false)] {
        let pairs = pairs_of(&[same; 600]);
        let v = verification(&pairs, &scores, 10, 0).unwrap();
        assert_eq!(
            [
                v.accuracy_mean,
                v.accuracy_std,
                v.auc,
                v.eer,
                v.tar_at_far_1e3,
                v.tar_at_far_1e2
            ],
            [None; 6],
            "{v:?}"
        );
        assert!(v.undefined.as_deref().unwrap().contains(kind), "{v:?}");
        let roc = Roc::new(&scores, &vec![same; 600]).unwrap();
        assert_eq!(
            (roc.auc(), roc.eer(), roc.tar_at_far(0.1)),
            (None, None, None)
        );
        // null in metrics.json, with the reason
        let json = serde_json::to_value(&v).unwrap();
        for key in ["accuracy_mean", "auc", "eer", "tar_at_far_1e-3"] {
            assert!(json[key].is_null(), "{key}: {json}");
        }
        assert!(json["undefined"].is_string());
        assert_eq!(serde_json::from_value::<Verification>(json).unwrap(), v);
    }
    // no pairs at all
    let v = verification(&[], &[], 10, 0).unwrap();
    assert_eq!((v.accuracy_mean, v.auc, v.pairs), (None, None, 0));
    assert_eq!(v.undefined.as_deref(), Some("no pairs"));
    // both kinds, but too few of one for ten folds with both in each: only the accuracy
    let same: Vec<bool> = (0..105).map(|i| i < 5).collect();
    let scores: Vec<f64> = same.iter().map(|&s| if s { 0.9 } else { 0.1 }).collect();
    let v = verification(&pairs_of(&same), &scores, 10, 0).unwrap();
    assert_eq!((v.accuracy_mean, v.accuracy_std), (None, None));
    assert_eq!((v.auc, v.eer), (Some(1.0), Some(0.0)));
    assert!(
        v.undefined.as_deref().unwrap().contains("5 same-class"),
        "{v:?}"
    );
    // a defined run serialises numbers and no reason
    let json =
        serde_json::to_value(verification(&pairs_of(&same), &scores, 5, 0).unwrap()).unwrap();
    assert!(
        json["accuracy_mean"].is_number() && json["undefined"].is_null(),
        "{json}"
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
        Pair {
            a: 0,
            b: 1,
            same: false,
        },
        Pair {
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

// ---- feature norms ----

#[test]
fn feature_norms_on_a_hand_example() {
    use margrad::metrics::{feature_norms, row_norms};
    let features = Tensor::from_vec(vec![3.0f32, 4.0, 0.0, 0.0, 6.0, 8.0], &[3, 2]).unwrap();
    assert_eq!(row_norms(&features), [5.0, 0.0, 10.0]);
    // sorted 1 2 3 4 10: mean 4, variance (9 + 4 + 1 + 0 + 36)/5 = 10; the q-quantile at
    // position 4q; right: 1, 2, 4; wrong: 3, 10
    let n = feature_norms(
        &[10.0, 3.0, 1.0, 4.0, 2.0],
        &[false, false, true, true, true],
    )
    .unwrap();
    let close = |a: f64, b: f64| assert!((a - b).abs() < 1e-12, "{a} against {b}");
    assert_eq!((n.samples, n.correct), (5, 3));
    close(n.mean, 4.0);
    close(n.std, 10f64.sqrt());
    assert_eq!((n.min, n.max), (1.0, 10.0));
    close(n.p5, 1.2);
    close(n.p25, 2.0);
    close(n.median, 3.0);
    close(n.p75, 4.0);
    close(n.p95, 8.8);
    close(n.mean_correct.unwrap(), 7.0 / 3.0);
    close(n.mean_wrong.unwrap(), 6.5);
    // no wrong sample: no mean to report, not a 0
    let all_right = feature_norms(&[2.0], &[true]).unwrap();
    assert_eq!(
        (all_right.mean_correct, all_right.mean_wrong),
        (Some(2.0), None)
    );
    assert_eq!((all_right.p5, all_right.p95), (2.0, 2.0));
    assert!(matches!(
        feature_norms(&[], &[]),
        Err(Error::EmptyData { .. })
    ));
    // a NaN or infinite norm has no mean or quantile to report: an error naming it
    for bad in [f64::NAN, f64::INFINITY] {
        match feature_norms(&[1.0, bad, 2.0], &[true, true, false]) {
            Err(Error::NonFinite { index: 1, .. }) => {}
            other => panic!("{bad}: {other:?}"),
        }
    }
}

#[test]
fn magface_norms_count_the_clamped_ends_and_average_the_margin() {
    use margrad::loss::MagFace;
    use margrad::metrics::magface_norms;
    // l_a = 10, u_a = 110, margins 0.45 to 0.8: m(60) = 0.45 + 0.35·50/100 = 0.625
    let loss = MagFace::default();
    let m = magface_norms(&[5.0, 10.0, 60.0, 110.0, 200.0], &loss).unwrap();
    assert_eq!((m.lower_norm, m.upper_norm), (10.0, 110.0));
    assert_eq!((m.at_or_below_lower, m.at_or_above_upper), (0.4, 0.4));
    let mean = (0.45 + 0.45 + 0.625 + 0.8 + 0.8) / 5.0;
    assert!((m.mean_margin - mean).abs() < 1e-12, "{}", m.mean_margin);
    assert!(matches!(
        magface_norms(&[], &loss),
        Err(Error::EmptyData { .. })
    ));
    assert!(matches!(
        magface_norms(&[20.0, f64::NAN], &loss),
        Err(Error::NonFinite { index: 1, .. })
    ));
}
