//! A run's output folder: the files a run writes there, and what a run may find there before
//! it starts.
//!
//! Each run owns its folder. A new run starts in an absent or empty folder; one told to
//! [`OutputPolicy::Overwrite`] first removes a previous run's files ([`RUN_FILES`]) and refuses a
//! folder that holds anything else, so that a mistyped path never costs a user's files; a
//! resumed run continues in a folder that may hold anything, and removes the previous run's
//! final outputs (everything but the checkpoint) before it trains. The final outputs, and
//! `metrics.json` (status "complete") last of all, are written only by a run that completed, so
//! a folder whose run failed holds nothing that passes as complete.

use super::TrainError;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};

/// The checkpoint a run saves after every epoch (parameters and training state), in margrad's
/// own format ([`crate::checkpoint`]), not PyTorch's: hence not a name like `model.bin`.
pub const CHECKPOINT_FILE: &str = "checkpoint.margrad";

/// The final parameters in safetensors, in PyTorch's layouts with the metadata to use them
/// ([`crate::checkpoint::save_safetensors`]).
pub const EXPORT_FILE: &str = "model.safetensors";

/// The configuration, history and final figures; written last, by a completed run only.
pub const METRICS_FILE: &str = "metrics.json";

/// The figures a completed run draws (the embedding only for a 2-D or 3-D one).
pub const FIGURE_FILES: [&str; 4] = ["loss.svg", "accuracy.svg", "roc.svg", "embedding.svg"];

/// Every file a run writes into its folder: the only files [`OutputPolicy::Overwrite`] removes.
pub const RUN_FILES: [&str; 7] = [
    CHECKPOINT_FILE,
    EXPORT_FILE,
    METRICS_FILE,
    FIGURE_FILES[0],
    FIGURE_FILES[1],
    FIGURE_FILES[2],
    FIGURE_FILES[3],
];

/// What a new run may find in its output folder ([`TrainConfig::output`](super::TrainConfig)).
/// A resumed run ([`TrainConfig::resume`](super::TrainConfig)) continues in a folder that may
/// hold anything; it removes only the previous run's final outputs (every file of
/// [`RUN_FILES`] but the checkpoint), which would describe the run before it continued.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum OutputPolicy {
    /// The folder must be absent or empty.
    #[default]
    New,
    /// The folder may hold a previous run's files ([`RUN_FILES`]), which are removed before
    /// training starts; a folder that holds anything else is refused and nothing is removed.
    /// Refused together with a resume, whose checkpoint it would remove.
    Overwrite,
}

/// Why a run refuses its output folder.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FolderError {
    /// A new run found files in it.
    NotEmpty {
        /// One of them (the first by name).
        found: String,
    },
    /// An overwrite found something no run writes.
    Foreign {
        /// What it found (the first by name).
        found: String,
    },
    /// Overwriting was asked for together with a resume.
    OverwriteWhileResuming,
    /// A resume into a folder holding the checkpoint of another run, which the first epoch
    /// would replace.
    OtherCheckpoint,
}

impl fmt::Display for FolderError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FolderError::NotEmpty { found } => write!(
                f,
                "it is not empty (it holds {found}), and a new run does not mix its files with \
                 others: choose another folder, overwrite the previous run, or resume it"
            ),
            FolderError::Foreign { found } => write!(
                f,
                "it holds {found}, which no run writes; an overwrite removes only a run's own \
                 files ({}), so it refuses this folder: choose another",
                RUN_FILES.join(", ")
            ),
            FolderError::OverwriteWhileResuming => write!(
                f,
                "overwriting is refused when resuming: it would remove the checkpoint the run \
                 continues"
            ),
            FolderError::OtherCheckpoint => write!(
                f,
                "it holds {CHECKPOINT_FILE} of another run, which this resumed run would \
                 replace: resume in the folder of the checkpoint, or choose an empty one"
            ),
        }
    }
}

/// Makes `out` this run's folder as `policy` says: creates it if absent, refuses it or removes
/// the previous run's files. Nothing is removed when the folder is refused.
pub(super) fn claim(
    out: &Path,
    policy: OutputPolicy,
    resuming: Option<&Path>,
) -> Result<(), TrainError> {
    let io = |path: &Path, e: std::io::Error| TrainError::Output {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let refuse = |reason| TrainError::OutputFolder {
        dir: out.to_path_buf(),
        reason,
    };
    if policy == OutputPolicy::Overwrite && resuming.is_some() {
        return Err(refuse(FolderError::OverwriteWhileResuming));
    }
    if let Some(from) = resuming {
        let here = out.join(CHECKPOINT_FILE);
        let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        };
        if here.exists() && !same(&here, from) {
            return Err(refuse(FolderError::OtherCheckpoint));
        }
    }
    std::fs::create_dir_all(out).map_err(|e| io(out, e))?;
    // a run killed mid-save leaves a temporary file beside its output; a dead writer's is
    // removed here, a live one's stays and keeps the folder refused
    for name in RUN_FILES {
        crate::files::clear_stale_temporaries(&out.join(name));
    }
    let mut entries = Vec::new();
    for entry in std::fs::read_dir(out).map_err(|e| io(out, e))? {
        let entry = entry.map_err(|e| io(out, e))?;
        let is_file = entry
            .file_type()
            .map_err(|e| io(&entry.path(), e))?
            .is_file();
        let name = entry.file_name().to_string_lossy().into_owned();
        let ours = is_file && RUN_FILES.contains(&name.as_str());
        entries.push((name, ours));
    }
    entries.sort();
    let stale: Vec<&String> = match (policy, resuming.is_some()) {
        (OutputPolicy::New, false) => match entries.first() {
            Some((found, _)) => {
                let found = found.clone();
                return Err(refuse(FolderError::NotEmpty { found }));
            }
            None => Vec::new(),
        },
        (OutputPolicy::Overwrite, _) => {
            if let Some((found, _)) = entries.iter().find(|(_, ours)| !ours) {
                let found = found.clone();
                return Err(refuse(FolderError::Foreign { found }));
            }
            entries.iter().map(|(name, _)| name).collect()
        }
        (OutputPolicy::New, true) => entries
            .iter()
            .filter(|(name, ours)| *ours && name != CHECKPOINT_FILE)
            .map(|(name, _)| name)
            .collect(),
    };
    for name in stale {
        let path: PathBuf = out.join(name);
        std::fs::remove_file(&path).map_err(|e| io(&path, e))?;
    }
    Ok(())
}
