//! Optimisers: first steps against values computed by hand, convergence on a quadratic,
//! parameter groups, schedules, clipping, and a checked saved state.

use margrad::optim::{
    Group, LrSchedule, Method, Optimizer, OptimizerState, ParamState, Schedule, clip_grad_norm,
};
use margrad::{Error, Gradients, Graph, ParamId, Params, Tensor};

/// A one-parameter store [p] and the gradients of Σ g·p for a chosen g (so ∂/∂p = g).
fn setup(p: f64) -> (Params<f64>, ParamId) {
    let mut params = Params::new();
    let id = params.add("p", Tensor::from_vec(vec![p], &[1]).unwrap());
    (params, id)
}

fn grads_of(params: &Params<f64>, id: ParamId, g: f64) -> Gradients<f64> {
    let graph = Graph::new();
    let coef = graph.constant(Tensor::from_vec(vec![g], &[1]).unwrap());
    (graph.param(params, id) * coef).sum().backward()
}

fn run(method: Method, lr: f64, decay: f64, p0: f64, gs: &[f64]) -> Vec<f64> {
    let (mut params, id) = setup(p0);
    let mut opt = Optimizer::new(method, &params, lr, decay).unwrap();
    gs.iter()
        .map(|&g| {
            let grads = grads_of(&params, id, g);
            opt.step(&mut params, &grads).unwrap();
            params.get(id).data()[0]
        })
        .collect()
}

fn close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() < 1e-12, "{a:?} vs {b:?}");
    }
}

#[test]
fn sgd_by_hand() {
    let plain = Method::Sgd {
        momentum: 0.0,
        nesterov: false,
    };
    close(&run(plain, 0.1, 0.0, 1.0, &[0.5, 0.5]), &[0.95, 0.90]);
    // weight decay: d = g + λp = 0.5 + 0.01·1
    close(&run(plain, 0.1, 0.01, 1.0, &[0.5]), &[1.0 - 0.1 * 0.51]);
    // momentum: b1 = g1 = 0.5, p1 = 0.95; b2 = 0.9·0.5 + 0.2 = 0.65, p2 = 0.95 − 0.065
    let momentum = Method::Sgd {
        momentum: 0.9,
        nesterov: false,
    };
    close(&run(momentum, 0.1, 0.0, 1.0, &[0.5, 0.2]), &[0.95, 0.885]);
    // Nesterov: step 1 d = g + μ·b = 0.5 + 0.45; step 2 b = 0.65, d = 0.2 + 0.585
    let nesterov = Method::Sgd {
        momentum: 0.9,
        nesterov: true,
    };
    close(
        &run(nesterov, 0.1, 0.0, 1.0, &[0.5, 0.2]),
        &[0.905, 0.905 - 0.0785],
    );
}

#[test]
fn adam_and_adamw_by_hand() {
    let (lr, eps) = (0.1, 1e-8);
    // step 1: m = 0.1 g, v = 0.001 g², m̂ = g, v̂ = g²: p ← p − lr·g/(|g| + ε)
    let s1 = 1.0 - lr * 0.5 / (0.5 + eps);
    // step 2 with g = 0.2: m = 0.09·0.5... computed literally below
    let (m1, v1): (f64, f64) = (0.1 * 0.5, 0.001 * 0.25);
    let (m2, v2) = (0.9 * m1 + 0.1 * 0.2, 0.999 * v1 + 0.001 * 0.04);
    let (bc1, bc2) = (1.0 - 0.9f64.powi(2), 1.0 - 0.999f64.powi(2));
    let s2 = s1 - lr / bc1 * m2 / (v2.sqrt() / bc2.sqrt() + eps);
    close(&run(Method::adam(), lr, 0.0, 1.0, &[0.5, 0.2]), &[s1, s2]);

    // Adam's decay enters the gradient; AdamW's shrinks the weight first
    let decay = 0.1;
    let g = 0.5 + decay * 1.0;
    close(
        &run(Method::adam(), lr, decay, 1.0, &[0.5]),
        &[1.0 - lr * g / (g + eps)],
    );
    let shrunk = 1.0 - lr * decay;
    close(
        &run(Method::adamw(), lr, decay, 1.0, &[0.5]),
        &[shrunk - lr * 0.5 / (0.5 + eps)],
    );
}

