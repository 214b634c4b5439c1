//! The ops over NCHW tensors: convolution (2-D and 1-D), pooling, batch normalisation and
//! PReLU. Each is gradchecked in f64 at edge shapes, compared with a plain direct computation
//! written here, compared with PyTorch on committed fixtures, and run on 1 and 2 threads for
//! the same bits.

mod common;
use common::{away_from_zero, rng};
use margrad::{
    Conv1dOptions, Conv2dOptions, GradcheckOptions, Graph, Pool2dOptions, Tensor, Var,
    gradcheck_with,
};

/// Gradchecks `f` at `inputs`, every element (or random directions for large inputs).
#[track_caller]
fn check<Func>(what: &str, inputs: &[Tensor<f64>], f: Func)
where
    Func: for<'g> Fn(&'g Graph<f64>, &[Var<'g, f64>]) -> Var<'g, f64>,
{
    let large = inputs.iter().map(Tensor::numel).sum::<usize>() > 1500;
    let options = GradcheckOptions {
        directions: large.then_some(24),
        ..GradcheckOptions::default()
    };
    if let Err(e) = gradcheck_with(inputs, &options, f) {
        panic!("{what}: {e}");
    }
}

/// One convolution case: input `[n, c, h, w]`, weight `[o, c/groups, kh, kw]`, options.
#[derive(Clone, Copy, Debug)]
struct Case {
    input: [usize; 4],
    out_channels: usize,
    kernel: [usize; 2],
    options: Conv2dOptions,
}

fn case(input: [usize; 4], out_channels: usize, k: usize, options: Conv2dOptions) -> Case {
    Case {
        input,
        out_channels,
        kernel: [k, k],
        options,
    }
}

/// The edge shapes: kernels 1/3/5/7, stride 2, padding 0/1/2, non-square inputs, batch 1, one
/// channel, grouped and depthwise, dilation 2, a non-square kernel.
fn cases() -> Vec<Case> {
    let o = Conv2dOptions::new;
    vec![
        case([1, 1, 5, 7], 1, 1, o()),
        case([2, 3, 6, 5], 4, 3, o().padding(1)),
        case([2, 2, 7, 9], 3, 5, o().stride(2).padding(2)),
        case([1, 2, 9, 8], 2, 7, o()),
        case([1, 1, 8, 10], 2, 7, o().stride(2).padding(2)),
        case([2, 3, 7, 6], 2, 3, o().stride(2)),
        case([2, 3, 8, 7], 2, 3, o().stride(2).padding(1)),
        case([2, 4, 6, 6], 4, 3, o().padding(1).groups(4)), // depthwise
        case([1, 4, 5, 6], 8, 3, o().padding(1).groups(4)), // depthwise, two filters per channel
        case([1, 4, 5, 5], 6, 3, o().stride(2).padding(1).groups(2)),
        case([2, 2, 7, 6], 3, 3, o().padding(2).dilation(2)),
        case([1, 2, 9, 9], 2, 3, o().stride(2).dilation(2)),
        // stride 1, padding within the kernel's reach (the input's gradient is a convolution
        // of the output's) and beyond it (a 1×1 kernel with padding: scattered back)
        case([1, 2, 6, 7], 3, 5, o().padding(1)),
        case([2, 3, 4, 5], 2, 1, o().padding(1)),
        Case {
            input: [2, 2, 5, 6],
            out_channels: 3,
            kernel: [1, 3],
            options: Conv2dOptions {
                padding: [0, 1],
                stride: [1, 2],
                ..o()
            },
        },
    ]
}

fn weight_shape(c: &Case) -> [usize; 4] {
    let [kh, kw] = c.kernel;
    [c.out_channels, c.input[1] / c.options.groups, kh, kw]
}

/// `y[n, o, oy, ox] = b[o] + Σ w[o, c, i, j]·x[n, g·C/G + c, s·oy + d·i − p, s·ox + d·j − p]`,
/// written out plainly.
fn direct_conv2d(
    x: &Tensor<f64>,
    w: &Tensor<f64>,
    b: Option<&Tensor<f64>>,
    o: Conv2dOptions,
) -> Tensor<f64> {
    let [n, c, h, wd]: [usize; 4] = x.shape().try_into().unwrap();
    let [oc, cg, kh, kw]: [usize; 4] = w.shape().try_into().unwrap();
    let out_len = |size: usize, k: usize, a: usize| {
        (size + 2 * o.padding[a] - o.dilation[a] * (k - 1) - 1) / o.stride[a] + 1
    };
    let (oh, ow) = (out_len(h, kh, 0), out_len(wd, kw, 1));
    let og = oc / o.groups;
    let mut y = Tensor::zeros(&[n, oc, oh, ow]);
    for ni in 0..n {
        for oi in 0..oc {
            let g = oi / og;
            for oy in 0..oh {
                for ox in 0..ow {
                    let mut s = b.map_or(0.0, |b| b.data()[oi]);
                    for ci in 0..cg {
                        let cin = g * cg + ci;
                        for i in 0..kh {
                            for j in 0..kw {
                                let iy = (oy * o.stride[0] + i * o.dilation[0]) as isize
                                    - o.padding[0] as isize;
                                let ix = (ox * o.stride[1] + j * o.dilation[1]) as isize
                                    - o.padding[1] as isize;
                                if iy < 0 || ix < 0 || iy >= h as isize || ix >= wd as isize {
                                    continue;
                                }
                                let xv =
                                    x.data()[((ni * c + cin) * h + iy as usize) * wd + ix as usize];
                                s += w.data()[((oi * cg + ci) * kh + i) * kw + j] * xv;
                            }
                        }
                    }
                    y.data_mut()[((ni * oc + oi) * oh + oy) * ow + ox] = s;
                }
            }
        }
    }
    y
}

#[test]
fn conv2d_matches_a_direct_convolution() {
    let mut r = rng(1);
    for c in cases() {
        let x = Tensor::<f64>::randn(&c.input, 0.0, 1.0, &mut r);
        let w = Tensor::<f64>::randn(&weight_shape(&c), 0.0, 1.0, &mut r);
        let b = Tensor::<f64>::randn(&[c.out_channels], 0.0, 1.0, &mut r);
        let g = Graph::inference();
        let y = g
            .constant(x.clone())
            .conv2d(
                g.constant(w.clone()),
                Some(g.constant(b.clone())),
                c.options,
            )
            .to_tensor();
        let expected = direct_conv2d(&x, &w, Some(&b), c.options);
        assert_eq!(y.shape(), expected.shape(), "{c:?}");
        assert!(
            y.max_abs_diff(&expected) < 1e-12,
            "{c:?}: {}",
            y.max_abs_diff(&expected)
        );
    }
}

#[test]
fn conv2d_gradients() {
    let mut r = rng(2);
    for c in cases() {
        let inputs = vec![
            away_from_zero(&c.input, &mut r),
            away_from_zero(&weight_shape(&c), &mut r),
            away_from_zero(&[c.out_channels], &mut r),
        ];
        let o = c.options;
        check(&format!("{c:?}"), &inputs, |_, v| {
            v[0].conv2d(v[1], Some(v[2]), o)
        });
        check(&format!("{c:?} without bias"), &inputs[..2], |_, v| {
            v[0].conv2d(v[1], None, o)
        });
    }
}

#[test]
fn conv2d_input_used_twice_accumulates() {
    // the input reaches the output through the convolution and directly: both gradients add
    let mut r = rng(3);
    let inputs = vec![
        away_from_zero(&[2, 2, 5, 5], &mut r),
        away_from_zero(&[2, 2, 3, 3], &mut r),
    ];
    check("x + conv(x)", &inputs, |_, v| {
        v[0] + v[0].conv2d(v[1], None, Conv2dOptions::new().padding(1))
    });
}

#[test]
fn conv1d_is_conv2d_on_planes_of_height_one() {
    let mut r = rng(4);
    for (input, o, k, options) in [
        ([1, 1, 9], 1, 1, Conv1dOptions::default()),
        (
            [2, 3, 11],
            4,
            3,
            Conv1dOptions {
                stride: 2,
                padding: 1,
                ..Default::default()
            },
        ),
        (
            [2, 2, 12],
            2,
            5,
            Conv1dOptions {
                padding: 2,
                dilation: 2,
                ..Default::default()
            },
        ),
        (
            [1, 4, 8],
            4,
            3,
            Conv1dOptions {
                padding: 1,
                groups: 4,
                ..Default::default()
            },
        ),
    ] {
        let [n, c, l] = input;
        let inputs = vec![
            away_from_zero(&input, &mut r),
            away_from_zero(&[o, c / options.groups, k], &mut r),
            away_from_zero(&[o], &mut r),
        ];
        check(&format!("conv1d {input:?} {options:?}"), &inputs, |_, v| {
            v[0].conv1d(v[1], Some(v[2]), options)
        });
        // the same numbers as conv2d on [N, C, 1, L]
        let g = Graph::inference();
        let y1 = g
            .constant(inputs[0].clone())
            .conv1d(
                g.constant(inputs[1].clone()),
                Some(g.constant(inputs[2].clone())),
                options,
            )
            .to_tensor();
        let o2 = Conv2dOptions {
            stride: [1, options.stride],
            padding: [0, options.padding],
            dilation: [1, options.dilation],
            groups: options.groups,
        };
        let x4 = inputs[0].clone().reshape(&[n, c, 1, l]);
        let w4 = inputs[1].clone().reshape(&[o, c / options.groups, 1, k]);
        let y2 = direct_conv2d(&x4, &w4, Some(&inputs[2]), o2);
        let y2 = y2.reshape(y1.shape());
        assert!(y1.max_abs_diff(&y2) < 1e-12, "conv1d {input:?} {options:?}");
    }
}

// ---- pooling ----

fn pool_cases() -> Vec<([usize; 4], Pool2dOptions)> {
    let p = Pool2dOptions::new;
    vec![
        ([1, 1, 4, 6], p(2)),
        ([2, 3, 7, 5], p(3).stride(2).padding(1)),
        ([2, 2, 6, 9], p(3).stride(1).padding(1)),
        ([1, 2, 8, 8], p(5).stride(2).padding(2)),
        ([2, 1, 5, 5], p(1)),
        (
            [1, 2, 7, 9],
            Pool2dOptions {
                kernel: [2, 3],
                stride: [2, 1],
                padding: [1, 1],
            },
        ),
    ]
}

#[test]
fn max_pool2d_gradients_and_values() {
    for (shape, o) in pool_cases() {
        // distinct values: no ties, so the function is differentiable at the point
        let n: usize = shape.iter().product();
        // a permutation of 0..n (7919 is a prime above n), scaled
        let values: Vec<f64> = (0..n).map(|i| (i * 7919 % n) as f64 * 0.37).collect();
        let x = Tensor::from_vec(values, &shape).unwrap();
        check(
            &format!("max_pool2d {shape:?} {o:?}"),
            std::slice::from_ref(&x),
            |_, v| v[0].max_pool2d(o),
        );
        let g = Graph::inference();
        let y = g.constant(x.clone()).max_pool2d(o).to_tensor();
        assert_eq!(y, direct_pool(&x, o, true), "{shape:?} {o:?}");
    }
}

#[test]
fn avg_pool2d_gradients_and_values() {
    let mut r = rng(6);
    for (shape, o) in pool_cases() {
        let x = away_from_zero(&shape, &mut r);
        check(
            &format!("avg_pool2d {shape:?} {o:?}"),
            std::slice::from_ref(&x),
            |_, v| v[0].avg_pool2d(o),
        );
        let g = Graph::inference();
        let y = g.constant(x.clone()).avg_pool2d(o).to_tensor();
        assert!(
            y.max_abs_diff(&direct_pool(&x, o, false)) < 1e-12,
            "{shape:?} {o:?}"
        );
    }
}

/// Max (padding never chosen) or average (padding counted as zeros, divisor kh·kw) pooling,
/// written out plainly.
fn direct_pool(x: &Tensor<f64>, o: Pool2dOptions, max: bool) -> Tensor<f64> {
    let [n, c, h, w]: [usize; 4] = x.shape().try_into().unwrap();
    let oh = (h + 2 * o.padding[0] - o.kernel[0]) / o.stride[0] + 1;
    let ow = (w + 2 * o.padding[1] - o.kernel[1]) / o.stride[1] + 1;
    Tensor::from_fn(&[n, c, oh, ow], |flat| {
        let (p, oy, ox) = (flat / (oh * ow), flat / ow % oh, flat % ow);
        let mut taps = Vec::new();
        for i in 0..o.kernel[0] {
            for j in 0..o.kernel[1] {
                let iy = (oy * o.stride[0] + i) as isize - o.padding[0] as isize;
                let ix = (ox * o.stride[1] + j) as isize - o.padding[1] as isize;
                if iy >= 0 && ix >= 0 && (iy as usize) < h && (ix as usize) < w {
                    taps.push(x.data()[p * h * w + iy as usize * w + ix as usize]);
                }
            }
        }
        if max {
            taps.into_iter().fold(f64::NEG_INFINITY, f64::max)
        } else {
            taps.iter().sum::<f64>() / (o.kernel[0] * o.kernel[1]) as f64
        }
    })
}

#[test]
fn max_pool2d_breaks_ties_at_the_first_maximum_in_scan_order() {
    // a 2×2 window of equal values: the gradient goes to the top-left one only
    let x = Tensor::<f64>::from_vec(vec![1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0], &[1, 2, 2, 2])
        .unwrap();
    let g = Graph::new();
    let xv = g.leaf(x);
    let grads = xv.max_pool2d(Pool2dOptions::new(2)).sum().backward();
    assert_eq!(
        grads.wrt(xv).unwrap().data(),
        &[1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    );
}

/// Max pooling written out: each window's first maximum in scan order (the first NaN if it
/// holds one), and a gradient of one to the element taken.
fn first_maxima(x: &Tensor<f32>, o: Pool2dOptions) -> (Vec<f32>, Vec<f32>) {
    let [n, c, h, w]: [usize; 4] = x.shape().try_into().unwrap();
    let oh = (h + 2 * o.padding[0] - o.kernel[0]) / o.stride[0] + 1;
    let ow = (w + 2 * o.padding[1] - o.kernel[1]) / o.stride[1] + 1;
    let (mut y, mut dx) = (Vec::new(), vec![0.0; x.numel()]);
    for p in 0..n * c {
        for (oy, ox) in (0..oh).flat_map(|oy| (0..ow).map(move |ox| (oy, ox))) {
            let mut best: Option<usize> = None;
            for (i, j) in (0..o.kernel[0]).flat_map(|i| (0..o.kernel[1]).map(move |j| (i, j))) {
                let iy = (oy * o.stride[0] + i).checked_sub(o.padding[0]);
                let ix = (ox * o.stride[1] + j).checked_sub(o.padding[1]);
                let (Some(iy), Some(ix)) = (iy, ix) else {
                    continue;
                };
                if iy >= h || ix >= w {
                    continue;
                }
                let t = p * h * w + iy * w + ix;
                let v = x.data()[t];
                best = match best {
                    Some(b) if x.data()[b].is_nan() || !(v > x.data()[b] || v.is_nan()) => Some(b),
                    _ => Some(t),
                };
            }
            let t = best.unwrap();
            y.push(x.data()[t]);
            dx[t] += 1.0;
        }
    }
    (y, dx)
}

#[test]
fn max_pool2d_takes_the_first_maximum_among_ties_zeros_of_both_signs_and_nans() {
    // few distinct values, so most windows hold ties; −0 and +0 are equal but tell apart in bits
    let mut r = rng(13);
    let pick = [-0.0, 0.0, 1.0, 1.0, -1.0, f32::NAN];
    let draws = Tensor::<f32>::rand_uniform(&[4, 4, 15, 17], 0.0, pick.len() as f64, &mut r);
    let x = Tensor::from_vec(
        draws
            .data()
            .iter()
            .map(|&u| pick[(u as usize).min(pick.len() - 1)])
            .collect(),
        &[4, 4, 15, 17],
    )
    .unwrap();
    // the 2×2 loop of its own, and the general one
    for o in [
        Pool2dOptions::new(2),
        Pool2dOptions::new(3).stride(2).padding(1),
    ] {
        let g = Graph::new();
        let xv = g.leaf(x.clone());
        let y = xv.max_pool2d(o);
        let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let (want_y, want_dx) = first_maxima(&x, o);
        assert_eq!(bits(y.value().data()), bits(&want_y), "{o:?}");
        let grads = y.sum().backward();
        assert_eq!(grads.wrt(xv).unwrap().data(), &want_dx[..], "{o:?}");
    }
}

#[test]
fn max_pool2d_propagates_nan() {
    let x = Tensor::<f32>::from_vec(vec![1.0, f32::NAN, 3.0, 2.0], &[1, 1, 2, 2]).unwrap();
    let g = Graph::inference();
    assert!(
        g.constant(x)
            .max_pool2d(Pool2dOptions::new(2))
            .item()
            .is_nan()
    );
}

#[test]
fn global_avg_pool2d_gradients_and_values() {
    let mut r = rng(7);
    for shape in [[1, 1, 1, 1], [2, 3, 4, 5], [1, 4, 7, 3]] {
        let x = away_from_zero(&shape, &mut r);
        check(
            &format!("global_avg_pool2d {shape:?}"),
            std::slice::from_ref(&x),
            |_, v| v[0].global_avg_pool2d(),
        );
        let g = Graph::inference();
        let y = g.constant(x.clone()).global_avg_pool2d().to_tensor();
        let [n, c, h, w] = shape;
        assert_eq!(y.shape(), &[n, c]);
        for p in 0..n * c {
            let mean = x.data()[p * h * w..(p + 1) * h * w].iter().sum::<f64>() / (h * w) as f64;
            assert!((y.data()[p] - mean).abs() < 1e-12);
        }
    }
}

// ---- batch normalisation and PReLU ----

#[test]
fn batch_norm_gradients_in_training_and_evaluation() {
    let mut r = rng(8);
    for shape in [
        vec![2, 3, 4, 5],
        vec![1, 2, 3, 3],
        vec![5, 4],
        vec![3, 2, 7],
        vec![4, 1, 2, 2],
    ] {
        let c = shape[1];
        let inputs = vec![
            away_from_zero(&shape, &mut r),
            away_from_zero(&[c], &mut r),
            away_from_zero(&[c], &mut r),
        ];
        check(&format!("batch_norm_train {shape:?}"), &inputs, |_, v| {
            v[0].batch_norm_train(v[1], v[2], 1e-5).0
        });
        let mean = Tensor::randn(&[c], 0.0, 1.0, &mut r);
        let var = Tensor::rand_uniform(&[c], 0.5, 2.0, &mut r);
        check(&format!("batch_norm_eval {shape:?}"), &inputs, |_, v| {
            v[0].batch_norm_eval(v[1], v[2], &mean, &var, 1e-5)
        });
    }
}

#[test]
fn batch_norm_normalises_each_channel_over_batch_and_plane() {
    let mut r = rng(9);
    let x = Tensor::<f64>::randn(&[4, 3, 5, 6], 2.0, 3.0, &mut r);
    let g = Graph::inference();
    let ones = g.constant(Tensor::ones(&[3]));
    let zeros = g.constant(Tensor::zeros(&[3]));
    let (y, stats) = g.constant(x.clone()).batch_norm_train(ones, zeros, 1e-5);
    let y = y.to_tensor();
    for c in 0..3 {
        let values: Vec<(f64, f64)> = (0..4)
            .flat_map(|n| (0..30).map(move |i| (n * 3 + c) * 30 + i))
            .map(|i| (x.data()[i], y.data()[i]))
            .collect();
        let m = values.iter().map(|v| v.0).sum::<f64>() / 120.0;
        let var = values.iter().map(|v| (v.0 - m).powi(2)).sum::<f64>() / 120.0;
        assert!(
            (stats.mean.data()[c] - m).abs() < 1e-12 && (stats.var.data()[c] - var).abs() < 1e-10
        );
        for (xv, yv) in values {
            assert!((yv - (xv - m) / (var + 1e-5).sqrt()).abs() < 1e-10);
        }
    }
    assert_eq!(stats.count, 120);
}

#[test]
fn prelu_gradients_per_channel_and_shared() {
    let mut r = rng(10);
    for shape in [
        vec![2, 3, 4, 5],
        vec![5, 4],
        vec![1, 1, 3, 3],
        vec![2, 3, 6],
    ] {
        let c = shape[1];
        let x = away_from_zero(&shape, &mut r);
        let per_channel = vec![x.clone(), Tensor::rand_uniform(&[c], 0.05, 0.5, &mut r)];
        check(&format!("prelu {shape:?}"), &per_channel, |_, v| {
            v[0].prelu(v[1])
        });
        let shared = vec![x, Tensor::from_vec(vec![0.25], &[1]).unwrap()];
        check(&format!("prelu shared {shape:?}"), &shared, |_, v| {
            v[0].prelu(v[1])
        });
    }
}

#[test]
fn dropout_and_flatten_work_on_any_shape() {
    // flatten is a reshape; dropout multiplies by a mask of the input's shape
    let mut r = rng(11);
    let x = away_from_zero(&[2, 3, 4, 5], &mut r);
    let mask = Tensor::from_fn(&[2, 3, 4, 5], |i| if i % 3 == 0 { 0.0 } else { 1.5 });
    check("flatten", std::slice::from_ref(&x), |_, v| {
        v[0].reshape(&[2, 60])
    });
    check("dropout mask", &[x], |g, v| v[0] * g.constant(mask.clone()));
}

// ---- determinism: the same bits on 1 and 2 threads ----

fn on_threads<R: Send>(threads: usize, f: impl FnOnce() -> R + Send) -> R {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
        .install(f)
}

/// Forward value and every input gradient of `f` at `inputs` (f32), seeded with `seed`.
fn value_and_grads<Func>(inputs: &[Tensor<f32>], seed_value: u64, f: Func) -> Vec<Tensor<f32>>
where
    Func: for<'g> Fn(&[Var<'g, f32>]) -> Var<'g, f32>,
{
    let g = Graph::new();
    let leaves: Vec<Var<'_, f32>> = inputs.iter().map(|t| g.leaf(t.clone())).collect();
    let y = f(&leaves);
    let value = y.to_tensor();
    let seed = Tensor::randn(value.shape(), 0.0, 1.0, &mut rng(seed_value));
    let grads = y.backward_with(seed);
    std::iter::once(value)
        .chain(leaves.iter().map(|l| grads.wrt(*l).unwrap().clone()))
        .collect()
}

