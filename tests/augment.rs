//! Image augmentation: seeded, shape-preserving, shifts that really move the content, erasing at
//! the probability asked for.

use margrad::Tensor;
use margrad::data::Augment;

const IMAGE: [usize; 3] = [1, 12, 10];
const PIXELS: usize = 120;

/// `n` images, each a single lit pixel at (5, 4).
fn dots(n: usize) -> Tensor<f32> {
    Tensor::from_fn(&[n, PIXELS], |i| {
        if i % PIXELS == 5 * 10 + 4 { 1.0 } else { 0.0 }
    })
}

fn lit(row: &[f32]) -> Vec<usize> {
    (0..row.len()).filter(|&i| row[i] != 0.0).collect()
}

#[test]
fn the_same_seed_epoch_and_step_give_the_same_batch_and_others_differ() {
    let x = Tensor::rand_uniform(&[16, PIXELS], 0.0, 1.0, &mut margrad::seeded_rng(0));
    let a = Augment {
        translate: 2,
        erase: 0.5,
    };
    let first = a.apply(&x, IMAGE, 7, 3, 11);
    assert_eq!(first, a.apply(&x, IMAGE, 7, 3, 11));
    for (seed, epoch, step) in [(8, 3, 11), (7, 4, 11), (7, 3, 12)] {
        assert_ne!(
            first,
            a.apply(&x, IMAGE, seed, epoch, step),
            "{seed} {epoch} {step}"
        );
    }
    // on any number of threads: the draws are made in order on the calling thread
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    assert_eq!(first, pool.install(|| a.apply(&x, IMAGE, 7, 3, 11)));
}

#[test]
fn translation_keeps_the_shape_and_moves_each_image_by_at_most_the_shift() {
    let n = 200;
    let a = Augment {
        translate: 2,
        erase: 0.0,
    };
    let y = a.apply(&dots(n), IMAGE, 0, 1, 1);
    assert_eq!(y.shape(), &[n, PIXELS]);
    let mut shifts = std::collections::BTreeSet::new();
    for row in y.data().chunks(PIXELS) {
        // the dot is 4 pixels from every border: a shift of 2 never loses it
        let [at] = lit(row)[..] else {
            panic!("the dot is lost or copied: {:?}", lit(row))
        };
        assert_eq!(row[at], 1.0);
        let (dy, dx) = ((at / 10) as i64 - 5, (at % 10) as i64 - 4);
        assert!(dy.abs() <= 2 && dx.abs() <= 2, "shifted by ({dy}, {dx})");
        shifts.insert((dy, dx));
    }
    // 200 draws of 25 equally likely shifts: all of them appear (a miss has probability < 1e-9)
    assert_eq!(shifts.len(), 25, "{shifts:?}");
}

#[test]
fn content_shifted_past_the_border_is_gone_and_the_border_filled_with_zeros() {
    // an image of ones: after a shift, exactly the uncovered rows and columns are zero
    let a = Augment {
        translate: 3,
        erase: 0.0,
    };
    let y = a.apply(&Tensor::ones(&[50, PIXELS]), IMAGE, 1, 1, 1);
    for row in y.data().chunks(PIXELS) {
        let zero_rows = (0..12).filter(|r| row[r * 10..r * 10 + 10].iter().all(|&v| v == 0.0));
        let zero_cols = (0..10).filter(|c| (0..12).all(|r| row[r * 10 + c] == 0.0));
        let (zr, zc) = (zero_rows.count(), zero_cols.count());
        let ones = row.iter().filter(|&&v| v == 1.0).count();
        assert_eq!(
            ones,
            (12 - zr) * (10 - zc),
            "a shift leaves a rectangle of ones"
        );
        assert!(zr <= 3 && zc <= 3);
    }
}

#[test]
fn erasing_happens_at_about_the_probability_asked_and_only_then() {
    let n = 4000;
    let x = Tensor::ones(&[n, PIXELS]);
    for p in [0.0, 0.3, 1.0] {
        let a = Augment {
            translate: 0,
            erase: p,
        };
        let y = a.apply(&x, IMAGE, 5, 1, 1);
        let erased: Vec<usize> = y
            .data()
            .chunks(PIXELS)
            .map(|row| row.iter().filter(|&&v| v == 0.0).count())
            .collect();
        let rate = erased.iter().filter(|&&z| z > 0).count() as f64 / n as f64;
        // binomial standard deviation at p = 0.3: 0.007; 0.03 is over four of them. A rectangle
        // that fits is found in 10 draws almost always, so the rate is p
        assert!((rate - p).abs() < 0.03, "p = {p}: erased {rate}");
        // an erased rectangle covers 2% to 40% of the image, a little more once its sides are
        // rounded to whole pixels
        for &z in erased.iter().filter(|&&z| z > 0) {
            assert!((1..=PIXELS / 2).contains(&z), "{z} erased");
        }
    }
}

#[test]
fn settings_out_of_range_are_refused() {
    let bad = |translate, erase| Augment { translate, erase }.validate(IMAGE).is_err();
    assert!(bad(10, 0.0)); // the smaller side is 10
    assert!(bad(0, 1.5) && bad(0, -0.1) && bad(0, f64::NAN));
    assert!(!bad(9, 1.0));
}
