//! The tape's contract, forward values against naive references, gradcheck's own failure modes,
//! and bitwise determinism across thread counts.

mod common;
use common::{away_from_zero, rng};
use margrad::gradcheck::Probe;
use margrad::{Error, GradcheckError, Graph, Labels, Params, Tensor, gradcheck};

fn naive_matmul(a: &Tensor<f64>, b: &Tensor<f64>) -> Tensor<f64> {
    let ((m, k), (_, n)) = (a.matrix_dims().unwrap(), b.matrix_dims().unwrap());
    Tensor::from_fn(&[m, n], |i| {
        let (r, c) = (i / n, i % n);
        (0..k)
            .map(|j| a.data()[r * k + j] * b.data()[j * n + c])
            .sum()
    })
}

// ---- forward values ----

#[test]
fn matmul_variants_match_a_naive_product() {
    // shapes large enough that both threads split rows (tall) or columns (wide)
    for (m, k, n) in [(1, 1, 1), (3, 5, 2), (300, 70, 130), (64, 40, 600)] {
        let mut rng = rng(m as u64);
        let a = Tensor::<f64>::randn(&[m, k], 0.0, 1.0, &mut rng);
        let b = Tensor::<f64>::randn(&[k, n], 0.0, 1.0, &mut rng);
        let expected = naive_matmul(&a, &b);
        let g = Graph::<f64>::new();
        let (va, vb) = (g.constant(a.clone()), g.constant(b.clone()));
        let (at, bt) = (g.constant(a.transpose()), g.constant(b.transpose()));
        assert!(va.matmul(vb).value().max_abs_diff(&expected) < 1e-10);
        assert!(va.matmul_nt(bt).value().max_abs_diff(&expected) < 1e-10);
        assert!(at.matmul_tn(vb).value().max_abs_diff(&expected) < 1e-10);
    }
}

#[test]
fn reductions_log_softmax_and_normalisation_values() {
    let x = Tensor::from_vec(vec![1.0, 2.0, 3.0, -4.0, 0.0, 4.0], &[2, 3]).unwrap();
    let g = Graph::<f64>::new();
    let v = g.constant(x);
    assert_eq!(v.sum().item(), 6.0);
    assert_eq!(v.mean().item(), 1.0);
    assert_eq!(v.sum_dim(0).value().data(), &[-3.0, 2.0, 7.0]);
    assert_eq!(v.sum_dim(1).value().data(), &[6.0, 0.0]);
    assert_eq!(v.mean_dim(1).value().data(), &[2.0, 0.0]);
    assert_eq!(v.sum_dim(0).shape(), vec![1, 3]);
    assert_eq!(v.sum_dim(1).shape(), vec![2, 1]);

    let ls = v.log_softmax().to_tensor();
    for row in ls.data().chunks(3) {
        let total: f64 = row.iter().map(|l| l.exp()).sum();
        assert!((total - 1.0).abs() < 1e-12);
    }
    assert!((ls.data()[2] - (3.0 - (1f64.exp() + 2f64.exp() + 3f64.exp()).ln())).abs() < 1e-12);

    let rows = v.normalize_rows(1e-12).to_tensor();
    assert!((rows.data()[5] - 4.0 / 32f64.sqrt()).abs() < 1e-15);
    let cols = v.normalize_cols(1e-12).to_tensor();
    assert!((cols.data()[0] - 1.0 / 17f64.sqrt()).abs() < 1e-15);
    assert_eq!(cols.data()[1], 1.0);
}

#[test]
fn log_softmax_is_finite_for_logits_a_thousand_apart() {
    let x = Tensor::from_vec(vec![1000.0f32, 0.0, -1000.0], &[1, 3]).unwrap();
    let g = Graph::new();
    let ls = g.constant(x).log_softmax().to_tensor();
    assert_eq!(ls.data()[0], 0.0);
    assert_eq!(ls.data()[1], -1000.0);
    ls.ensure_finite("log_softmax").unwrap();
}

