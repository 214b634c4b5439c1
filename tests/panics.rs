//! Every documented panic, with its message; and that panics point at the caller's line.

use margrad::{Graph, Labels, Params, Tensor};

fn m(rows: usize, cols: usize) -> Tensor<f32> {
    Tensor::zeros(&[rows, cols])
}

#[test]
#[should_panic(expected = "shape mismatch in matmul: lhs [4, 3], rhs [5, 2]")]
fn matmul_inner_dimensions() {
    let g = Graph::new();
    let _ = g.constant(m(4, 3)).matmul(g.constant(m(5, 2)));
}

#[test]
#[should_panic(expected = "shape mismatch in matmul_nt: lhs [4, 3], rhs [2, 5]")]
fn matmul_nt_inner_dimensions() {
    let g = Graph::new();
    let _ = g.constant(m(4, 3)).matmul_nt(g.constant(m(2, 5)));
}

#[test]
#[should_panic(expected = "shape mismatch in matmul_tn: lhs [4, 3], rhs [5, 2]")]
fn matmul_tn_inner_dimensions() {
    let g = Graph::new();
    let _ = g.constant(m(4, 3)).matmul_tn(g.constant(m(5, 2)));
}

#[test]
#[should_panic(expected = "shape mismatch in matmul: lhs [4], rhs [4, 2] (both must be rank 2)")]
fn matmul_of_a_vector() {
    let g = Graph::new();
    let _ = g
        .constant(Tensor::<f32>::zeros(&[4]))
        .matmul(g.constant(m(4, 2)));
}

#[test]
#[should_panic(expected = "shape mismatch in add: lhs [2, 3], rhs [3, 2]")]
fn add_shapes() {
    let g = Graph::new();
    let _ = g.constant(m(2, 3)) + g.constant(m(3, 2));
}

#[test]
#[should_panic(expected = "shape mismatch in sub: lhs [2, 3], rhs [2]")]
fn sub_shapes() {
    let g = Graph::new();
    let _ = g.constant(m(2, 3)) - g.constant(Tensor::zeros(&[2]));
}

#[test]
#[should_panic(expected = "shape mismatch in mul: lhs [2, 3], rhs [1, 2]")]
fn mul_shapes() {
    let g = Graph::new();
    let _ = g.constant(m(2, 3)) * g.constant(m(1, 2));
}

#[test]
#[should_panic(expected = "shape mismatch in div: lhs [3], rhs [2, 3]")]
fn div_broadcasts_only_the_right_operand() {
    let g = Graph::new();
    let _ = g.constant(Tensor::<f32>::zeros(&[3])) / g.constant(m(2, 3));
}

#[test]
#[should_panic(
    expected = "shape mismatch in add_relu: input [2, 3], bias [2] (the bias must be [C] or [1, C])"
)]
fn add_relu_with_a_column_bias() {
    let g = Graph::new();
    let _ = g
        .constant(m(2, 3))
        .add_relu(g.constant(Tensor::zeros(&[2])));
}

#[test]
#[should_panic(expected = "add: the operands belong to different graphs")]
fn operands_from_two_graphs() {
    let (g1, g2) = (Graph::new(), Graph::new());
    let _ = g1.constant(m(2, 2)) + g2.constant(m(2, 2));
}

#[test]
#[should_panic(expected = "sum_dim: dim must be 0 or 1 for a rank-2 tensor, found 2")]
fn sum_dim_out_of_range() {
    let g = Graph::new();
    let _ = g.constant(m(2, 2)).sum_dim(2);
}

#[test]
#[should_panic(expected = "mean_dim: expected a rank-2 tensor, found shape [4]")]
fn mean_dim_of_a_vector() {
    let g = Graph::new();
    let _ = g.constant(Tensor::<f32>::zeros(&[4])).mean_dim(0);
}

#[test]
#[should_panic(expected = "normalize_rows: expected a rank-2 tensor, found shape [4]")]
fn normalize_rows_of_a_vector() {
    let g = Graph::new();
    let _ = g.constant(Tensor::<f32>::zeros(&[4])).normalize_rows(1e-12);
}

