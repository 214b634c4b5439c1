//! The crate's layering, checked: every top-level module of `src/` may use only the modules
//! below it in [`LAYERS`], so dependencies run one way and no two modules reach each other.
//!
//! A dependency is any `crate::name` path in a module's code (use lines, paths, attribute
//! strings such as serde's `deserialize_with`), with names re-exported by `lib.rs` resolved to
//! the module that defines them. Comments and a file's trailing `#[cfg(test)]` module are not
//! code the library depends on, and are skipped.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;

/// Every top-level module, lowest first: each may use only those before it. The groups are
/// the layers `lib.rs` describes.
const LAYERS: &[&[&str]] = &[
    // foundations: the error type, the element type, the opt-in profile, files read bounded and
    // written atomically, the seeded generator
    &["error", "element", "profile", "files", "rng"],
    // plain functions over slices (they know no tensor)
    &["kernels"],
    // storage: lent buffers, tensors, labels, the parameter store
    &["pool", "tensor", "labels", "params"],
    // the tape, its backward, and the gradient checker built on it
    &["engine", "gradcheck"],
    // losses, then layers and models (which train with the losses)
    &["loss"],
    &["nn"],
    &["optim"],
    // what surrounds a model: data, judgement, figures, files, other processes
    &["data", "metrics", "plot", "checkpoint", "distributed"],
    // the trainer wires everything together
    &["train"],
];

fn rank() -> BTreeMap<&'static str, usize> {
    LAYERS
        .iter()
        .flat_map(|l| l.iter())
        .copied()
        .enumerate()
        .map(|(i, m)| (m, i))
        .collect()
}

/// Items `lib.rs` re-exports (`pub use engine::{Graph, Var};`), by name, with their module.
fn reexports(lib: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in lib.lines().map(str::trim) {
        let Some(rest) = line.strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, items)) = rest.trim_end_matches(';').split_once("::") else {
            continue;
        };
        for item in items.trim_matches(|c| c == '{' || c == '}').split(',') {
            let name = item.trim().rsplit(" as ").next().unwrap_or("").trim();
            if !name.is_empty() && name != "self" {
                out.insert(name.to_string(), module.to_string());
            }
        }
    }
    out
}

/// The code of a file without comments and without its trailing unit-test module.
fn code(text: &str) -> String {
    let text = text.split("#[cfg(test)]").next().unwrap_or("");
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| l.split(" // ").next().unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The first path segment after each `crate::` (each of a `crate::{a, b::c}` group too).
fn crate_paths(code: &str) -> Vec<String> {
    let ident = |s: &str| -> String {
        s.trim()
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect()
    };
    let mut out = Vec::new();
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let group = group.split('}').next().unwrap_or("");
            out.extend(group.split(',').map(ident));
        } else {
            out.push(ident(rest));
        }
    }
    out.retain(|s| !s.is_empty());
    out
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Each top-level module of `src/` and the modules its code uses.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = fs::read_to_string(src.join("lib.rs")).unwrap();
    let reexported = reexports(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let module_of = |path: &Path| {
        let first = path
            .strip_prefix(&src)
            .unwrap()
            .components()
            .next()
            .unwrap();
        let name = first.as_os_str().to_string_lossy();
        name.trim_end_matches(".rs").to_string()
    };
    let modules: BTreeSet<String> = files.iter().map(|p| module_of(p)).collect();
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for path in &files {
        let me = module_of(path);
        if me == "lib" {
            continue;
        }
        let entry = deps.entry(me.clone()).or_default();
        for name in crate_paths(&code(&fs::read_to_string(path).unwrap())) {
            let target = if modules.contains(&name) {
                Some(name)
            } else {
                reexported.get(&name).cloned()
            };
            if let Some(target) = target.filter(|t| *t != me) {
                entry.insert(target);
            }
        }
    }
    deps
}

#[test]
fn every_module_uses_only_the_layers_below_it() {
    let rank = rank();
    let deps = dependencies();
    let unplaced: Vec<_> = deps
        .keys()
        .filter(|m| !rank.contains_key(m.as_str()))
        .collect();
    assert!(
        unplaced.is_empty(),
        "modules {unplaced:?} have no place in LAYERS (tests/layering.rs): put each where it \
         belongs, and say so in lib.rs"
    );
    let mut upward = Vec::new();
    for (module, uses) in &deps {
        for used in uses {
            if rank[used.as_str()] >= rank[module.as_str()] {
                upward.push(format!("{module} -> {used}"));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "a module uses one at or above its own layer (see LAYERS in tests/layering.rs and the \
         layering in lib.rs): {upward:?}"
    );
}

#[test]
fn the_reader_finds_paths_the_way_rustc_does() {
    let text = "use crate::{Element, tensor::Tensor};\n// crate::train in a comment\n\
                #[serde(with = \"crate::checkpoint::x\")]\nlet y = crate::kernels::gemm(); // crate::nn\n\
                #[cfg(test)]\nmod tests { use crate::train; }";
    assert_eq!(
        crate_paths(&code(text)),
        ["Element", "tensor", "checkpoint", "kernels"]
    );
    let lib = "pub use engine::{Graph, Var as V};\npub use tensor::Tensor;";
    let map = reexports(lib);
    assert_eq!(map["Graph"], "engine");
    assert_eq!(map["V"], "engine");
    assert_eq!(map["Tensor"], "tensor");
    // the check itself sees an upward edge
    let deps = dependencies();
    assert!(deps["train"].contains("nn") && deps["nn"].contains("loss"));
}
