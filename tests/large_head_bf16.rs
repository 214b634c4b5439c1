//! Centres stored in bfloat16: the blocked step on them is the f32 step on the widened centres
//! bit for bit (every product and sum in f32), the bf16 update is the f32 update rounded to
//! nearest even, and conversions keep 8 significant bits.

mod common;
use common::rng;
use margrad::loss::{Bf16Centres, BlockLoss, BlockedHead, ClassSample, MarginLoss};
use margrad::optim::{sgd_momentum_update, sgd_momentum_update_bf16};
use margrad::{Error, Graph, Labels, Tensor};

struct Problem {
    x: Tensor<f32>,
    w: Bf16Centres,
    labels: Labels,
}

fn problem(b: usize, d: usize, rows: usize, classes: usize, seed: u64) -> Problem {
    let mut rng = rng(seed);
    let x = Tensor::<f32>::randn(&[b, d], 0.0, 1.0, &mut rng);
    let w = Bf16Centres::from_f32(&Tensor::randn(&[rows, d], 0.0, 0.3, &mut rng)).unwrap();
    let labels = Labels::new((0..b).map(|i| (i * 7 + 3) % classes).collect(), classes).unwrap();
    Problem { x, w, labels }
}

/// Loss, ∂x and ∂W (NaN where no gradient came) of the step on f32 centres `w`.
fn f32_step(
    p: &Problem,
    head: &BlockedHead,
    sample: Option<&ClassSample>,
) -> (f32, Tensor<f32>, Tensor<f32>) {
    let mut w = p.w.to_f32();
    let d = w.shape()[1];
    let mut dw = Tensor::full(w.shape(), f32::NAN);
    let g = Graph::new();
    let x = g.leaf(p.x.clone());
    let l = head
        .step(x, &mut w, &p.labels, sample, |first, _, grad| {
            dw.data_mut()[first * d..first * d + grad.len()].copy_from_slice(grad);
        })
        .unwrap();
    (l.item(), l.backward().wrt(x).unwrap().clone(), dw)
}

fn bf16_step(
    p: &Problem,
    head: &BlockedHead,
    sample: Option<&ClassSample>,
) -> (f32, Tensor<f32>, Tensor<f32>) {
    let mut w = p.w.clone();
    let d = w.shape()[1];
    let mut dw = Tensor::full(&w.shape(), f32::NAN);
    let g = Graph::new();
    let x = g.leaf(p.x.clone());
    let loss = BlockLoss::Margin(head.margin_loss());
    let l = head
        .step_bf16(x, &mut w, &p.labels, sample, loss, |first, _, grad| {
            dw.data_mut()[first * d..first * d + grad.len()].copy_from_slice(grad);
        })
        .unwrap();
    assert_eq!(w, p.w, "an update that changes nothing");
    (l.item(), l.backward().wrt(x).unwrap().clone(), dw)
}

fn bits(t: &Tensor<f32>) -> Vec<u32> {
    t.data().iter().map(|v| v.to_bits()).collect()
}

#[test]
fn the_bf16_step_is_the_f32_step_on_the_widened_centres_bit_for_bit() {
    let loss = MarginLoss::am(64.0, 0.35).unwrap();
    for (k, block) in [(1, 7), (1, 100), (3, 5)] {
        let (classes, d) = (40, 16);
        let p = problem(8, d, classes * k, classes, 1);
        let head = BlockedHead::new(loss.clone(), block)
            .unwrap()
            .with_subcenters(k)
            .unwrap();
        let sample = ClassSample::draw(&p.labels, classes, 0.5, &mut rng(2)).unwrap();
        for s in [None, Some(&sample)] {
            let (a, b) = (f32_step(&p, &head, s), bf16_step(&p, &head, s));
            let what = format!("K = {k}, block {block}, sampled {}", s.is_some());
            assert_eq!(a.0.to_bits(), b.0.to_bits(), "{what}: loss");
            assert_eq!(bits(&a.1), bits(&b.1), "{what}: ∂x");
            assert_eq!(bits(&a.2), bits(&b.2), "{what}: ∂W");
        }
    }
}

#[test]
fn the_bf16_update_is_the_f32_update_rounded_to_nearest_even() {
    let mut r = rng(3);
    let n = 10_000; // more than one chunk of the update
    let w0 = Bf16Centres::from_f32(&Tensor::randn(&[n, 1], 0.0, 1.0, &mut r)).unwrap();
    let g = Tensor::<f32>::randn(&[n], 0.0, 1.0, &mut r);
    let v0 = Tensor::<f32>::randn(&[n], 0.0, 0.1, &mut r);

    let (mut w_wide, mut v_wide) = (w0.to_f32(), v0.clone());
    assert!(sgd_momentum_update(
        w_wide.data_mut(),
        v_wide.data_mut(),
        g.data(),
        0.1,
        0.9
    ));
    let want = Bf16Centres::from_f32(&w_wide).unwrap();

    let mut raw: Vec<u16> = w0.bits().to_vec();
    let mut v = v0.clone();
    assert!(sgd_momentum_update_bf16(
        &mut raw,
        v.data_mut(),
        g.data(),
        0.1,
        0.9
    ));
    assert!(
        raw == want.bits(),
        "the bf16 update is not the rounded f32 update"
    );
    assert_eq!(bits(&v), bits(&v_wide), "the velocity is the f32 one");
}

#[test]
fn a_bf16_training_step_is_the_f32_step_rounded() {
    let (classes, d) = (3000, 8);
    let p = problem(16, d, classes, classes, 5);
    let head = BlockedHead::new(MarginLoss::am(30.0, 0.35).unwrap(), 512).unwrap();
    let mut w = p.w.clone();
    let mut velocity = vec![0.0f32; classes * d];
    let g = Graph::new();
    head.step_bf16(
        g.leaf(p.x.clone()),
        &mut w,
        &p.labels,
        None,
        BlockLoss::Margin(head.margin_loss()),
        |first, rows, grad| {
            let v = &mut velocity[first * d..first * d + rows.len()];
            assert!(sgd_momentum_update_bf16(rows, v, grad, 0.1, 0.9));
        },
    )
    .unwrap();
    let mut wide = p.w.to_f32();
    let mut velocity32 = vec![0.0f32; classes * d];
    let g = Graph::new();
    head.step(
        g.leaf(p.x.clone()),
        &mut wide,
        &p.labels,
        None,
        |first, rows, grad| {
            let v = &mut velocity32[first * d..first * d + rows.len()];
            sgd_momentum_update(rows, v, grad, 0.1, 0.9);
        },
    )
    .unwrap();
    assert!(
        w == Bf16Centres::from_f32(&wide).unwrap(),
        "not the rounded f32 step"
    );
    assert!(w != p.w, "the step moved no centre");
    assert_eq!(velocity, velocity32);
}

#[test]
fn conversions_keep_eight_significant_bits_and_refuse_a_non_matrix() {
    let t = Tensor::<f32>::randn(&[50, 20], 0.0, 1.0, &mut rng(4));
    let back = Bf16Centres::from_f32(&t).unwrap().to_f32();
    for (a, b) in t.data().iter().zip(back.data()) {
        assert!((a - b).abs() <= a.abs() * 2f32.powi(-8), "{a} → {b}");
    }
    assert_eq!(Bf16Centres::from_f32(&t).unwrap().bytes(), 2 * 50 * 20);
    assert!(matches!(
        Bf16Centres::from_f32(&Tensor::<f32>::zeros(&[3])),
        Err(Error::InvalidSetting { .. })
    ));
}