#[test]
fn every_op_gives_the_same_bits_on_one_and_two_threads() {
    let mut r = rng(12);
    let x = Tensor::<f32>::randn(&[6, 16, 20, 18], 0.0, 1.0, &mut r);
    let w = Tensor::<f32>::randn(&[32, 16, 3, 3], 0.0, 0.1, &mut r);
    let wd = Tensor::<f32>::randn(&[16, 1, 3, 3], 0.0, 0.1, &mut r);
    let b = Tensor::<f32>::randn(&[32], 0.0, 0.1, &mut r);
    let c16 = Tensor::<f32>::rand_uniform(&[16], 0.1, 1.0, &mut r);
    let x1 = Tensor::<f32>::randn(&[8, 16, 300], 0.0, 1.0, &mut r);
    let w1 = Tensor::<f32>::randn(&[24, 16, 5], 0.0, 0.1, &mut r);
    let run = || {
        let conv = value_and_grads(&[x.clone(), w.clone(), b.clone()], 1, |v| {
            v[0].conv2d(v[1], Some(v[2]), Conv2dOptions::new().padding(1))
        });
        let strided = value_and_grads(&[x.clone(), w.clone()], 2, |v| {
            v[0].conv2d(
                v[1],
                None,
                Conv2dOptions::new().stride(2).padding(2).dilation(2),
            )
        });
        let depthwise = value_and_grads(&[x.clone(), wd.clone()], 3, |v| {
            v[0].conv2d(v[1], None, Conv2dOptions::new().padding(1).groups(16))
        });
        let conv1 = value_and_grads(&[x1.clone(), w1.clone()], 4, |v| {
            v[0].conv1d(
                v[1],
                None,
                Conv1dOptions {
                    padding: 2,
                    ..Default::default()
                },
            )
        });
        let pools = value_and_grads(std::slice::from_ref(&x), 5, |v| {
            let m = v[0].max_pool2d(Pool2dOptions::new(3).stride(2).padding(1));
            let a = v[0].avg_pool2d(Pool2dOptions::new(3).stride(2).padding(1));
            let m2 = v[0].max_pool2d(Pool2dOptions::new(2));
            (m * a + m2).global_avg_pool2d()
        });
        let norm = value_and_grads(&[x.clone(), c16.clone(), c16.clone()], 6, |v| {
            v[0].batch_norm_train(v[1], v[2], 1e-5).0.prelu(v[1])
        });
        [conv, strided, depthwise, conv1, pools, norm]
    };
    let (one, two) = (on_threads(1, run), on_threads(2, run));
    for (k, (a, b)) in one.iter().zip(&two).enumerate() {
        for (i, (a, b)) in a.iter().zip(b).enumerate() {
            assert!(
                a.data() == b.data(),
                "case {k}, tensor {i}: 1 and 2 threads differ"
            );
        }
    }
}