#[test]
#[should_panic(expected = "normalize_cols: eps must be positive, found 0")]
fn normalize_cols_without_a_floor() {
    let g = Graph::new();
    let _ = g.constant(m(2, 2)).normalize_cols(0.0);
}

#[test]
#[should_panic(expected = "log_softmax: expected a rank-2 tensor, found shape []")]
fn log_softmax_of_a_scalar() {
    let g = Graph::new();
    let _ = g.constant(Tensor::<f32>::scalar(1.0)).log_softmax();
}

#[test]
#[should_panic(expected = "shape mismatch in pick: input [3, 4], labels: 2 for 4 classes")]
fn pick_with_too_few_labels() {
    let g = Graph::new();
    let _ = g
        .constant(m(3, 4))
        .pick(&Labels::new(vec![0, 1], 4).unwrap());
}

#[test]
#[should_panic(expected = "shape mismatch in pick: input [2, 4], labels: 2 for 5 classes")]
fn pick_with_labels_for_another_class_count() {
    let g = Graph::new();
    let _ = g
        .constant(m(2, 4))
        .pick(&Labels::new(vec![0, 1], 5).unwrap());
}

#[test]
#[should_panic(expected = "shape mismatch in reshape: from [2, 3] to [4, 2]")]
fn reshape_element_count() {
    let g = Graph::new();
    let _ = g.constant(m(2, 3)).reshape(&[4, 2]);
}

#[test]
#[should_panic(expected = "transpose: expected a rank-2 tensor, found shape [2, 3, 4]")]
fn transpose_rank_3() {
    let g = Graph::new();
    let _ = g.constant(Tensor::<f32>::zeros(&[2, 3, 4])).transpose();
}

#[test]
#[should_panic(expected = "backward: the output must be a scalar, found shape [2, 2]")]
fn backward_of_a_matrix() {
    let g = Graph::new();
    let _ = g.leaf(m(2, 2)).exp().backward();
}

#[test]
#[should_panic(expected = "shape mismatch in backward_with: output [2, 2], seed [4]")]
fn backward_with_a_seed_of_another_shape() {
    let g = Graph::new();
    let _ = g.leaf(m(2, 2)).exp().backward_with(Tensor::zeros(&[4]));
}

#[test]
#[should_panic(expected = "backward: already ran on this graph; build a new graph for each step")]
fn backward_twice() {
    let g = Graph::new();
    let loss = g.leaf(m(2, 2)).sum();
    let _ = loss.backward();
    let _ = loss.backward();
}

#[test]
#[should_panic(
    expected = "backward: this graph was made with Graph::inference and recorded nothing"
)]
fn backward_on_an_inference_graph() {
    let g = Graph::inference();
    let _ = g.leaf(m(2, 2)).sum().backward();
}

#[test]
#[should_panic(expected = "item: tensor of shape [2, 2] holds 4 elements, expected 1")]
fn item_of_a_matrix() {
    let g = Graph::new();
    let _ = g.constant(m(2, 2)).item();
}

#[test]
#[should_panic(expected = "max_abs_diff: lhs [2, 2], rhs [4]")]
fn max_abs_diff_shapes() {
    let _ = m(2, 2).max_abs_diff(&Tensor::zeros(&[4]));
}

#[test]
#[should_panic(expected = "rand_uniform: invalid range [1, 1)")]
fn rand_uniform_empty_range() {
    use rand::SeedableRng;
    let mut rng = rand::rngs::Xoshiro256PlusPlus::seed_from_u64(0);
    let _ = Tensor::<f32>::rand_uniform(&[2], 1.0, 1.0, &mut rng);
}

#[test]
#[should_panic(
    expected = "Gradients::wrt: Var(#0, shape [2]) belongs to another graph than the one backward ran on"
)]
fn gradients_asked_for_a_leaf_of_another_graph() {
    let (g1, g2) = (Graph::<f64>::new(), Graph::<f64>::new());
    let x1 = g1.leaf(Tensor::ones(&[2]));
    let x2 = g2.leaf(Tensor::ones(&[2])); // also node #0, of another graph
    let grads = (x1 * x1).sum().backward();
    let _ = grads.wrt(x2);
}

