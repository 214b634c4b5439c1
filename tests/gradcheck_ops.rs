//! Every op of the core passes gradcheck (f64) at every shape of `common::SHAPES`.

mod common;
use common::{away_from_zero, check_shapes, positive};
use margrad::{Labels, Tensor};

fn one(
    make: fn(&[usize], &mut common::Rng) -> Tensor<f64>,
) -> impl Fn([usize; 2], &mut common::Rng) -> Vec<Tensor<f64>> {
    move |s, rng| vec![make(&s, rng)]
}

fn two_same(s: [usize; 2], rng: &mut common::Rng) -> Vec<Tensor<f64>> {
    vec![away_from_zero(&s, rng), away_from_zero(&s, rng)]
}

// ---- matrix products: A [m, k] with k = 4 inner, so every edge shape is an outer dimension ----

#[test]
fn matmul() {
    check_shapes(
        |[m, n], rng| vec![away_from_zero(&[m, 4], rng), away_from_zero(&[4, n], rng)],
        |_, v| v[0].matmul(v[1]),
    );
    // the shape itself as the inner dimension
    check_shapes(
        |[m, k], rng| vec![away_from_zero(&[m, k], rng), away_from_zero(&[k, 3], rng)],
        |_, v| v[0].matmul(v[1]),
    );
}

#[test]
fn matmul_nt() {
    check_shapes(
        |[m, n], rng| vec![away_from_zero(&[m, 4], rng), away_from_zero(&[n, 4], rng)],
        |_, v| v[0].matmul_nt(v[1]),
    );
}

#[test]
fn matmul_tn() {
    check_shapes(
        |[m, n], rng| vec![away_from_zero(&[4, m], rng), away_from_zero(&[4, n], rng)],
        |_, v| v[0].matmul_tn(v[1]),
    );
}

#[test]
fn matmul_with_itself_accumulates_both_gradients() {
    check_shapes(one(away_from_zero), |_, v| v[0].matmul_nt(v[0]));
    check_shapes(one(away_from_zero), |_, v| v[0].matmul_tn(v[0]));
}

// ---- elementwise binary, same shape and broadcast ----

#[test]
fn add_sub_mul_div_same_shape() {
    check_shapes(two_same, |_, v| v[0] + v[1]);
    check_shapes(two_same, |_, v| v[0] - v[1]);
    check_shapes(two_same, |_, v| v[0] * v[1]);
    check_shapes(two_same, |_, v| v[0] / v[1]);
}

#[test]
fn binary_ops_broadcast_a_row_vector() {
    let row = |[r, c]: [usize; 2], rng: &mut common::Rng| {
        vec![away_from_zero(&[r, c], rng), away_from_zero(&[c], rng)]
    };
    check_shapes(row, |_, v| v[0] + v[1]);
    check_shapes(row, |_, v| v[0] - v[1]);
    check_shapes(row, |_, v| v[0] * v[1]);
    check_shapes(row, |_, v| v[0] / v[1]);
    let row_2d = |[r, c]: [usize; 2], rng: &mut common::Rng| {
        vec![away_from_zero(&[r, c], rng), away_from_zero(&[1, c], rng)]
    };
    check_shapes(row_2d, |_, v| v[0] + v[1]);
    check_shapes(row_2d, |_, v| v[0] * v[1]);
}

#[test]
fn binary_ops_broadcast_a_column_vector() {
    let col = |[r, c]: [usize; 2], rng: &mut common::Rng| {
        vec![away_from_zero(&[r, c], rng), away_from_zero(&[r, 1], rng)]
    };
    check_shapes(col, |_, v| v[0] + v[1]);
    check_shapes(col, |_, v| v[0] - v[1]);
    check_shapes(col, |_, v| v[0] * v[1]);
    check_shapes(col, |_, v| v[0] / v[1]);
}

#[test]
fn a_node_used_twice_accumulates() {
    check_shapes(one(away_from_zero), |_, v| v[0] * v[0] + v[0]);
    check_shapes(one(away_from_zero), |_, v| (v[0] / v[0].exp()).sum());
}