// ---- against PyTorch ----

/// `tests/data/conv/torch.json`, made by `tests/data/conv/make_fixtures.py` (PyTorch 2, CPU,
/// float64): for each case the inputs, the output, and the gradients of `Σ y ⊙ seed`.
#[test]
fn conv_and_pooling_match_pytorch() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/conv/torch.json"
    ))
    .unwrap();
    let cases: serde_json::Value = serde_json::from_str(&text).unwrap();
    let tensor = |v: &serde_json::Value| {
        let shape: Vec<usize> = serde_json::from_value(v["shape"].clone()).unwrap();
        let data: Vec<f64> = serde_json::from_value(v["data"].clone()).unwrap();
        Tensor::from_vec(data, &shape).unwrap()
    };
    let mut seen = 0;
    for case in cases.as_array().unwrap() {
        let op = case["op"].as_str().unwrap();
        let args = &case["args"];
        let arg = |k: &str| args[k].as_u64().unwrap() as usize;
        let inputs: Vec<Tensor<f64>> = case["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(tensor)
            .collect();
        let g = Graph::new();
        let leaves: Vec<Var<'_, f64>> = inputs.iter().map(|t| g.leaf(t.clone())).collect();
        let y = match op {
            "conv2d" => leaves[0].conv2d(
                leaves[1],
                leaves.get(2).copied(),
                Conv2dOptions::new()
                    .stride(arg("stride"))
                    .padding(arg("padding"))
                    .dilation(arg("dilation"))
                    .groups(arg("groups")),
            ),
            "conv1d" => leaves[0].conv1d(
                leaves[1],
                leaves.get(2).copied(),
                Conv1dOptions {
                    stride: arg("stride"),
                    padding: arg("padding"),
                    dilation: arg("dilation"),
                    groups: arg("groups"),
                },
            ),
            "max_pool2d" => leaves[0].max_pool2d(
                Pool2dOptions::new(arg("kernel"))
                    .stride(arg("stride"))
                    .padding(arg("padding")),
            ),
            "avg_pool2d" => leaves[0].avg_pool2d(
                Pool2dOptions::new(arg("kernel"))
                    .stride(arg("stride"))
                    .padding(arg("padding")),
            ),
            "batch_norm2d" => leaves[0].batch_norm_train(leaves[1], leaves[2], 1e-5).0,
            "prelu" => leaves[0].prelu(leaves[1]),
            other => panic!("unknown op {other} in the fixtures"),
        };
        let expected = tensor(&case["output"]);
        let value = y.to_tensor();
        assert_eq!(value.shape(), expected.shape(), "{op} {args}");
        assert!(
            value.max_abs_diff(&expected) < 1e-10,
            "{op} {args}: {}",
            value.max_abs_diff(&expected)
        );
        let grads = y.backward_with(tensor(&case["seed"]));
        for (i, (leaf, expected)) in leaves
            .iter()
            .zip(case["grads"].as_array().unwrap())
            .enumerate()
        {
            let diff = grads.wrt(*leaf).unwrap().max_abs_diff(&tensor(expected));
            assert!(
                diff < 1e-10,
                "{op} {args}: gradient of input {i} differs by {diff}"
            );
        }
        seen += 1;
    }
    assert!(seen >= 8, "only {seen} fixture cases");
}

