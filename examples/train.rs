//! Trains a small MLP classifier on the UCI digits shipped inside the crate, with plain SGD.
//!
//! `cargo run --release --example train`
//!
//! The engine end to end: parameters, a graph per step, backward, an in-place update, and an
//! inference graph for evaluation. The full trainer (margin losses, verification metrics,
//! checkpoints, plots) will replace this example.

use margrad::data::{Dataset, digits};
use margrad::{Graph, ParamId, Params, Tensor, Var};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use rand::seq::SliceRandom;
use std::time::Instant;

struct Mlp {
    layers: Vec<(ParamId, ParamId)>,
}

impl Mlp {
    fn new(sizes: &[usize], params: &mut Params, rng: &mut Xoshiro256PlusPlus) -> Self {
        let layers = sizes
            .windows(2)
            .enumerate()
            .map(|(i, pair)| {
                let std = (2.0 / pair[0] as f64).sqrt(); // Kaiming, for ReLU
                let w = params.add(format!("{i}.weight"), Tensor::randn(pair, 0.0, std, rng));
                let b = params.add(format!("{i}.bias"), Tensor::zeros(&[pair[1]]));
                (w, b)
            })
            .collect();
        Mlp { layers }
    }

    fn forward<'g>(&self, g: &'g Graph, params: &Params, x: Var<'g>) -> Var<'g> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |h, (i, &(w, b))| {
            let z = h.matmul(g.param(params, w)) + g.param(params, b);
            if i < last { z.relu() } else { z }
        })
    }
}

fn accuracy(model: &Mlp, params: &Params, data: &Dataset) -> f64 {
    let g = Graph::inference();
    let logits = model.forward(&g, params, g.constant(data.features.clone()));
    let logits = logits.value();
    let predictions = logits.data().chunks(data.classes).map(|row| {
        (0..row.len())
            .max_by(|&a, &b| row[a].total_cmp(&row[b]))
            .expect("at least one class")
    });
    let correct = predictions
        .zip(&data.labels)
        .filter(|(p, l)| p == *l)
        .count();
    correct as f64 / data.len() as f64
}

fn main() {
    let mut rng = Xoshiro256PlusPlus::seed_from_u64(7);
    let (train, test) = digits().split(0.2, &mut rng);
    let mut params = Params::new();
    let model = Mlp::new(
        &[train.dim(), 128, 64, train.classes],
        &mut params,
        &mut rng,
    );
    let (epochs, batch, lr) = (20, 32, 0.05f32);
    println!(
        "digits: {} train / {} test samples; MLP {}-128-64-{} ({} parameters); SGD lr {lr}",
        train.len(),
        test.len(),
        train.dim(),
        train.classes,
        params.count()
    );
    let mut order: Vec<usize> = (0..train.len()).collect();
    let start = Instant::now();
    for epoch in 1..=epochs {
        order.shuffle(&mut rng);
        let mut total = 0.0;
        for indices in order.chunks(batch) {
            let (x, labels) = train.batch(indices);
            let grads = {
                let g = Graph::new();
                let logits = model.forward(&g, &params, g.constant(x));
                let loss = -logits.log_softmax().pick(&labels).mean();
                total += loss.item() as f64 * indices.len() as f64;
                loss.backward()
            };
            for (id, grad) in grads.params() {
                let p = params.get_mut(id);
                p.data_mut()
                    .iter_mut()
                    .zip(grad.data())
                    .for_each(|(p, g)| *p -= lr * g);
            }
        }
        println!(
            "epoch {epoch:>2}  loss {:.4}  train acc {:.2}%  test acc {:.2}%",
            total / train.len() as f64,
            100.0 * accuracy(&model, &params, &train),
            100.0 * accuracy(&model, &params, &test)
        );
    }
    println!("{epochs} epochs in {:.2} s", start.elapsed().as_secs_f64());
}