#[test]
fn every_method_converges_on_a_quadratic() {
    // f(p) = Σ a_i (p_i − c_i)², minimum at c
    let (a, c) = (vec![1.0, 4.0, 0.5], vec![3.0, -2.0, 0.5]);
    let methods = [
        (
            Method::Sgd {
                momentum: 0.0,
                nesterov: false,
            },
            0.1,
        ),
        (
            Method::Sgd {
                momentum: 0.9,
                nesterov: false,
            },
            0.02,
        ),
        (
            Method::Sgd {
                momentum: 0.9,
                nesterov: true,
            },
            0.02,
        ),
        (Method::adam(), 0.05),
        (Method::adamw(), 0.05),
    ];
    for (method, lr) in methods {
        let mut params = Params::<f64>::new();
        let id = params.add("p", Tensor::zeros(&[3]));
        let mut opt = Optimizer::new(method, &params, lr, 0.0).unwrap();
        for _ in 0..2000 {
            let grads = {
                let g = Graph::new();
                let d =
                    g.param(&params, id) - g.constant(Tensor::from_vec(c.clone(), &[3]).unwrap());
                (d * d * g.constant(Tensor::from_vec(a.clone(), &[3]).unwrap()))
                    .sum()
                    .backward()
            };
            opt.step(&mut params, &grads).unwrap();
        }
        let p = params.get(id).data();
        for (x, target) in p.iter().zip(&c) {
            assert!((x - target).abs() < 1e-3, "{method:?}: {p:?}");
        }
    }
}

#[test]
fn groups_have_their_own_rate_and_decay() {
    let mut params = Params::<f64>::new();
    let body = params.add("body", Tensor::ones(&[1]));
    let head = params.add("head", Tensor::ones(&[1]));
    let buffer = params.add_buffer("stat", Tensor::ones(&[1]));
    let plain = Method::Sgd {
        momentum: 0.0,
        nesterov: false,
    };
    let mut opt = Optimizer::new(plain, &params, 0.1, 0.0)
        .unwrap()
        .with_group(&[head], 1.0, 0.5)
        .unwrap();
    assert_eq!(opt.groups().len(), 2);
    assert!(!opt.groups().iter().any(|g| g.params.contains(&buffer)));
    let grads = {
        let g = Graph::new();
        (g.param(&params, body) + g.param(&params, head))
            .sum()
            .backward()
    };
    opt.step(&mut params, &grads).unwrap();
    assert!((params.get(body).data()[0] - 0.9).abs() < 1e-12);
    // head: d = 1 + 0.5·1, lr 1
    assert!((params.get(head).data()[0] - (1.0 - 1.5)).abs() < 1e-12);
    opt.set_lr_factor(0.5);
    assert_eq!((opt.lr(0), opt.lr(1)), (0.05, 0.5));
}

#[test]
fn schedules() {
    let multistep = LrSchedule {
        schedule: Schedule::MultiStep {
            milestones: vec![3, 6],
            gamma: 0.1,
        },
        warmup: 0,
    };
    let f: Vec<f64> = (0..8).map(|t| multistep.factor(t)).collect();
    let expected = [1.0, 1.0, 1.0, 0.1, 0.1, 0.1, 0.01, 0.01];
    assert!(
        f.iter().zip(expected).all(|(a, b)| (a - b).abs() < 1e-15),
        "{f:?}"
    );

    let cosine = LrSchedule {
        schedule: Schedule::Cosine {
            total: 10,
            min_factor: 0.1,
        },
        warmup: 0,
    };
    assert_eq!(cosine.factor(0), 1.0);
    assert!((cosine.factor(5) - 0.55).abs() < 1e-12);
    assert!((cosine.factor(10) - 0.1).abs() < 1e-12);
    assert!((cosine.factor(50) - 0.1).abs() < 1e-12);

    let warm = LrSchedule {
        schedule: Schedule::Constant,
        warmup: 4,
    };
    let f: Vec<f64> = (0..6).map(|t| warm.factor(t)).collect();
    assert_eq!(f, [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]);
}