#[test]
#[should_panic(expected = "Params::get_mut: \"w\" is still held by a live graph")]
fn updating_a_parameter_while_a_graph_holds_it() {
    let mut params = Params::<f32>::new();
    let w = params.add("w", Tensor::ones(&[2]));
    let g = Graph::new();
    let held = g.param(&params, w).value();
    params.get_mut(w).data_mut()[0] = 0.0;
    drop(held);
}

/// `a·b`, elementwise: a custom op with two inputs.
struct Product;
impl margrad::CustomOp<f64> for Product {
    fn name(&self) -> &'static str {
        "product"
    }
    fn backward(
        &self,
        _inputs: &[&Tensor<f64>],
        _output: &Tensor<f64>,
        _grad: &[f64],
        _grads: &mut [Option<margrad::InputGrad<'_, f64>>],
    ) {
    }
}

#[test]
#[should_panic(expected = "product: input 1 is also an earlier input; pass each node once")]
fn a_custom_op_given_one_node_twice() {
    let g = Graph::<f64>::new();
    let x = g.leaf(Tensor::ones(&[2]));
    let _ = g.custom(Product, &[x, x], Tensor::ones(&[2]));
}

#[test]
#[should_panic(expected = "product: input 0 belongs to another graph")]
fn a_custom_op_given_a_node_of_another_graph() {
    let (g1, g2) = (Graph::<f64>::new(), Graph::<f64>::new());
    let x = g2.leaf(Tensor::ones(&[2]));
    let _ = g1.custom(Product, &[x], Tensor::ones(&[2]));
}

#[test]
#[should_panic(expected = "Params::add: a parameter named \"w\" already exists")]
fn duplicate_parameter_name() {
    let mut params = Params::<f32>::new();
    params.add("w", m(1, 1));
    params.add("w", m(1, 1));
}

#[test]
fn panics_point_at_the_callers_line() {
    let location = |f: fn()| {
        let hook = std::panic::take_hook();
        let seen = std::sync::Arc::new(std::sync::Mutex::new(None));
        let sink = seen.clone();
        std::panic::set_hook(Box::new(move |info| {
            *sink.lock().unwrap() = info.location().map(|l| l.file().to_string());
        }));
        let _ = std::panic::catch_unwind(f);
        std::panic::set_hook(hook);
        seen.lock().unwrap().take().unwrap()
    };
    let here = file!();
    assert_eq!(
        location(|| {
            let g = Graph::new();
            let _ = g.constant(m(4, 3)).matmul(g.constant(m(5, 2)));
        }),
        here
    );
    assert_eq!(
        location(|| {
            let g = Graph::new();
            let _ = g.constant(m(2, 3)) * g.constant(m(3, 2));
        }),
        here
    );
    assert_eq!(
        location(|| {
            let g = Graph::new();
            let _ = g
                .constant(m(2, 3))
                .normalize_rows(1e-12)
                .log_softmax()
                .sum_dim(3);
        }),
        here
    );
    assert_eq!(
        location(|| {
            let _ = Tensor::<f32>::zeros(&[usize::MAX, 2]);
        }),
        here
    );
}

#[test]
#[should_panic(
    expected = "a tensor of shape [4294967296, 4294967296, 2] holds more elements than a usize can count"
)]
fn a_shape_whose_element_count_overflows() {
    // in a release build the product would wrap to 0: an empty buffer under a huge shape
    let _ = Tensor::<f32>::zeros(&[1 << 32, 1 << 32, 2]);
}

#[test]
fn a_shape_whose_element_count_overflows_matches_no_data() {
    let error = Tensor::<f32>::from_vec(Vec::new(), &[1 << 32, 1 << 32]).unwrap_err();
    assert!(
        error.to_string().contains("[4294967296, 4294967296]"),
        "{error}"
    );
}
