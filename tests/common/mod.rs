//! Helpers shared by the integration tests: seeded inputs and gradchecks over edge shapes.
#![allow(dead_code)]

use margrad::{GradcheckOptions, Graph, Tensor, Var, gradcheck_with};
use rand::SeedableRng;
use rand::rngs::Xoshiro256PlusPlus;
use std::path::{Path, PathBuf};

pub mod mpi;

pub type Rng = Xoshiro256PlusPlus;

pub fn rng(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// `[rows, cols]` shapes every op is checked at: a single element, one row, one column,
/// non-square, and a larger case checked in fast (random-direction) mode.
pub const SHAPES: [[usize; 2]; 5] = [[1, 1], [1, 7], [6, 1], [5, 3], [64, 300]];

/// Standard normal values pushed at least 0.05 away from zero, so that kinks (relu, abs) and
/// poles (division) are not met by accident.
pub fn away_from_zero(shape: &[usize], rng: &mut Rng) -> Tensor<f64> {
    let mut t = Tensor::randn(shape, 0.0, 1.0, rng);
    for v in t.data_mut() {
        *v += 0.05f64.copysign(*v);
    }
    t
}

/// Values in [0.5, 2.5): inside the domain of log, sqrt and powf.
pub fn positive(shape: &[usize], rng: &mut Rng) -> Tensor<f64> {
    Tensor::rand_uniform(shape, 0.5, 2.5, rng)
}

/// Gradchecks `f` at every shape of [`SHAPES`]; `make` builds the inputs for a `[rows, cols]`.
/// Panics with the gradcheck's message, naming the shape.
pub fn check_shapes<Make, Func>(make: Make, f: Func)
where
    Make: Fn([usize; 2], &mut Rng) -> Vec<Tensor<f64>>,
    Func: for<'g> Fn(&'g Graph<f64>, &[Var<'g, f64>]) -> Var<'g, f64>,
{
    for (i, shape) in SHAPES.iter().enumerate() {
        let mut rng = rng(1000 + i as u64);
        let inputs = make(*shape, &mut rng);
        let large = shape[0] * shape[1] > 1000;
        let options = GradcheckOptions {
            directions: large.then_some(24),
            seed: i as u64,
            ..GradcheckOptions::default()
        };
        if let Err(e) = gradcheck_with(&inputs, &options, &f) {
            panic!("at shape {shape:?}: {e}");
        }
    }
}

/// Asserts that `f` raises this process's peak resident memory by less than 64 MiB, where
/// `/proc/self/status` says it (Linux). The peak is reset to the present first
/// (`/proc/self/clear_refs`) where allowed; the lock keeps two measurements from overlapping.
pub fn in_little_memory<T>(what: &str, f: impl FnOnce() -> T) -> T {
    static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());
    fn peak() -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        Some(line.split_whitespace().nth(1)?.parse::<u64>().ok()? * 1024)
    }
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let before = peak();
    let value = f();
    match before.zip(peak()) {
        Some((before, after)) => assert!(
            after.saturating_sub(before) < 64 << 20,
            "{what} raised the peak memory by {} MiB",
            (after - before) >> 20
        ),
        None => eprintln!("note: {what}: peak memory not measurable here, not checked"),
    }
    value
}

/// Runs `f` on its own thread and waits at most `seconds` for it, so that a regression that
/// blocks (a FIFO waiting for its writer) fails the test instead of hanging the run.
pub fn within<T: Send + 'static>(seconds: u64, f: impl FnOnce() -> T + Send + 'static) -> T {
    use std::sync::mpsc::{RecvTimeoutError, channel};
    let (send, receive) = channel();
    std::thread::spawn(move || send.send(f()));
    match receive.recv_timeout(std::time::Duration::from_secs(seconds)) {
        Ok(value) => value,
        Err(RecvTimeoutError::Timeout) => panic!("no answer within {seconds} s: it blocks"),
        Err(RecvTimeoutError::Disconnected) => panic!("the thread panicked"),
    }
}

/// Writes a sparse file of `len` bytes (no disk used past `head`) that begins with `head`.
pub fn write_sparse(path: &std::path::Path, head: &[u8], len: u64) {
    use std::io::Write;
    let mut file = std::fs::File::create(path).unwrap();
    file.write_all(head).unwrap();
    file.set_len(len).unwrap();
}

/// An IDX file: its magic, its dimensions (big-endian), its bytes.
fn idx_bytes(magic: [u8; 4], dims: &[u32], data: &[u8]) -> Vec<u8> {
    let mut out = magic.to_vec();
    dims.iter()
        .for_each(|d| out.extend_from_slice(&d.to_be_bytes()));
    out.extend_from_slice(data);
    out
}

/// Tiny MNIST-shaped files in `dir` (MNIST's file names, raw IDX): 48 training and 24 test
/// 28×28 images of four classes, class `c` a bright 10×10 square in quadrant `c` over faint
/// noise. Enough for a CNN to train a few steps on, in a test, without the real data.
pub fn write_tiny_mnist(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let mut state = 12345u32;
    let mut noise = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (state >> 27) as u8
    };
    for (split, n) in [("train", 48u32), ("t10k", 24)] {
        let labels: Vec<u8> = (0..n).map(|i| (i % 4) as u8).collect();
        let mut pixels = Vec::with_capacity(n as usize * 784);
        for &c in &labels {
            let (top, left) = (2 + 14 * (c as usize / 2), 2 + 14 * (c as usize % 2));
            for y in 0..28 {
                for x in 0..28 {
                    let inside = (top..top + 10).contains(&y) && (left..left + 10).contains(&x);
                    pixels.push(if inside { 200 + noise() } else { noise() });
                }
            }
        }
        let images = idx_bytes([0, 0, 8, 3], &[n, 28, 28], &pixels);
        std::fs::write(dir.join(format!("{split}-images-idx3-ubyte")), images).unwrap();
        let labels = idx_bytes([0, 0, 8, 1], &[n], &labels);
        std::fs::write(dir.join(format!("{split}-labels-idx1-ubyte")), labels).unwrap();
    }
}

/// A folder of one test's own under the system's temporary directory
/// (`margrad-NAME-PID-N`), created empty and removed with everything in it when dropped, so that
/// a test leaves nothing behind, whether it passes or fails.
pub struct Scratch(PathBuf);

impl Scratch {
    /// The folder `margrad-{name}-{pid}-{n}`, `n` counting the scratch folders of this process
    /// (two tests running at once with the same name get folders of their own), emptied if an
    /// earlier process of the same id left it.
    pub fn new(name: &str) -> Scratch {
        static MADE: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("margrad-{name}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("a scratch folder under the temporary directory");
        Scratch(dir)
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.0
    }

    /// `name` inside the folder (not created: a path for a test to write or to expect absent).
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A path `name` in a scratch folder of its own named after `{prefix}-{name}`; keep the [`Scratch`]
/// alive (`let (_scratch, path) = …`) while the path is used.
pub fn scratch_path(prefix: &str, name: &str) -> (Scratch, PathBuf) {
    let scratch = Scratch::new(&format!("{prefix}-{name}"));
    let path = scratch.path(name);
    (scratch, path)
}

/// `max |a − b| / max |b|`.
pub fn relative(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()));
    diff / scale.max(1e-30)
}
