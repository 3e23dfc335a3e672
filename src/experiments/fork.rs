//! `fork`: a run folder copied at its `last` checkpoint into a new run that continues on its own,
//! for WSD's cooldown branching (train the stable phase once, decay at several budgets: resume
//! each fork with its own `--epochs` / `--decay-epochs`) or any what-if from a shared start.
//!
//! Model files are hard-linked, not copied (ResNet-50's `last` is ~190 MB): every write of one
//! is atomic (a new file renamed over the old name), so neither run ever changes the other's.
//! Appended files (metrics.jsonl, TensorBoard events) are copied. The source run is locked while
//! it is read, and the fork is built in a hidden folder renamed into place at the end, so a fork
//! killed at any moment leaves no half-made run.

use crate::error::{Error, Result};
use crate::train::run::checkpoint::{self, LoopState};
use crate::train::run::run_dir::{self, RunLock};
use std::path::{Path, PathBuf};

/// What a fork made.
#[derive(Debug)]
pub struct Fork {
    pub dir: PathBuf,
    /// The loop state the fork continues from (the source's `last`).
    pub state: LoopState,
    pub files_linked: usize,
    pub files_copied: usize,
}

/// Forks the run in `from` into the new folder `to` (whose name becomes the run's `name`).
pub fn fork(from: &Path, to: &Path) -> Result<Fork> {
    if !from.join("config.toml").is_file() {
        return Err(Error::Usage(format!(
            "fork {}: not a run folder (it has no config.toml)",
            from.display()
        )));
    }
    let last = from.join("last.safetensors");
    if !run_dir::holds_checkpoint(from) {
        return Err(Error::Usage(format!(
            "fork {}: the run has no checkpoint yet ({} is missing): nothing to continue from",
            from.display(),
            last.display()
        )));
    }
    let name = to
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .ok_or_else(|| Error::Usage(format!("fork: {} is not a folder name to create", to.display())))?;
    if to.exists() {
        return Err(Error::Usage(format!("fork: {} already exists (choose another name)", to.display())));
    }
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent).map_err(|e| Error::io(&parent, e))?;
    let real = |p: &Path| p.canonicalize().map_err(|e| Error::io(p, e));
    if real(&parent)?.starts_with(real(from)?) {
        return Err(Error::Usage(format!(
            "fork: {} is inside the run it forks ({})",
            to.display(),
            from.display()
        )));
    }
    // No process trains the source meanwhile: its files are one consistent state.
    let _lock = RunLock::acquire(from)?;
    let state = checkpoint::read_last_state(&last)?;
    let building = parent.join(format!(".{name}.fork{}", std::process::id()));
    remove_abandoned_forks(&parent, &name)?;
    let result = (|| {
        std::fs::create_dir(&building).map_err(|e| Error::io(&building, e))?;
        let mut counts = (0, 0);
        copy_tree(from, &building, &mut counts)?;
        rename_run(&building.join("config.toml"), &name)?;
        crate::fault::point("fork:rename");
        std::fs::rename(&building, to).map_err(|e| Error::io(to, e))?;
        std::fs::File::open(&parent).and_then(|d| d.sync_all()).map_err(|e| Error::io(&parent, e))?;
        Ok(counts)
    })();
    match result {
        Ok((files_linked, files_copied)) => {
            Ok(Fork { dir: to.to_path_buf(), state, files_linked, files_copied })
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&building);
            Err(e)
        }
    }
}

/// Hidden folders of forks to `name` killed before their rename.
fn remove_abandoned_forks(parent: &Path, name: &str) -> Result<()> {
    let prefix = format!(".{name}.fork");
    for e in std::fs::read_dir(parent).map_err(|e| Error::io(parent, e))?.flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        let pid_alive = n
            .strip_prefix(&prefix)
            .and_then(|pid| pid.parse::<u32>().ok())
            .map(crate::ffi::process::pid_alive);
        if pid_alive == Some(false) {
            std::fs::remove_dir_all(e.path()).map_err(|err| Error::io(e.path(), err))?;
        }
    }
    Ok(())
}

/// Copies the run folder `from` into `to`: `last` first (a fork's other files are never older
/// than its checkpoint; resuming drops records after it), model files as hard links, the lock
/// and interrupted writes' temp files left out.
fn copy_tree(from: &Path, to: &Path, counts: &mut (usize, usize)) -> Result<()> {
    let mut entries: Vec<PathBuf> =
        std::fs::read_dir(from).map_err(|e| Error::io(from, e))?.flatten().map(|e| e.path()).collect();
    entries.sort_by_key(|p| (p.file_name().is_none_or(|n| n != "last.safetensors"), p.clone()));
    for src in entries {
        let Some(name) = src.file_name() else { continue };
        let text = name.to_string_lossy();
        if text == "lock" || text.starts_with('.') {
            continue;
        }
        let dst = to.join(name);
        let kind = std::fs::symlink_metadata(&src).map_err(|e| Error::io(&src, e))?.file_type();
        if kind.is_dir() {
            std::fs::create_dir(&dst).map_err(|e| Error::io(&dst, e))?;
            copy_tree(&src, &dst, counts)?;
        } else if kind.is_file() && text.ends_with(".safetensors") && std::fs::hard_link(&src, &dst).is_ok() {
            counts.0 += 1;
        } else if kind.is_file() {
            // Another file system (no hard links) copies model files too.
            std::fs::copy(&src, &dst).map_err(|e| Error::io(&dst, e))?;
            counts.1 += 1;
        }
    }
    Ok(())
}

/// Sets the `name` key of a copied config.toml, leaving every other key as written.
fn rename_run(config: &Path, name: &str) -> Result<()> {
    let text = std::fs::read_to_string(config).map_err(|e| Error::io(config, e))?;
    let mut table: toml::Table =
        toml::from_str(&text).map_err(|e| Error::file(config, format!("bad config: {e}")))?;
    table.insert("name".into(), toml::Value::String(name.into()));
    let text = toml::to_string(&table).map_err(|e| Error::file(config, format!("cannot write: {e}")))?;
    crate::fsutil::write_atomic(config, text.as_bytes())
}