#[test]
fn a_zero_row_normalises_to_zero_without_nan() {
    let x = Tensor::from_vec(vec![0.0f32, 0.0, 3.0, 4.0], &[2, 2]).unwrap();
    let g = Graph::new();
    let y = g.leaf(x);
    let out = y.normalize_rows(1e-12);
    assert_eq!(out.value().data(), &[0.0, 0.0, 0.6, 0.8]);
    let grads = out.sum().backward();
    grads.ensure_finite().unwrap();
}

#[test]
fn normalisation_over_many_column_blocks_matches_a_naive_reference() {
    // wide enough for several column blocks and the parallel path; a zero column is floored
    let (rows, cols, eps) = (40, 1000, 1e-12);
    let mut rng = rng(5);
    let mut x = Tensor::<f64>::randn(&[rows, cols], 0.0, 1.0, &mut rng);
    for r in 0..rows {
        x.data_mut()[r * cols + 300] = 0.0;
    }
    let seed = Tensor::<f64>::randn(&[rows, cols], 0.0, 1.0, &mut rng);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    // x used twice, so one gradient overwrites a fresh buffer and the other adds to it; backward
    // runs in reverse order of creation, so each order puts a different one first
    let check = |cols_first: bool| {
        // lent buffers full of NaN: a gradient buffer read before it is written shows
        drop(vec![Tensor::<f64>::full(&[rows * cols], f64::NAN); 8]);
        let g = Graph::new();
        let xv = g.leaf(x.clone());
        let (cols_y, rows_y) = if cols_first {
            let cols_y = xv.normalize_cols(eps);
            (cols_y, xv.normalize_rows(eps))
        } else {
            let rows_y = xv.normalize_rows(eps);
            (xv.normalize_cols(eps), rows_y)
        };
        let grads = (cols_y + rows_y).backward_with(seed.clone());
        let dx = grads.wrt(xv).unwrap();
        let (xd, gd) = (x.data(), seed.data());
        let mut expected = vec![0.0; rows * cols];
        for c in 0..cols {
            let norm = (0..rows)
                .map(|r| xd[r * cols + c].powi(2))
                .sum::<f64>()
                .sqrt();
            let dot: f64 = (0..rows)
                .map(|r| gd[r * cols + c] * xd[r * cols + c] / norm)
                .sum();
            for r in 0..rows {
                let i = r * cols + c;
                let want_y = if norm < eps { 0.0 } else { xd[i] / norm };
                assert!(
                    (cols_y.value().data()[i] - want_y).abs() < 1e-12,
                    "y[{r}, {c}]"
                );
                expected[i] = if norm < eps {
                    gd[i] / eps
                } else {
                    (gd[i] - want_y * dot) / norm
                };
            }
        }
        for r in 0..rows {
            let row = r * cols..(r + 1) * cols;
            let norm = xd[row.clone()].iter().map(|v| v * v).sum::<f64>().sqrt();
            let dot: f64 = row.clone().map(|i| gd[i] * xd[i] / norm).sum();
            for i in row {
                expected[i] += (gd[i] - xd[i] / norm * dot) / norm;
            }
        }
        for (i, (&got, &want)) in dx.data().iter().zip(&expected).enumerate() {
            assert!(
                (got - want).abs() <= 1e-9 * want.abs().max(1.0),
                "dx[{i}]: {got} against {want}"
            );
        }
    };
    for cols_first in [true, false] {
        pool.install(|| check(cols_first));
    }
}

#[test]
fn bias_broadcast_and_elementwise_values() {
    let g = Graph::<f64>::new();
    let x = g.constant(Tensor::from_vec(vec![1.0, 2.0, 3.0, 4.0], &[2, 2]).unwrap());
    let row = g.constant(Tensor::from_vec(vec![10.0, 20.0], &[2]).unwrap());
    let col = g.constant(Tensor::from_vec(vec![2.0, 3.0], &[2, 1]).unwrap());
    assert_eq!((x + row).value().data(), &[11.0, 22.0, 13.0, 24.0]);
    assert_eq!((x * col).value().data(), &[2.0, 4.0, 9.0, 12.0]);
    assert_eq!((x - row).value().data(), &[-9.0, -18.0, -7.0, -16.0]);
    assert_eq!((x / col).value().data(), &[0.5, 1.0, 1.0, 4.0 / 3.0]);
    assert_eq!((-x).relu().value().data(), &[0.0; 4]);
    assert_eq!(x.transpose().value().data(), &[1.0, 3.0, 2.0, 4.0]);
}