// ---- shape errors: a panic naming the op and the shapes ----

fn zeros(shape: &[usize]) -> Tensor<f32> {
    Tensor::zeros(shape)
}

#[test]
#[should_panic(
    expected = "shape mismatch in conv2d: input [1, 3, 5, 5], weight [4, 2, 3, 3]: the weight takes 2 channels per group, the input gives 3"
)]
fn conv2d_channels_that_do_not_match() {
    let g = Graph::new();
    let _ = g.constant(zeros(&[1, 3, 5, 5])).conv2d(
        g.constant(zeros(&[4, 2, 3, 3])),
        None,
        Conv2dOptions::new(),
    );
}

#[test]
#[should_panic(
    expected = "shape mismatch in conv2d: input [1, 4, 5, 5], weight [6, 2, 3, 3]: groups = 3 must divide"
)]
fn conv2d_groups_that_do_not_divide() {
    let g = Graph::new();
    let _ = g.constant(zeros(&[1, 4, 5, 5])).conv2d(
        g.constant(zeros(&[6, 2, 3, 3])),
        None,
        Conv2dOptions::new().groups(3),
    );
}

#[test]
#[should_panic(
    expected = "shape mismatch in conv2d: input [1, 1, 4, 4], weight [1, 1, 7, 7]: the kernel [7, 7] (dilation [1, 1]) is larger than the input padded by [1, 1]"
)]
fn conv2d_kernel_larger_than_the_padded_input() {
    let g = Graph::new();
    let _ = g.constant(zeros(&[1, 1, 4, 4])).conv2d(
        g.constant(zeros(&[1, 1, 7, 7])),
        None,
        Conv2dOptions::new().padding(1),
    );
}

