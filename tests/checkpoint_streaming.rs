//! Checkpoints of a large head stream between the tensors and the file: a save holds no copy
//! of the centres or the moments, a load allocates each tensor once and reads into it, and a
//! head alone loads without the training state. Measured by counting the bytes allocated
//! (this binary's allocator), so the test has one function: tests run on threads at once.

mod common;

use margrad::checkpoint::{self, CheckpointError, TrainingState};
use margrad::loss::MarginLoss;
use margrad::nn::{HeadConfig, MlpConfig, Model, ModelConfig};
use margrad::optim::{Method, Optimizer, ParamState};
use margrad::{Params, Tensor, seeded_rng};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

/// The system allocator, counting the bytes held and their peak.
struct Counting;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let held = HELD.fetch_add(layout.size(), Ordering::SeqCst) + layout.size();
            PEAK.fetch_max(held, Ordering::SeqCst);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, layout: Layout) {
        unsafe { System.dealloc(p, layout) };
        HELD.fetch_sub(layout.size(), Ordering::SeqCst);
    }
    unsafe fn realloc(&self, p: *mut u8, layout: Layout, size: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, layout, size) };
        if !q.is_null() {
            HELD.fetch_sub(layout.size(), Ordering::SeqCst);
            let held = HELD.fetch_add(size, Ordering::SeqCst) + size;
            PEAK.fetch_max(held, Ordering::SeqCst);
        }
        q
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The bytes `f` allocates at its peak beyond what was held when it began, and its result.
fn peak_above<T>(f: impl FnOnce() -> T) -> (usize, T) {
    let before = HELD.load(Ordering::SeqCst);
    PEAK.store(before, Ordering::SeqCst);
    let out = f();
    (PEAK.load(Ordering::SeqCst) - before, out)
}

const MIB: usize = 1 << 20;

#[test]
fn a_large_head_is_saved_and_loaded_without_a_second_copy_of_its_tensors() {
    // 100,000 classes of 128-d centres: 51 MB, and Adam's two moments as much again each
    let config = ModelConfig {
        embedder: MlpConfig::new(&[16, 128]).sequential().unwrap(),
        head: HeadConfig::Cosine {
            classes: 100_000,
            loss: MarginLoss::am(30.0, 0.35).unwrap(),
        },
    };
    let mut params = Params::<f32>::new();
    let model = Model::new(config, &mut params, &mut seeded_rng(0)).unwrap();
    let mut optimizer = Optimizer::new(Method::adam(), &params, 1e-3, 0.0)
        .unwrap()
        .state()
        .clone();
    optimizer.per_param = params
        .ids()
        .map(|id| {
            let shape = params.get(id).shape();
            Some(ParamState {
                steps: 1,
                first: Tensor::full(shape, 1e-3),
                second: Tensor::full(shape, 1e-6),
            })
        })
        .collect();
    let training = TrainingState {
        optimizer,
        epoch: 1,
        rng: seeded_rng(1),
        history: Vec::new(),
    };
    let weights: usize = params.ids().map(|id| params.get(id).numel() * 4).sum();
    let head = 100_000 * 128 * 4;
    let scratch = common::Scratch::new("stream");
    let path = scratch.path("checkpoint.margrad");

    let (saving, saved) = peak_above(|| checkpoint::save(&path, &model, &params, Some(&training)));
    saved.unwrap();
    assert!(
        saving < 4 * MIB,
        "a save allocated {saving} bytes for {weights} of weights"
    );
    let file_len = std::fs::metadata(&path).unwrap().len() as usize;
    assert!(file_len > 3 * weights, "{file_len}");

    let (loading, loaded) = peak_above(|| checkpoint::load::<f32>(&path).unwrap());
    assert!(
        loading < 3 * weights + 8 * MIB,
        "a load allocated {loading} bytes for {} of tensors",
        3 * weights
    );
    assert_eq!(loaded.training.as_ref(), Some(&training));
    for id in params.ids() {
        assert_eq!(loaded.params.get(id).data(), params.get(id).data());
    }
    drop(loaded);

    // the head alone: its centres, the small embedder, never the moments
    let (loading_head, trained) = peak_above(|| checkpoint::load_head::<f32>(&path).unwrap());
    assert!(
        loading_head < weights + 8 * MIB,
        "loading the head allocated {loading_head} bytes for {head} of centres"
    );
    let centres = trained.centres().unwrap();
    let id = params.find("head.weight").unwrap();
    assert_eq!(centres.data(), params.get(id).data());

    // a file cut short is an error naming the body's bytes, found and expected
    let bytes = std::fs::read(&path).unwrap();
    let cut = scratch.path("cut.margrad");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    drop(bytes);
    let body = (file_len - checkpoint::HEADER_LEN) as u64;
    for err in [
        checkpoint::load::<f32>(&cut).unwrap_err(),
        checkpoint::load_head::<f32>(&cut).map(|_| ()).unwrap_err(),
    ] {
        assert_eq!(
            err,
            CheckpointError::Truncated {
                part: "body",
                expected: body,
                found: body - 1000,
            }
        );
    }
}