// ---- the tape ----

#[test]
fn parameters_enter_without_copy_and_used_twice_accumulate() {
    let mut params = Params::<f64>::new();
    let w = params.add("w", Tensor::from_vec(vec![2.0, 3.0], &[1, 2]).unwrap());
    {
        let g = Graph::new();
        let a = g.param(&params, w);
        let b = g.param(&params, w);
        // the graph shares the store's buffer
        assert_eq!(a.value().data().as_ptr(), params.get(w).data().as_ptr());
        let loss = (a * b).sum() + a.sum(); // Σ w² + Σ w → ∂ = 2w + 1
        let grads = loss.backward();
        assert_eq!(grads.param(w).unwrap().data(), &[5.0, 7.0]);
    }
    // with the graph gone, the update is in place
    let before = params.get(w).data().as_ptr();
    params.get_mut(w).data_mut()[0] = 0.0;
    assert_eq!(params.get(w).data().as_ptr(), before);
}

#[test]
fn gradients_of_unrelated_leaves_are_absent_and_constants_get_none() {
    let g = Graph::<f64>::new();
    let x = g.leaf(Tensor::ones(&[2, 2]));
    let unused = g.leaf(Tensor::ones(&[3]));
    let c = g.constant(Tensor::ones(&[2, 2]));
    let grads = (x * c).sum().backward();
    assert!(grads.wrt(x).is_some());
    assert!(grads.wrt(unused).is_none());
    assert!(grads.wrt(c).is_none());
}

#[test]
fn inference_runs_the_same_kernels_and_records_nothing() {
    let mut rng = rng(3);
    let x = Tensor::<f32>::randn(&[16, 8], 0.0, 1.0, &mut rng);
    let w = Tensor::<f32>::randn(&[8, 4], 0.0, 1.0, &mut rng);
    let forward = |g: &Graph<f32>| {
        g.leaf(x.clone())
            .matmul(g.leaf(w.clone()))
            .relu()
            .normalize_rows(1e-12)
            .to_tensor()
    };
    let train = Graph::new();
    let infer = Graph::inference();
    assert!(!infer.is_recording());
    assert_eq!(forward(&train), forward(&infer));
}

#[test]
fn stale_values_in_lent_buffers_never_reach_a_gradient() {
    // Backward writes fresh gradient buffers without zeroing them first (a matmul overwrites,
    // a transpose or reshape copies). Fill the pool with NaN, then check every gradient against
    // its value by hand; any element read before being written would be NaN.
    let (m, k, n) = (80, 70, 90); // every buffer above the pool's 4,096-element threshold
    // the shelves lend by exact length: NaN buffers of every length the step asks for
    let stale: Vec<_> = [m * k, k * n, m * n, m * n, m * n, m * n]
        .iter()
        .map(|&len| Tensor::<f64>::full(&[len], f64::NAN))
        .collect();
    drop(stale);
    let mut rng = rng(11);
    let a = Tensor::<f64>::randn(&[m, k], 0.0, 1.0, &mut rng);
    let b = Tensor::<f64>::randn(&[k, n], 0.0, 1.0, &mut rng);
    let g = Graph::new();
    let (va, vb) = (g.leaf(a.clone()), g.leaf(b.clone()));
    // loss = Σ (A·B)ᵀ, reshaped: ∂A = 1·Bᵀ (row sums of B), ∂B = Aᵀ·1 (column sums of A)
    let grads = va.matmul(vb).transpose().reshape(&[n * m]).sum().backward();
    let da = grads.wrt(va).unwrap();
    let db = grads.wrt(vb).unwrap();
    for i in 0..m * k {
        let row_sum_b: f64 = b.data()[(i % k) * n..(i % k + 1) * n].iter().sum();
        assert!(
            (da.data()[i] - row_sum_b).abs() < 1e-10,
            "dA[{i}] = {}",
            da.data()[i]
        );
    }
    for i in 0..k * n {
        let col_sum_a: f64 = (0..m).map(|r| a.data()[r * k + i / n]).sum();
        assert!(
            (db.data()[i] - col_sum_a).abs() < 1e-10,
            "dB[{i}] = {}",
            db.data()[i]
        );
    }
}