#[test]
#[should_panic(
    expected = "shape mismatch in conv2d: input [2, 3], weight [4, 3, 3, 3] (both must be rank 4"
)]
fn conv2d_of_a_matrix() {
    let g = Graph::new();
    let _ = g.constant(zeros(&[2, 3])).conv2d(
        g.constant(zeros(&[4, 3, 3, 3])),
        None,
        Conv2dOptions::new(),
    );
}

#[test]
#[should_panic(
    expected = "shape mismatch in conv2d: weight [4, 3, 3, 3], bias [3] (the bias must be [4])"
)]
fn conv2d_bias_of_the_wrong_width() {
    let g = Graph::new();
    let _ = g.constant(zeros(&[1, 3, 5, 5])).conv2d(
        g.constant(zeros(&[4, 3, 3, 3])),
        Some(g.constant(zeros(&[3]))),
        Conv2dOptions::new(),
    );
}

#[test]
#[should_panic(
    expected = "shape mismatch in conv1d: input [1, 2, 3], weight [1, 2, 5]: the kernel [1, 5]"
)]
fn conv1d_kernel_longer_than_the_input() {
    let g = Graph::new();
    let _ = g.constant(zeros(&[1, 2, 3])).conv1d(
        g.constant(zeros(&[1, 2, 5])),
        None,
        Conv1dOptions::default(),
    );
}

