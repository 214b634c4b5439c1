//! The embedded digits, and clear errors for malformed data.

mod common;
use margrad::data::{Dataset, digits, parse_digits_csv};
use margrad::{Error, Tensor};

fn row(pixels: &str, label: &str) -> String {
    let mut fields = vec![pixels; 64];
    fields.push(label);
    fields.join(",")
}

#[test]
fn embedded_digits_are_whole() {
    let d = digits();
    assert_eq!(d.len(), 1797);
    assert_eq!(d.dim(), 64);
    assert_eq!(d.classes, 10);
    let mut counts = [0usize; 10];
    d.labels.iter().for_each(|&l| counts[l] += 1);
    assert!(
        counts.iter().all(|&c| (170..=190).contains(&c)),
        "{counts:?}"
    );
    let max = d.features.data().iter().copied().fold(0.0f32, f32::max);
    assert_eq!(max, 1.0);
}

#[test]
fn parses_a_valid_file() {
    let text = format!("{}\n{}\n", row("0", "3"), row("16", "9"));
    let d = parse_digits_csv(&text, "t.csv").unwrap();
    assert_eq!(d.labels, vec![3, 9]);
    assert_eq!(d.features.shape(), &[2, 64]);
    assert_eq!(d.features.data()[64], 1.0);
}

#[test]
fn malformed_rows_name_the_line_and_what_is_wrong() {
    let good = row("1", "2");
    let cases = [
        (
            "1,2,3".to_string(),
            "line 2: expected 65 comma-separated fields, found 3",
        ),
        (
            row("x", "2"),
            "line 2: field 1 is \"x\", expected an integer",
        ),
        (row("17", "2"), "line 2: pixel 1 is 17, expected 0..=16"),
        (row("1", "10"), "line 2: label is 10, expected 0..10"),
        (
            row("-1", "1"),
            "line 2: field 1 is \"-1\", expected an integer",
        ),
    ];
    for (bad, expected) in cases {
        let err = parse_digits_csv(&format!("{good}\n{bad}\n"), "t.csv").unwrap_err();
        assert_eq!(err.to_string(), format!("malformed t.csv at {expected}"));
    }
    assert_eq!(
        parse_digits_csv("\n", "t.csv").unwrap_err(),
        Error::EmptyBatch
    );
}

#[test]
fn dataset_checks_counts_labels_and_values() {
    let f = Tensor::<f32>::zeros(&[3, 2]);
    assert!(matches!(
        Dataset::new(f.clone(), vec![0, 1], 2),
        Err(Error::DataLength { .. })
    ));
    assert!(matches!(
        Dataset::new(f.clone(), vec![0, 1, 2], 2),
        Err(Error::LabelOutOfRange { index: 2, .. })
    ));
    let mut nan = f;
    nan.data_mut()[3] = f32::NAN;
    assert!(matches!(
        Dataset::new(nan, vec![0, 1, 1], 2),
        Err(Error::NonFinite { index: 3, .. })
    ));
}

#[test]
fn split_is_seeded_disjoint_and_complete() {
    let d = digits();
    let (train, test) = d.split(0.2, &mut common::rng(1));
    let (train2, _) = d.split(0.2, &mut common::rng(1));
    assert_eq!(train, train2);
    assert_eq!(test.len(), 359);
    assert_eq!(train.len() + test.len(), d.len());
    let total = |s: &Dataset| s.features.data().iter().map(|&v| v as f64).sum::<f64>();
    assert!((total(&train) + total(&test) - total(&d)).abs() < 1e-3);
}