// ---- elementwise unary ----

#[test]
fn scalar_ops() {
    check_shapes(one(away_from_zero), |_, v| v[0] + 1.5);
    check_shapes(one(away_from_zero), |_, v| v[0] - 0.25);
    check_shapes(one(away_from_zero), |_, v| v[0] * -3.0);
    check_shapes(one(away_from_zero), |_, v| v[0] / 4.0);
    check_shapes(one(away_from_zero), |_, v| -v[0]);
}

#[test]
fn exp_log_sqrt_powf() {
    check_shapes(one(away_from_zero), |_, v| v[0].exp());
    check_shapes(one(positive), |_, v| v[0].log());
    check_shapes(one(positive), |_, v| v[0].sqrt());
    check_shapes(one(positive), |_, v| v[0].powf(2.5));
    check_shapes(one(positive), |_, v| v[0].powf(-1.5));
}

#[test]
fn abs_relu_leaky_relu_away_from_zero() {
    check_shapes(one(away_from_zero), |_, v| v[0].abs());
    check_shapes(one(away_from_zero), |_, v| v[0].relu());
    check_shapes(one(away_from_zero), |_, v| v[0].leaky_relu(0.1));
}

#[test]
fn fused_add_relu() {
    // a small bias keeps x + b at least 0.03 from the kink
    let make = |[r, c]: [usize; 2], rng: &mut common::Rng| {
        vec![
            away_from_zero(&[r, c], rng),
            Tensor::rand_uniform(&[c], -0.02, 0.02, rng),
        ]
    };
    check_shapes(make, |_, v| v[0].add_relu(v[1]));
    let make_2d = |[r, c]: [usize; 2], rng: &mut common::Rng| {
        vec![
            away_from_zero(&[r, c], rng),
            Tensor::rand_uniform(&[1, c], -0.02, 0.02, rng),
        ]
    };
    check_shapes(make_2d, |_, v| v[0].add_relu(v[1]));
}

#[test]
fn fused_add_relu_equals_add_then_relu() {
    let mut rng = common::rng(8);
    let x = Tensor::<f64>::randn(&[33, 70], 0.0, 1.0, &mut rng);
    let b = Tensor::<f64>::randn(&[70], 0.0, 1.0, &mut rng);
    let seed = Tensor::<f64>::randn(&[33, 70], 0.0, 1.0, &mut rng);
    let run = |fused: bool| {
        let g = margrad::Graph::new();
        let (xv, bv) = (g.leaf(x.clone()), g.leaf(b.clone()));
        let y = if fused {
            xv.add_relu(bv)
        } else {
            (xv + bv).relu()
        };
        let value = y.to_tensor();
        let grads = y.backward_with(seed.clone());
        (
            value,
            grads.wrt(xv).unwrap().clone(),
            grads.wrt(bv).unwrap().clone(),
        )
    };
    let (fused, composed) = (run(true), run(false));
    assert_eq!(fused.0, composed.0);
    assert!(fused.1.max_abs_diff(&composed.1) < 1e-12);
    assert!(fused.2.max_abs_diff(&composed.2) < 1e-12);
}

#[test]
fn tanh_sigmoid() {
    check_shapes(one(away_from_zero), |_, v| v[0].tanh());
    check_shapes(one(away_from_zero), |_, v| v[0].sigmoid());
}

#[test]
fn cos_and_acos() {
    check_shapes(one(away_from_zero), |_, v| v[0].cos());
    let inside = |s: &[usize], rng: &mut common::Rng| Tensor::rand_uniform(s, -0.95, 0.95, rng);
    check_shapes(one(inside), |_, v| v[0].acos());
}

// ---- reductions ----

#[test]
fn sum_and_mean_over_everything() {
    check_shapes(one(away_from_zero), |_, v| v[0].sum());
    check_shapes(one(away_from_zero), |_, v| v[0].mean());
}