#[test]
fn gradients_flag_non_finite_values() {
    let g = Graph::<f32>::new();
    let x = g.leaf(Tensor::from_vec(vec![0.0, 1.0], &[2]).unwrap());
    let grads = x.sqrt().sum().backward(); // ∂√x at 0 is +∞
    let err = grads.ensure_finite().unwrap_err();
    assert!(matches!(err, Error::NonFinite { index: 0, .. }), "{err}");
}

// ---- errors from outside ----

#[test]
fn from_vec_rejects_a_wrong_length() {
    let err = Tensor::<f32>::from_vec(vec![1.0; 5], &[2, 3]).unwrap_err();
    assert_eq!(
        err,
        Error::DataLength {
            shape: vec![2, 3],
            expected: 6,
            found: 5
        }
    );
    assert_eq!(
        err.to_string(),
        "data length mismatch: shape [2, 3] needs 6 elements, found 5"
    );
}

#[test]
fn labels_out_of_range_are_an_error() {
    let err = Labels::new(vec![0, 3, 9], 4).unwrap_err();
    assert_eq!(
        err.to_string(),
        "label out of range: sample 2 has label 9, expected 0..4"
    );
}

#[test]
fn ensure_finite_names_the_first_nan() {
    let t = Tensor::from_vec(vec![1.0f32, f32::NAN, f32::INFINITY], &[3]).unwrap();
    let err = t.ensure_finite("input x").unwrap_err();
    assert_eq!(
        err.to_string(),
        "non-finite value in input x: element 1 is NaN"
    );
}

// ---- gradcheck catches what it should ----

#[test]
fn gradcheck_reports_a_wrong_gradient_with_input_element_and_values() {
    // forward differs between the recorded and the evaluated graph: 3x² is measured, but the
    // recorded function is x², whose gradient is a third of the truth
    let x = Tensor::from_vec(vec![0.5, 1.5], &[2]).unwrap();
    let y = Tensor::from_vec(vec![2.0], &[1]).unwrap();
    let err = gradcheck(&[y, x], |g, v| {
        let sq = v[1] * v[1];
        let value = if g.is_recording() { sq } else { sq * 3.0 };
        (value.sum() * v[0].sum()).mul_scalar(1.0)
    })
    .unwrap_err();
    match err {
        GradcheckError::Mismatch {
            input,
            probe,
            analytic,
            numeric,
        } => {
            assert_eq!(input, 0);
            assert_eq!(probe, Probe::Element(0));
            assert!(
                (numeric / analytic - 3.0).abs() < 1e-6,
                "{analytic} {numeric}"
            );
        }
        other => panic!("expected a mismatch, got {other}"),
    }
    assert!(err.to_string().contains("input 0 element 0: analytic"));
}

#[test]
fn gradcheck_detects_a_kink_instead_of_a_mismatch() {
    let x = Tensor::from_vec(vec![1.0, 0.0, -2.0], &[3]).unwrap();
    let err = gradcheck(std::slice::from_ref(&x), |_, v| v[0].relu()).unwrap_err();
    assert!(
        matches!(
            err,
            GradcheckError::NonDifferentiable {
                input: 0,
                probe: Probe::Element(1),
                reason: "kink",
                ..
            }
        ),
        "{err}"
    );
    let err = gradcheck(&[x], |_, v| v[0].abs().sum()).unwrap_err();
    assert!(
        err.to_string()
            .contains("not differentiable at input 0 element 1 (kink)"),
        "{err}"
    );
}

