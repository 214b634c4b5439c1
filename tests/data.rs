//! The embedded digits, and clear errors for malformed data.

mod common;
use common::{in_little_memory, within, write_sparse};
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

// ---- IDX files, read without trusting what they claim ----

use margrad::data::{IdxArray, MnistSplit, load_idx, load_mnist, parse_idx};
use std::io::Write;
use std::path::PathBuf;

/// A path `name` in a scratch folder of its own, removed when the returned guard drops.
fn temp(name: &str) -> (common::Scratch, PathBuf) {
    common::scratch_path("data", name)
}

fn idx(dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 8, dims.len() as u8];
    dims.iter()
        .for_each(|d| out.extend_from_slice(&d.to_be_bytes()));
    out.extend_from_slice(data);
    out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn format_message<T: std::fmt::Debug>(result: Result<T, Error>) -> String {
    match result {
        Err(e @ Error::Format { .. }) => e.to_string(),
        other => panic!("expected a format error, found {other:?}"),
    }
}

const GIB: u64 = 1 << 30;

#[test]
fn a_raw_idx_file_claiming_more_than_it_holds_is_refused_before_its_data_are_read() {
    // 2^40 elements claimed by a gigabyte that is all zeros past the header
    let (_scratch, path) = temp("claims-2-40.idx");
    write_sparse(&path, &idx(&[1 << 20, 1 << 20], &[]), GIB);
    let message = in_little_memory("a 1 GiB IDX file claiming 2^40 elements", || {
        format_message(load_idx(&path))
    });
    assert_eq!(
        message,
        format!(
            "malformed {} at data: dimensions [1048576, 1048576] need 1099511627776 bytes, \
             found {}",
            path.display(),
            GIB - 12
        )
    );
    std::fs::remove_file(&path).unwrap();
    // the same through load_mnist: u32::MAX images of 28x28 claimed by a gigabyte
    let (_scratch, dir) = temp("mnist-huge");
    std::fs::create_dir_all(&dir).unwrap();
    write_sparse(
        &dir.join("train-images-idx3-ubyte"),
        &idx(&[u32::MAX, 28, 28], &[]),
        GIB,
    );
    let message = in_little_memory("MNIST images of 1 GiB claiming 2^32 images", || {
        format_message(load_mnist(&dir, MnistSplit::Train))
    });
    assert!(
        message.contains("dimensions [4294967295, 28, 28] need 3367254359280 bytes"),
        "{message}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
    // dimensions whose product overflows: an error, never an allocation
    let message = format_message(parse_idx(&idx(&[u32::MAX; 3], &[1, 2]), "t"));
    assert!(
        message.starts_with(
            "malformed t at data: dimensions [4294967295, 4294967295, 4294967295] hold more \
             elements than a"
        ) && message.contains("(their product overflows)"),
        "{message}"
    );
}

#[test]
fn a_gzip_file_claiming_more_than_it_holds_is_refused() {
    let bytes = gzip(&idx(&[1 << 20, 1 << 20], &[1; 10]));
    let message = in_little_memory("a small gzip claiming 2^40 elements", || {
        format_message(parse_idx(&bytes, "t"))
    });
    assert_eq!(
        message,
        format!(
            "malformed t at data: dimensions [1048576, 1048576] need 1099511627776 bytes, \
             more than a gzip file of {} bytes can inflate to ({} after the header at most)",
            bytes.len(),
            bytes.len() as u64 * 1032 - 12
        )
    );
    // a claim that a file of its size could hold, but this one does not: inflated, counted
    let bytes = gzip(&idx(&[10, 100], &[3; 600]));
    assert_eq!(
        format_message(parse_idx(&bytes, "t")),
        "malformed t at data: dimensions [10, 100] need 1000 bytes, found 600"
    );
}

#[test]
fn a_gzip_stream_longer_than_its_claim_is_read_only_up_to_the_claim() {
    // 16 bytes claimed, 256 MiB of zeros behind them in 1.2 MB of gzip
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(&idx(&[4, 4], &[])).unwrap();
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..256 {
        encoder.write_all(&zeros).unwrap();
    }
    let bytes = encoder.finish().unwrap();
    let message = in_little_memory("gzip holding 256 MiB where 16 bytes are claimed", || {
        format_message(parse_idx(&bytes, "t"))
    });
    assert_eq!(
        message,
        "malformed t at data: dimensions [4, 4] need 16 bytes, found more: the data go on \
         past them"
    );
    // a raw file with one byte too many
    assert_eq!(
        format_message(parse_idx(&idx(&[4, 4], &[0; 17]), "t")),
        "malformed t at data: dimensions [4, 4] need 16 bytes, found 17"
    );
}

#[test]
fn multi_member_gzip_is_read_whole() {
    let raw = idx(&[2, 3], &[1, 2, 3, 4, 5, 6]);
    // members that split the header, and the data, at awkward places
    let mut bytes = Vec::new();
    for part in [&raw[..3], &raw[3..9], &raw[9..14], &raw[14..]] {
        bytes.extend_from_slice(&gzip(part));
    }
    let expected = IdxArray {
        dims: vec![2, 3],
        data: vec![1, 2, 3, 4, 5, 6],
    };
    assert_eq!(parse_idx(&bytes, "t").unwrap(), expected);
    // an empty member at the end changes nothing
    bytes.extend_from_slice(&gzip(&[]));
    assert_eq!(parse_idx(&bytes, "t").unwrap(), expected);
    // and load_mnist reads gzip files of several members
    let (_scratch, dir) = temp("mnist-members");
    std::fs::create_dir_all(&dir).unwrap();
    let images = idx(&[2, 28, 28], &[255; 2 * 784]);
    let labels = idx(&[2], &[4, 7]);
    for (name, file) in [
        ("train-images-idx3-ubyte.gz", &images),
        ("train-labels-idx1-ubyte.gz", &labels),
    ] {
        let half = file.len() / 2;
        let mut members = gzip(&file[..half]);
        members.extend_from_slice(&gzip(&file[half..]));
        std::fs::write(dir.join(name), members).unwrap();
    }
    let d = load_mnist(&dir, MnistSplit::Train).unwrap();
    assert_eq!((d.len(), d.dim(), d.labels.clone()), (2, 784, vec![4, 7]));
    assert!(d.features.data().iter().all(|&p| p == 1.0));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_gzip_stream_cut_anywhere_or_damaged_is_an_error_saying_where() {
    let raw = idx(&[10, 10], &[9; 100]);
    let bytes = gzip(&raw);
    for cut in 1..bytes.len() {
        assert!(
            parse_idx(&bytes[..cut], "t").is_err(),
            "cut at {cut} of {} bytes was accepted",
            bytes.len()
        );
    }
    // cut inside the deflate data, inside the trailer
    let in_data = format_message(parse_idx(&bytes[..bytes.len() / 2], "t"));
    assert!(
        in_data
            .starts_with("malformed t at gzip stream: the stream ends early (a truncated file?)"),
        "{in_data}"
    );
    let in_trailer = format_message(parse_idx(&bytes[..bytes.len() - 4], "t"));
    assert_eq!(
        in_trailer,
        "malformed t at gzip stream: the stream ends early (a truncated file?) after all 100 \
         data bytes, where its trailer or a next member should be: unexpected end of file"
    );
    // a damaged checksum in the trailer
    let mut damaged = bytes.clone();
    let crc = damaged.len() - 8;
    damaged[crc] ^= 1;
    let message = format_message(parse_idx(&damaged, "t"));
    assert!(
        message.starts_with(
            "malformed t at gzip stream: the stream is corrupt after all 100 data bytes"
        ),
        "{message}"
    );
}

#[cfg(unix)]
#[test]
fn an_idx_path_that_is_no_regular_file_is_refused_without_reading() {
    let (_scratch, dir) = temp("mnist-special");
    std::fs::create_dir_all(&dir).unwrap();
    // a directory where the images should be
    let images = dir.join("train-images-idx3-ubyte");
    let _ = std::fs::remove_file(&images);
    std::fs::create_dir_all(&images).unwrap();
    assert_eq!(
        load_mnist(&dir, MnistSplit::Train).unwrap_err().to_string(),
        format!(
            "cannot read {}: it is a directory, not a regular file",
            images.display()
        )
    );
    std::fs::remove_dir(&images).unwrap();
    // a symlink to /dev/zero, which would stream without end
    #[cfg(target_os = "linux")]
    {
        std::os::unix::fs::symlink("/dev/zero", &images).unwrap();
        let at = dir.clone();
        let err = in_little_memory("MNIST images from /dev/zero", || {
            within(10, move || load_mnist(&at, MnistSplit::Train).unwrap_err())
        });
        assert!(
            err.to_string()
                .ends_with("it is a character device, not a regular file"),
            "{err}"
        );
        std::fs::remove_file(&images).unwrap();
    }
    // a named pipe, which would wait for a writer
    match std::process::Command::new("mkfifo").arg(&images).status() {
        Ok(status) if status.success() => {
            let at = dir.clone();
            let err = within(10, move || load_mnist(&at, MnistSplit::Train).unwrap_err());
            assert!(
                err.to_string()
                    .ends_with("it is a named pipe (FIFO), not a regular file"),
                "{err}"
            );
            let at = images.clone();
            assert!(matches!(
                within(10, move || load_idx(&at)),
                Err(Error::Io { .. })
            ));
        }
        other => eprintln!("note: mkfifo unavailable ({other:?}); the FIFO case is skipped"),
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Seeded mutations of a valid IDX file, raw and gzip-compressed: every one parses to the
/// claimed size or is an error; none panics or allocates more than the claim allows.
#[test]
fn the_idx_reader_survives_thousands_of_seeded_mutations() {
    use margrad::seeded_rng;
    use rand::RngExt;
    let pixels: Vec<u8> = (0..3 * 5 * 4).map(|i| (i * 37 % 251) as u8).collect();
    let original = idx(&[3, 5, 4], &pixels);
    let mut rng = seeded_rng(11);
    let (mut accepted, mut rejected) = (0, 0);
    for round in 0..6000 {
        let mut bytes = original.clone();
        for _ in 0..rng.random_range(1..4) {
            if bytes.is_empty() {
                break;
            }
            let at = rng.random_range(0..bytes.len());
            match rng.random_range(0..5) {
                0 => bytes[at] ^= 1 << rng.random_range(0..8),
                1 => bytes[at] = rng.random(),
                2 => bytes.truncate(at),
                3 => {
                    // a huge dimension where a dimension may stand
                    let end = (at + 4).min(bytes.len());
                    bytes[at..end].fill(0xff);
                }
                _ => {
                    let chunk = bytes[at..(at + 8).min(bytes.len())].to_vec();
                    bytes.splice(at..at, chunk);
                }
            }
        }
        // half the rounds go through gzip, so that the damage reaches the inflating reader
        let input = if round % 2 == 0 { gzip(&bytes) } else { bytes };
        match std::panic::catch_unwind(|| parse_idx(&input, "t")) {
            Ok(Ok(array)) => {
                assert_eq!(array.data.len(), array.dims.iter().product::<usize>());
                accepted += 1;
            }
            Ok(Err(Error::Format { .. })) => rejected += 1,
            Ok(Err(other)) => panic!("round {round}: not a format error: {other:?}"),
            Err(_) => panic!("the IDX reader panicked on mutation round {round}"),
        }
    }
    assert!(
        rejected > 4000 && accepted > 100,
        "{rejected} rejected, {accepted} accepted"
    );
}
