//! Starting the examples as the MPI tests do: one process, or ranks under Open MPI's `mpirun`
//! (oversubscribed, so that 3 ranks run on 2 cores, and allowed to run as root), every run
//! bounded by `timeout` so that a hang fails the test instead of blocking the run; and reading
//! each rank's error line from what the ranks wrote.

use std::path::PathBuf;
use std::process::{Command, Output};

/// Seconds any one run may take (they take a few) before it is killed as hung.
pub const LIMIT_SECONDS: u64 = 120;

/// An example program, as the tests start it.
pub struct Program {
    path: PathBuf,
    /// Arguments every rank started by `mpirun` gets before the run's own (not a process
    /// started without it).
    under_mpirun: Vec<&'static str>,
}

impl Program {
    /// The built example `name` (target/<profile>/deps/<test> → target/<profile>/examples/<name>).
    ///
    /// # Panics
    /// When it is not built, naming the command that builds it.
    pub fn example(name: &str) -> Program {
        let exe = std::env::current_exe().unwrap();
        let dir = exe.parent().unwrap().parent().unwrap();
        let path = dir.join("examples").join(name);
        assert!(
            path.exists(),
            "{} is not built: run `cargo build --release --features mpi --example {name}`",
            path.display()
        );
        Program {
            path,
            under_mpirun: Vec::new(),
        }
    }

    /// The program with `flag` first in the arguments of every rank `mpirun` starts.
    pub fn flag_under_mpirun(mut self, flag: &'static str) -> Program {
        self.under_mpirun.push(flag);
        self
    }

    /// Runs the program with `args` on `ranks` ranks under `mpirun`, or as one process without
    /// it (`ranks = 0`).
    pub fn run(&self, ranks: usize, args: &[&str]) -> Output {
        if ranks == 0 {
            let mut command = bounded();
            command.arg(&self.path).args(args);
            return finished(command);
        }
        self.run_each(&vec![args; ranks])
    }

    /// Runs the program under one `mpirun`, rank `k` with `args[k]` (Open MPI's `:` syntax for
    /// programs of their own).
    pub fn run_each(&self, args: &[&[&str]]) -> Output {
        let mut command = bounded();
        command.args(["mpirun", "--oversubscribe"]);
        for (rank, own) in args.iter().enumerate() {
            if rank > 0 {
                command.arg(":");
            }
            command
                .args(["-n", "1"])
                .arg(&self.path)
                .args(&self.under_mpirun)
                .args(*own);
        }
        finished(command)
    }
}

/// `timeout`, killing what it starts after [`LIMIT_SECONDS`] (and 10 s later if it ignores
/// that), with Open MPI allowed to run as root.
fn bounded() -> Command {
    let mut command = Command::new("timeout");
    command
        .args(["--kill-after=10", &LIMIT_SECONDS.to_string()])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    command
}

/// Runs `command` to its end and returns what it wrote.
///
/// # Panics
/// When it hung and `timeout` killed it.
fn finished(mut command: Command) -> Output {
    let output = command.output().unwrap();
    assert_ne!(
        output.status.code(),
        Some(124),
        "the run hung and was killed after {LIMIT_SECONDS} s: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// `args` with the value after `flag` replaced by `value`.
///
/// # Panics
/// When `args` holds no `flag` followed by a value.
pub fn with_value<'a>(args: &[&'a str], flag: &str, value: &'a str) -> Vec<&'a str> {
    let at = args
        .iter()
        .position(|&a| a == flag)
        .filter(|&at| at + 1 < args.len())
        .unwrap_or_else(|| panic!("no {flag} with a value in {args:?}"));
    let mut args = args.to_vec();
    args[at + 1] = value;
    args
}

/// Every rank's error message in `stderr`: what follows `rank k of n: error: ` on its line,
/// for each rank `k` of `ranks`.
///
/// # Panics
/// When a rank wrote no error.
pub fn rank_errors(stderr: &str, ranks: usize) -> Vec<String> {
    (0..ranks)
        .map(|rank| {
            let prefix = format!("rank {rank} of {ranks}: error: ");
            let at = stderr
                .find(&prefix)
                .unwrap_or_else(|| panic!("no error from rank {rank}: {stderr}"));
            let rest = &stderr[at + prefix.len()..];
            rest[..rest.find('\n').unwrap_or(rest.len())].to_string()
        })
        .collect()
}