#[test]
fn clipping_scales_the_global_norm() {
    let mut params = Params::<f64>::new();
    let a = params.add("a", Tensor::zeros(&[2]));
    let b = params.add("b", Tensor::zeros(&[1]));
    let mut grads = {
        let g = Graph::new();
        let ca = g.constant(Tensor::from_vec(vec![3.0, 0.0], &[2]).unwrap());
        let cb = g.constant(Tensor::from_vec(vec![4.0], &[1]).unwrap());
        ((g.param(&params, a) * ca).sum() + (g.param(&params, b) * cb).sum()).backward()
    };
    assert_eq!(clip_grad_norm(&mut grads, 10.0), 5.0); // under the limit: untouched
    assert_eq!(grads.param(a).unwrap().data(), &[3.0, 0.0]);
    assert_eq!(clip_grad_norm(&mut grads, 1.0), 5.0);
    let scale = 1.0 / (5.0 + 1e-6);
    assert!((grads.param(a).unwrap().data()[0] - 3.0 * scale).abs() < 1e-15);
    assert!((grads.param(b).unwrap().data()[0] - 4.0 * scale).abs() < 1e-15);
}

#[test]
fn settings_out_of_range_are_errors() {
    let (params, _) = setup(1.0);
    let err = |m: Method, lr: f64, wd: f64| match Optimizer::new(m, &params, lr, wd) {
        Err(Error::InvalidSetting { name, .. }) => name,
        other => panic!("expected an error, got {other:?}"),
    };
    let sgd = |momentum, nesterov| Method::Sgd { momentum, nesterov };
    assert_eq!(err(sgd(0.0, false), 0.0, 0.0), "learning rate");
    assert_eq!(err(sgd(0.0, false), 0.1, -1.0), "weight decay");
    assert_eq!(err(sgd(1.0, false), 0.1, 0.0), "momentum");
    assert_eq!(err(sgd(0.0, true), 0.1, 0.0), "momentum");
    assert_eq!(
        err(
            Method::Adam {
                beta1: 0.9,
                beta2: 1.0,
                eps: 1e-8
            },
            0.1,
            0.0
        ),
        "beta2"
    );
}

#[test]
fn saved_state_resumes_and_is_checked_against_the_parameters() {
    let (mut params, id) = setup(1.0);
    let mut opt = Optimizer::new(Method::adam(), &params, 0.1, 0.0).unwrap();
    let grads = grads_of(&params, id, 0.5);
    opt.step(&mut params, &grads).unwrap();
    // resume from the saved state: the same second step as without the interruption
    let mut resumed = Optimizer::from_state(opt.state().clone(), &params).unwrap();
    let mut p2 = params.clone();
    let grads = grads_of(&params, id, 0.2);
    opt.step(&mut params, &grads).unwrap();
    resumed.step(&mut p2, &grads).unwrap();
    assert_eq!(params.get(id), p2.get(id));
    // a state for other parameters is refused
    let mut other = Params::<f64>::new();
    other.add("q", Tensor::zeros(&[3]));
    let err = Optimizer::from_state(opt.state().clone(), &other).unwrap_err();
    assert!(
        err.to_string().contains(
            "at per_param[0].first (q): the moment has shape [1], where this parameter and \
             method need [3]"
        ),
        "{err}"
    );
    let empty = Params::<f64>::new();
    let err = Optimizer::from_state(opt.state().clone(), &empty).unwrap_err();
    assert!(err.to_string().contains("names parameter #0"), "{err}");
}