#[test]
fn gradcheck_detects_a_zero_norm_row_as_singular() {
    let x = Tensor::from_vec(vec![0.0, 0.0, 3.0, 4.0], &[2, 2]).unwrap();
    let err = gradcheck(&[x], |_, v| v[0].normalize_rows(1e-12)).unwrap_err();
    assert!(
        matches!(
            err,
            GradcheckError::NonDifferentiable {
                input: 0,
                reason: "singular",
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn gradcheck_reports_a_function_not_finite_at_the_point() {
    let x = Tensor::from_vec(vec![-1.0], &[1]).unwrap();
    let err = gradcheck(&[x], |_, v| v[0].log()).unwrap_err();
    assert_eq!(err, GradcheckError::NonFiniteOutput { at: None });
}

#[test]
fn gradcheck_fast_mode_catches_a_wrong_gradient_too() {
    let mut rng = rng(9);
    let x = away_from_zero(&[30, 40], &mut rng);
    let options = margrad::GradcheckOptions {
        directions: Some(4),
        ..Default::default()
    };
    let err = margrad::gradcheck_with(&[x], &options, |g, v| {
        let y = v[0].tanh();
        if g.is_recording() { y } else { y * 1.01 }
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            GradcheckError::Mismatch {
                probe: Probe::Direction(0),
                ..
            }
        ),
        "{err}"
    );
}

// ---- determinism ----

#[test]
fn results_are_bitwise_identical_on_one_and_two_threads() {
    let mut rng = rng(11);
    let x = Tensor::<f32>::randn(&[256, 300], 0.0, 1.0, &mut rng);
    let w1 = Tensor::<f32>::randn(&[300, 512], 0.0, 0.05, &mut rng);
    let w2 = Tensor::<f32>::randn(&[64, 512], 0.0, 0.05, &mut rng);
    let labels = Labels::new((0..256).map(|i| i % 64).collect(), 64).unwrap();
    let run = |threads: usize| {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let g = Graph::new();
            let (w1v, w2v) = (g.leaf(w1.clone()), g.leaf(w2.clone()));
            let h = g.constant(x.clone()).matmul(w1v).relu();
            let logits = h.normalize_rows(1e-12).matmul_nt(w2v.normalize_rows(1e-12));
            let loss = -(logits * 30.0).log_softmax().pick(&labels).mean();
            let grads = loss.backward();
            (
                loss.item(),
                grads.wrt(w1v).unwrap().clone(),
                grads.wrt(w2v).unwrap().clone(),
            )
        })
    };
    let (one, two) = (run(1), run(2));
    assert_eq!(one.0.to_bits(), two.0.to_bits());
    let same_bits = |a: &Tensor<f32>, b: &Tensor<f32>| {
        a.data()
            .iter()
            .zip(b.data())
            .all(|(x, y)| x.to_bits() == y.to_bits())
    };
    assert!(same_bits(&one.1, &two.1));
    assert!(same_bits(&one.2, &two.2));
}

#[test]
fn buffers_enter_shared_and_receive_no_gradient() {
    let mut params = Params::<f64>::new();
    let w = params.add("w", Tensor::ones(&[2]));
    let stat = params.add_buffer("stat", Tensor::full(&[2], 3.0));
    let g = Graph::new();
    let b = g.param(&params, stat);
    assert_eq!(b.value().data().as_ptr(), params.get(stat).data().as_ptr());
    let grads = (g.param(&params, w) * b).sum().backward();
    assert_eq!(grads.param(w).unwrap().data(), &[3.0, 3.0]);
    assert!(grads.param(stat).is_none());
}

#[test]
fn a_cloned_store_shares_nothing_with_the_original() {
    let mut params = Params::<f32>::new();
    let w = params.add("w", Tensor::ones(&[3]));
    let mut copy = params.clone();
    copy.get_mut(w).data_mut()[0] = 5.0;
    assert_eq!(params.get(w).data(), &[1.0, 1.0, 1.0]);
    assert_eq!(copy.get(w).data(), &[5.0, 1.0, 1.0]);
    // and the original can still be updated in place
    params.get_mut(w).data_mut()[1] = 2.0;
    assert_eq!(params.get(w).data(), &[1.0, 2.0, 1.0]);
}

/// `y = a ⊙ b + a` elementwise, as one custom op: ∂a = g ⊙ (b + 1), ∂b = g ⊙ a.
struct MulAdd;

impl margrad::CustomOp<f64> for MulAdd {
    fn name(&self) -> &'static str {
        "mul_add"
    }

    fn backward(
        &self,
        inputs: &[&Tensor<f64>],
        _output: &Tensor<f64>,
        g: &[f64],
        grads: &mut [Option<margrad::InputGrad<'_, f64>>],
    ) {
        let (a, b) = (inputs[0].data(), inputs[1].data());
        if let Some(da) = &mut grads[0] {
            for i in 0..g.len() {
                da.store(i, g[i] * (b[i] + 1.0));
            }
        }
        if let Some(db) = &mut grads[1] {
            for i in 0..g.len() {
                db.store(i, g[i] * a[i]);
            }
        }
    }
}

fn mul_add<'g>(a: margrad::Var<'g, f64>, b: margrad::Var<'g, f64>) -> margrad::Var<'g, f64> {
    let (av, bv) = (a.value(), b.value());
    let out = Tensor::from_fn(av.shape(), |i| av.data()[i] * bv.data()[i] + av.data()[i]);
    a.graph().custom(MulAdd, &[a, b], out)
}

#[test]
fn a_custom_op_with_two_inputs_passes_gradcheck_fresh_and_accumulated() {
    let mut rng = margrad::seeded_rng(3);
    let a = Tensor::<f64>::randn(&[3, 4], 0.0, 1.0, &mut rng);
    let b = Tensor::<f64>::randn(&[3, 4], 0.0, 1.0, &mut rng);
    // alone: each input's buffer is fresh when the op's rule reaches it
    margrad::gradcheck(&[a.clone(), b.clone()], |_, v| mul_add(v[0], v[1]).tanh()).unwrap();
    // inputs used again elsewhere: the op's rule adds into buffers other rules wrote first
    margrad::gradcheck(&[a, b], |_, v| {
        let y = mul_add(v[0], v[1]);
        (y * v[0] + v[1].exp()).tanh()
    })
    .unwrap();
}

#[test]
fn a_custom_op_input_without_gradient_gets_no_buffer() {
    let g = Graph::<f64>::new();
    let a = g.leaf(Tensor::from_vec(vec![1.0, 2.0], &[2]).unwrap());
    let b = g.constant(Tensor::from_vec(vec![3.0, 4.0], &[2]).unwrap());
    let grads = mul_add(a, b).sum().backward();
    assert_eq!(grads.wrt(a).unwrap().data(), &[4.0, 5.0]);
}

#[test]
fn relu_keeps_nan_as_nan_instead_of_hiding_it() {
    let g = Graph::<f32>::new();
    let x = g.constant(Tensor::from_vec(vec![f32::NAN, -1.0, 2.0], &[1, 3]).unwrap());
    let y = x.relu().to_tensor();
    assert!(y.data()[0].is_nan());
    assert_eq!(&y.data()[1..], &[0.0, 2.0]);
    let bias = g.constant(Tensor::from_vec(vec![0.0, 0.5, f32::NAN], &[3]).unwrap());
    let fused = x.add_relu(bias).to_tensor();
    assert!(fused.data()[0].is_nan() && fused.data()[2].is_nan());
    assert_eq!(fused.data()[1], 0.0);
}

#[test]
fn every_name_of_a_large_store_finds_its_own_id() {
    let mut params = Params::<f32>::new();
    let ids: Vec<_> = (0..20_000)
        .map(|i| params.add(format!("layer.{i}.weight"), Tensor::zeros(&[1])))
        .collect();
    for (i, &id) in ids.iter().enumerate() {
        assert_eq!(params.find(&format!("layer.{i}.weight")), Some(id));
        assert_eq!(params.name(id), format!("layer.{i}.weight"));
    }
    assert_eq!(params.find("layer.20000.weight"), None);
    let copy = params.clone();
    assert_eq!(copy.find("layer.19999.weight"), Some(ids[19_999]));
}