#[test]
#[should_panic(
    expected = "shape mismatch in max_pool2d: input [1, 1, 2, 2]: the window [3, 3] is larger"
)]
fn max_pool2d_window_larger_than_the_input() {
    let g = Graph::new();
    let _ = g
        .constant(zeros(&[1, 1, 2, 2]))
        .max_pool2d(Pool2dOptions::new(3));
}

#[test]
#[should_panic(expected = "avg_pool2d: padding [2, 2] must be at most half the window [3, 3]")]
fn avg_pool2d_padding_over_half_the_window() {
    let g = Graph::new();
    let _ = g
        .constant(zeros(&[1, 1, 8, 8]))
        .avg_pool2d(Pool2dOptions::new(3).padding(2));
}

#[test]
#[should_panic(expected = "shape mismatch in batch_norm: input [2, 3, 4, 4], weight [4], bias [4]")]
fn batch_norm_parameters_of_the_wrong_width() {
    let g = Graph::new();
    let _ = g.constant(zeros(&[2, 3, 4, 4])).batch_norm_train(
        g.constant(zeros(&[4])),
        g.constant(zeros(&[4])),
        1e-5,
    );
}

#[test]
#[should_panic(expected = "shape mismatch in prelu: input [2, 3, 4, 4], slope [4]")]
fn prelu_slope_of_the_wrong_width() {
    let g = Graph::new();
    let _ = g
        .constant(zeros(&[2, 3, 4, 4]))
        .prelu(g.constant(zeros(&[4])));
}