#[test]
fn a_large_parameter_updated_on_two_threads_matches_one_element_at_a_time() {
    // above the size at which the update is spread over the pool, in chunks
    let len = 40_000;
    let p0: Vec<f64> = (0..len)
        .map(|i| ((i * 37) % 101) as f64 / 50.0 - 1.0)
        .collect();
    let g: Vec<f64> = (0..len)
        .map(|i| ((i * 53) % 97) as f64 / 40.0 - 1.2)
        .collect();
    let methods = [
        Method::Sgd {
            momentum: 0.9,
            nesterov: true,
        },
        Method::Adam {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
        Method::AdamW {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
        },
    ];
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    for method in methods {
        let mut params = Params::new();
        let id = params.add("p", Tensor::from_vec(p0.clone(), &[len]).unwrap());
        let mut opt = Optimizer::new(method, &params, 0.05, 0.01).unwrap();
        pool.install(|| {
            for _ in 0..3 {
                let grads = {
                    let graph = Graph::new();
                    let coef = graph.constant(Tensor::from_vec(g.clone(), &[len]).unwrap());
                    (graph.param(&params, id) * coef).sum().backward()
                };
                opt.step(&mut params, &grads).unwrap();
            }
        });
        for i in (0..len).step_by(997).chain([len - 1]) {
            let alone = run(method, 0.05, 0.01, p0[i], &[g[i]; 3]);
            assert_eq!(
                params.get(id).data()[i],
                alone[2],
                "{method:?}, element {i}"
            );
        }
    }
}

#[test]
fn rates_are_checked_in_the_element_type_they_are_used_in() {
    let mut params = Params::<f32>::new();
    params.add("w", Tensor::ones(&[2]));
    // 1e39 is a finite f64 but an infinite f32
    match Optimizer::new(Method::adam(), &params, 1e39, 0.0) {
        Err(Error::InvalidSetting { name, .. }) => assert_eq!(name, "learning rate"),
        other => panic!("expected an invalid learning rate, got {other:?}"),
    }
    match Optimizer::new(Method::adam(), &params, 1e-3, 1e39) {
        Err(Error::InvalidSetting { name, .. }) => assert_eq!(name, "weight decay"),
        other => panic!("expected an invalid weight decay, got {other:?}"),
    }
    let mut wide = Params::<f64>::new();
    wide.add("w", Tensor::ones(&[2]));
    assert!(Optimizer::new(Method::adam(), &wide, 1e39, 0.0).is_ok());
}

#[test]
fn a_step_that_overflows_names_the_parameter_and_still_updates_every_chunk() {
    let len = 40_000; // several chunks, spread over the pool
    let mut params = Params::<f32>::new();
    let id = params.add("p", Tensor::ones(&[len]));
    let sgd = Method::Sgd {
        momentum: 0.0,
        nesterov: false,
    };
    let mut opt = Optimizer::new(sgd, &params, 3e38, 0.0).unwrap();
    // ∂(Σ p ⊙ c)/∂p = c: 100 overflows at element 0, 1e-38 moves the others by about 3
    let mut coef = vec![1e-38f32; len];
    coef[0] = 100.0;
    let grads = {
        let g = Graph::new();
        let c = g.constant(Tensor::from_vec(coef, &[len]).unwrap());
        (g.param(&params, id) * c).sum().backward()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let err = pool.install(|| opt.step(&mut params, &grads)).unwrap_err();
    match err {
        Error::NonFinite { what, index, value } => {
            assert_eq!((what.as_str(), index), ("p after the update", 0));
            assert!(value.is_infinite());
        }
        other => panic!("expected a non-finite parameter, got {other:?}"),
    }
    let last = params.get(id).data()[len - 1];
    assert!(
        (last - (1.0 - 3.0)).abs() < 0.1,
        "the last chunk was updated: {last}"
    );
}

/// A stored Adam state for `[w (2), v (3)]` after three steps, to be damaged one field at a time.
fn stored_adam() -> (Params<f32>, OptimizerState<f32>) {
    let mut params = Params::<f32>::new();
    params.add("w", Tensor::ones(&[2]));
    params.add("v", Tensor::ones(&[3]));
    let mut state = Optimizer::new(Method::adam(), &params, 1e-3, 0.0)
        .unwrap()
        .state()
        .clone();
    state.per_param = params
        .ids()
        .map(|id| {
            let shape = params.get(id).shape();
            Some(ParamState {
                steps: 3,
                first: Tensor::full(shape, 0.1),
                second: Tensor::full(shape, 0.01),
            })
        })
        .collect();
    (params, state)
}

/// The message of `from_state` on the stored state after `damage`.
fn refused(damage: impl FnOnce(&mut OptimizerState<f32>)) -> String {
    let (params, mut state) = stored_adam();
    Optimizer::from_state(state.clone(), &params).expect("the undamaged state is valid");
    damage(&mut state);
    match Optimizer::from_state(state, &params) {
        Err(e) => e.to_string(),
        Ok(_) => "accepted".to_string(),
    }
}

#[test]
fn a_crafted_optimizer_state_is_refused_naming_the_field() {
    for (damage, says) in [
        (
            Box::new(|s: &mut OptimizerState<f32>| s.lr_factor = f64::NAN)
                as Box<dyn FnOnce(&mut OptimizerState<f32>)>,
            "malformed optimizer state at lr_factor: the schedule's factor is NaN, where it must \
             be finite and non-negative",
        ),
        (
            Box::new(|s| s.lr_factor = -0.5),
            "at lr_factor: the schedule's factor is -0.5",
        ),
        (
            Box::new(|s| s.lr_factor = 1e42), // a finite f64, but 1e-3 × 1e42 overflows f32
            "at groups[0].lr: the rate 0.001 times the schedule's factor",
        ),
        (
            Box::new(|s| s.per_param[1].as_mut().unwrap().steps = u64::MAX),
            "at per_param[1].steps (v): 18446744073709551615 updates, more than any run makes",
        ),
        (
            Box::new(|s| s.per_param[1].as_mut().unwrap().second = Tensor::zeros(&[0])),
            "at per_param[1].second (v): the moment has shape [0], where this parameter and \
             method need [3]",
        ),
        (
            Box::new(|s| s.per_param[0].as_mut().unwrap().first = Tensor::zeros(&[3])),
            "at per_param[0].first (w): the moment has shape [3], where this parameter and \
             method need [2]",
        ),
        (
            Box::new(|s| s.per_param[1].as_mut().unwrap().first.data_mut()[2] = f32::INFINITY),
            "at per_param[1].first (v): element 2 is inf, where a moment must be finite",
        ),
        (
            Box::new(|s| s.per_param[0].as_mut().unwrap().second.data_mut()[1] = f32::NAN),
            "at per_param[0].second (w): element 1 is NaN",
        ),
        (
            Box::new(|s| s.per_param[0].as_mut().unwrap().second.data_mut()[0] = -0.5),
            "at per_param[0].second (w): element 0 is -0.5, where a mean of squares cannot be \
             negative",
        ),
        (
            Box::new(|s| {
                let twice = s.groups[0].params[0];
                s.groups.push(Group {
                    params: vec![twice],
                    lr: 0.1,
                    weight_decay: 0.0,
                });
            }),
            "at groups[1].params: w (#0) is in two groups, or twice in one: it would be updated \
             twice a step",
        ),
        (
            Box::new(|s| {
                s.method = Method::Adam {
                    beta1: 0.9,
                    beta2: 0.999_999_999, // 1 in f32: v would never move
                    eps: 1e-8,
                }
            }),
            "invalid beta2 = 0.999999999: must be in [0, 1) in the element type",
        ),
        (
            Box::new(|s| {
                s.method = Method::Adam {
                    beta1: 0.9,
                    beta2: 0.999,
                    eps: 1e-50, // 0 in f32
                }
            }),
            "invalid eps = 1e-50: must be positive and finite in the element type",
        ),
    ] {
        let message = refused(damage);
        assert!(message.contains(says), "{message}\nshould say: {says}");
    }
    // SGD keeps one moment: a second one of the parameter's shape is not its state
    let (params, mut state) = stored_adam();
    state.method = Method::Sgd {
        momentum: 0.9,
        nesterov: false,
    };
    let err = Optimizer::from_state(state.clone(), &params).unwrap_err();
    assert!(
        err.to_string()
            .contains("at per_param[0].second (w): the moment has shape [2], where this parameter and method need [0]"),
        "{err}"
    );
    for s in state.per_param.iter_mut().flatten() {
        s.second = Tensor::zeros(&[0]);
    }
    Optimizer::from_state(state, &params).unwrap();
}

#[test]
fn a_schedule_factor_of_zero_and_the_largest_step_count_are_valid() {
    let (mut params, mut state) = stored_adam();
    state.lr_factor = 0.0;
    state.per_param[0].as_mut().unwrap().steps = margrad::optim::MAX_STEPS - 1;
    let mut opt = Optimizer::from_state(state, &params).unwrap();
    // past i32::MAX steps the bias corrections are 1 (β^t underflows), not a wrapped power
    opt.set_lr_factor(1.0);
    let w = params.find("w").unwrap();
    let grads = {
        let graph = Graph::new();
        graph.param(&params, w).sum().backward()
    };
    opt.step(&mut params, &grads).unwrap();
    let m = 0.9 * 0.1 + 0.1 * 1.0;
    let v: f64 = 0.999 * 0.01 + 0.001 * 1.0;
    let expected = 1.0 - 1e-3 * m / (v.sqrt() + 1e-8);
    for &p in params.get(w).data() {
        assert!((f64::from(p) - expected).abs() < 1e-6, "{p} vs {expected}");
    }
}

/// The update a blocked head fuses into its kernel is the optimiser's SGD with momentum, bit for
/// bit: over one element against `Optimizer::step`, and over a slice long enough to be spread
/// over the threads against the rule written out; an update that overflows says so.
#[test]
fn the_fused_sgd_momentum_update_is_the_optimisers_rule() {
    use margrad::optim::sgd_momentum_update;
    let gs = [0.5, -1.25, 3.0, 0.125, -2.0];
    let method = Method::Sgd {
        momentum: 0.9,
        nesterov: false,
    };
    let by_optimizer = run(method, 0.1, 0.0, 1.5, &gs);
    let (mut p, mut v) = ([1.5f64], [0.0f64]);
    let fused: Vec<f64> = gs
        .iter()
        .map(|&g| {
            assert!(sgd_momentum_update(&mut p, &mut v, &[g], 0.1, 0.9));
            p[0]
        })
        .collect();
    assert_eq!(fused, by_optimizer);

    let n = 100_000;
    let grad: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let mut p: Vec<f32> = (0..n).map(|i| (i % 13) as f32 / 3.0).collect();
    let mut v = vec![0.0f32; n];
    let (mut p_rule, mut v_rule) = (p.clone(), v.clone());
    for _ in 0..3 {
        assert!(sgd_momentum_update(&mut p, &mut v, &grad, 0.1, 0.9));
        for ((p, v), &g) in p_rule.iter_mut().zip(&mut v_rule).zip(&grad) {
            *v = 0.9 * *v + g;
            *p -= 0.1 * *v;
        }
    }
    assert_eq!(p, p_rule);
    assert_eq!(v, v_rule);

    let (mut p, mut v) = ([f32::MAX, 0.0], [0.0f32; 2]);
    assert!(!sgd_momentum_update(
        &mut p,
        &mut v,
        &[-f32::MAX, 1.0],
        10.0,
        0.9
    ));
    assert!(p[0].is_infinite());
}
