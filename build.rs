//! With the `mpi` feature: checks that an MPI library and libclang are installed before the
//! MPI bindings try to build against them, so that a missing one is named with the packages
//! that bring it. Without the feature it does nothing.

use std::path::Path;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=MPICC");
    if std::env::var_os("CARGO_FEATURE_MPI").is_none() {
        return;
    }
    let mpicc = std::env::var("MPICC").unwrap_or_else(|_| "mpicc".into());
    let has_mpi = Command::new(&mpicc).arg("-show").output().is_ok()
        || ["ompi", "mpich", "mpi"].iter().any(|lib| {
            Command::new("pkg-config")
                .args(["--exists", lib])
                .status()
                .is_ok_and(|s| s.success())
        });
    let has_clang = std::env::var_os("LIBCLANG_PATH").is_some()
        || ["/usr/lib", "/usr/lib64", "/usr/local/lib"]
            .iter()
            .any(|dir| finds_libclang(Path::new(dir), 3));
    let mut missing = Vec::new();
    if !has_mpi {
        missing.push("an MPI library (no `mpicc` and no MPI in pkg-config)");
    }
    if !has_clang {
        missing.push("libclang (the MPI bindings are generated with it; or set LIBCLANG_PATH)");
    }
    if !missing.is_empty() {
        eprintln!(
            "\nthe `mpi` feature needs {}.\nOn Debian or Ubuntu: \
             sudo apt-get install libopenmpi-dev openmpi-bin libclang-dev\n\
             (build without `--features mpi` to train in one process)\n",
            missing.join(" and ")
        );
        std::process::exit(1);
    }
}

/// Whether a `libclang*.so*` lies in `dir` or up to `depth` folders below it.
fn finds_libclang(dir: &Path, depth: usize) -> bool {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let path = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        (name.starts_with("libclang") && name.contains(".so"))
            || (depth > 0 && path.is_dir() && finds_libclang(&path, depth - 1))
    })
}