#[test]
fn shape_panics_point_at_the_callers_line() {
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
    let cases: [fn(); 7] = [
        || {
            let g = Graph::new();
            let w = g.constant(zeros(&[4, 2, 3, 3]));
            let _ = g
                .constant(zeros(&[1, 3, 5, 5]))
                .conv2d(w, None, Conv2dOptions::new());
        },
        || {
            let g = Graph::new();
            let w = g.constant(zeros(&[1, 1, 7, 7]));
            let _ = g
                .constant(zeros(&[1, 1, 4, 4]))
                .conv2d(w, None, Conv2dOptions::new());
        },
        || {
            let g = Graph::new();
            let (w, b) = (g.constant(zeros(&[4, 3, 3, 3])), g.constant(zeros(&[3])));
            let _ = g
                .constant(zeros(&[1, 3, 5, 5]))
                .conv2d(w, Some(b), Conv2dOptions::new());
        },
        || {
            let g = Graph::new();
            let w = g.constant(zeros(&[1, 2, 5]));
            let _ = g
                .constant(zeros(&[1, 2, 3]))
                .conv1d(w, None, Conv1dOptions::default());
        },
        || {
            let g = Graph::new();
            let _ = g
                .constant(zeros(&[1, 1, 2, 2]))
                .max_pool2d(Pool2dOptions::new(3));
        },
        || {
            let g = Graph::new();
            let c = g.constant(zeros(&[4]));
            let _ = g
                .constant(zeros(&[2, 3, 4, 4]))
                .batch_norm_train(c, c, 1e-5);
        },
        || {
            let g = Graph::new();
            let _ = g
                .constant(zeros(&[2, 3, 4, 4]))
                .prelu(g.constant(zeros(&[4])));
        },
    ];
    for (i, case) in cases.into_iter().enumerate() {
        assert_eq!(location(case), file!(), "case {i}");
    }
}
