//! The run folder as a resource: one process at a time (a `flock` the kernel releases when its
//! holder dies; the lock file names the PID and host for the message), leftovers of a killed process (temp files of
//! interrupted atomic writes) removed, and whether the folder holds a run to continue.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::{Path, PathBuf};

const LOCK: &str = "lock";

/// Whether `dir` holds a run that can be continued (a `last` checkpoint).
pub fn holds_checkpoint(dir: &Path) -> bool {
    dir.join("last.safetensors").is_file()
}

/// This machine's host name ("unknown" if unreadable).
pub(crate) fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map_or_else(|_| "unknown".into(), |h| h.trim().to_string())
}

/// The lock on a run folder: an exclusive `flock` on `lock`, held for the process's life, so the
/// kernel releases it when the holder dies however it dies (SIGKILL, a zombie not yet reaped, a
/// node crash on NFS, whose lock manager recovers it); the PID and host written inside are for the
/// message only. On file systems without locks, the PID check alone decides. Released (the file
/// removed) when dropped.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
    /// Holds the flock (None where the file system has no locks).
    _file: Option<std::fs::File>,
}

/// The PID and host a lock file names.
fn holder(text: &str) -> Option<(u32, String)> {
    let t = toml::from_str::<toml::Table>(text).ok()?;
    let p = u32::try_from(t.get("pid")?.as_integer()?).ok()?;
    Some((p, t.get("host")?.as_str()?.to_string()))
}

fn in_use(dir: &Path, path: &Path, holder: Option<(u32, String)>) -> String {
    let who = holder.map_or("another process".into(), |(p, h)| format!("process {p} on {h}"));
    format!(
        "{} is in use by {who} (lock file {}): one process trains a run folder at a time",
        dir.display(),
        path.display()
    )
}

impl RunLock {
    /// Takes the folder's lock, or fails naming the live process that holds it.
    pub fn acquire(dir: &Path) -> Result<Self> {
        use std::io::{Read, Seek};
        use std::os::unix::fs::MetadataExt;
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let path = dir.join(LOCK);
        for _ in 0..3 {
            let mut file = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, e))?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    return Err(Error::Usage(in_use(dir, &path, holder(&text))));
                }
                // No locks on this file system: the PID check alone.
                Err(std::fs::TryLockError::Error(e)) if e.kind() == std::io::ErrorKind::Unsupported => {
                    drop(file);
                    return Self::acquire_by_pid(dir);
                }
                Err(std::fs::TryLockError::Error(e)) => return Err(Error::io(&path, e)),
            }
            // A holder that was releasing removed the file between our open and our lock: the
            // lock we hold is on a file no longer in the folder. Take the new one.
            let same = std::fs::metadata(&path).ok().zip(file.metadata().ok());
            if !same.is_some_and(|(a, b)| a.ino() == b.ino() && a.dev() == b.dev()) {
                continue;
            }
            let mut previous = String::new();
            let _ = file.read_to_string(&mut previous);
            if let Some((p, h)) = holder(&previous) {
                eprintln!("note: {}: taking over the lock of process {p} on {h}, gone", dir.display());
            }
            let (pid, host) = (std::process::id(), hostname());
            file.set_len(0)
                .and_then(|_| file.rewind())
                .and_then(|_| writeln!(file, "pid = {pid}\nhost = {host:?}"))
                .and_then(|_| file.sync_all())
                .map_err(|e| Error::io(&path, e))?;
            return Ok(Self { path, _file: Some(file) });
        }
        Err(Error::file(
            &path,
            "could not take the run folder's lock (it was replaced three times while taking it)",
        ))
    }

    /// Where the file system has no locks: the lock file's existence is the lock, and one that
    /// names a process gone from this host is taken over.
    fn acquire_by_pid(dir: &Path) -> Result<Self> {
        let path = dir.join(LOCK);
        let (pid, host) = (std::process::id(), hostname());
        for _ in 0..3 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    writeln!(f, "pid = {pid}\nhost = {host:?}")
                        .and_then(|_| f.sync_all())
                        .map_err(|e| Error::io(&path, e))?;
                    return Ok(Self { path, _file: None });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let text = std::fs::read_to_string(&path).unwrap_or_default();
                    match holder(&text) {
                        Some((p, h)) if h != host || crate::ffi::process::pid_alive(p) => {
                            // (Without locks, a process on another host cannot be checked.)
                            let m = in_use(dir, &path, Some((p, h)));
                            return Err(Error::Usage(format!(
                                "{m}; if that process is gone, delete the lock file"
                            )));
                        }
                        stale => {
                            // A killed process's lock (or one torn while being written): take it over.
                            let who = stale
                                .map_or("an unreadable lock".into(), |(p, _)| format!("process {p}, gone"));
                            eprintln!("note: {}: taking over the lock of {who}", dir.display());
                            // A lock that cannot be removed (a read-only or immutable folder)
                            // is this error, not another process's doing.
                            if let Err(e) = std::fs::remove_file(&path) {
                                if e.kind() != std::io::ErrorKind::NotFound {
                                    return Err(Error::file(
                                        &path,
                                        format!("cannot remove the stale lock of {who}: {e}"),
                                    ));
                                }
                            }
                        }
                    }
                }
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        Err(Error::file(&path, "could not take the run folder's lock (another process keeps taking it)"))
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Removes the temp files (`.NAME.tmpPID`) that atomic writes of a killed process left behind;
/// returns how many. Call while holding the lock (no live writer then).
pub fn remove_stale_temp_files(dir: &Path) -> Result<usize> {
    let mut removed = 0;
    for e in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') && name.contains(".tmp") && e.path().is_file() {
            std::fs::remove_file(e.path()).map_err(|err| Error::io(e.path(), err))?;
            removed += 1;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lock_is_exclusive_released_on_drop_and_stale_locks_are_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let lock = RunLock::acquire(dir.path()).unwrap();
        let err = RunLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("process {}", std::process::id())) && err.contains("lock"), "{err}");
        drop(lock);
        assert!(!dir.path().join(LOCK).exists());
        // A lock left by a process that is gone.
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        std::fs::write(dir.path().join(LOCK), format!("pid = {dead}\nhost = {:?}\n", hostname())).unwrap();
        let _lock = RunLock::acquire(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(LOCK)).unwrap();
        assert!(text.contains(&format!("pid = {}", std::process::id())));
        // Torn temp files of killed writers go; other files stay.
        std::fs::write(dir.path().join(".last.safetensors.tmp123"), b"x").unwrap();
        std::fs::write(dir.path().join("summary.csv"), b"x").unwrap();
        assert_eq!(remove_stale_temp_files(dir.path()).unwrap(), 1);
        assert!(dir.path().join("summary.csv").exists());
    }
}