#[test]
fn sum_and_mean_along_each_dimension() {
    check_shapes(one(away_from_zero), |_, v| v[0].sum_dim(0));
    check_shapes(one(away_from_zero), |_, v| v[0].sum_dim(1));
    check_shapes(one(away_from_zero), |_, v| v[0].mean_dim(0));
    check_shapes(one(away_from_zero), |_, v| v[0].mean_dim(1));
}

// ---- fused row-wise ops ----

#[test]
fn normalize_rows_and_cols() {
    check_shapes(one(away_from_zero), |_, v| v[0].normalize_rows(1e-12));
    check_shapes(one(away_from_zero), |_, v| v[0].normalize_cols(1e-12));
}

#[test]
fn normalize_below_the_floor_is_linear() {
    // rows with norm < eps are divided by eps, a linear map with a checkable gradient
    let tiny = |s: &[usize], rng: &mut common::Rng| {
        let mut t = away_from_zero(s, rng);
        t.data_mut().iter_mut().for_each(|v| *v *= 1e-3);
        t
    };
    check_shapes(one(tiny), |_, v| v[0].normalize_rows(1.0));
    check_shapes(one(tiny), |_, v| v[0].normalize_cols(1.0));
}

#[test]
fn log_softmax() {
    check_shapes(one(away_from_zero), |_, v| v[0].log_softmax());
}

#[test]
fn log_softmax_with_logits_far_apart() {
    let spread = |s: &[usize], rng: &mut common::Rng| {
        let mut t = away_from_zero(s, rng);
        t.data_mut().iter_mut().for_each(|v| *v *= 300.0);
        t
    };
    check_shapes(one(spread), |_, v| v[0].log_softmax());
}

#[test]
fn pick_by_label() {
    for [r, c] in common::SHAPES {
        let labels = Labels::new((0..r).map(|i| (i * 7 + 3) % c).collect(), c).unwrap();
        let mut rng = common::rng(5);
        let x = away_from_zero(&[r, c], &mut rng);
        margrad::gradcheck(&[x], |_, v| v[0].pick(&labels)).unwrap();
    }
}

#[test]
fn nll_of_log_softmax() {
    let labels = Labels::new(vec![2, 0, 1, 2, 2], 3).unwrap();
    let mut rng = common::rng(6);
    let x = away_from_zero(&[5, 3], &mut rng);
    margrad::gradcheck(&[x], |_, v| -v[0].log_softmax().pick(&labels).mean()).unwrap();
}

// ---- shape ----

#[test]
fn reshape_and_transpose() {
    check_shapes(one(away_from_zero), |_, v| {
        let [r, c] = v[0].shape()[..] else {
            unreachable!()
        };
        v[0].reshape(&[c, r])
    });
    check_shapes(one(away_from_zero), |_, v| {
        v[0].reshape(&[v[0].value().numel()])
    });
    check_shapes(one(away_from_zero), |_, v| v[0].transpose());
}

#[test]
fn transpose_and_reshape_of_a_node_used_elsewhere() {
    // the input's gradient already holds the other use's share when these rules run, so they
    // add to it instead of writing a fresh buffer
    check_shapes(one(away_from_zero), |_, v| v[0].transpose().matmul(v[0]));
    check_shapes(one(away_from_zero), |_, v| {
        v[0].reshape(&v[0].shape()) * v[0]
    });
}

// ---- a small network end to end ----

#[test]
fn two_layer_network() {
    let make = |[b, _]: [usize; 2], rng: &mut common::Rng| {
        vec![
            away_from_zero(&[b, 6], rng),
            away_from_zero(&[6, 5], rng),
            away_from_zero(&[5], rng),
            away_from_zero(&[5, 3], rng),
        ]
    };
    check_shapes(make, |_, v| {
        let h = (v[0].matmul(v[1]) + v[2]).tanh();
        h.matmul(v[3]).normalize_rows(1e-12).log_softmax().sum()
    });
}
