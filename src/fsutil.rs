//! Crash-safe file writes: a process killed at any moment leaves either the old file or the new one.

use crate::error::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, rename, fsync the folder.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path.file_name().ok_or_else(|| Error::file(path, "not a file path"))?;
    let tmp = dir.join(format!(".{}.tmp{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        crate::fault::point(&format!("write:{}", name.to_string_lossy()));
        std::fs::rename(&tmp, path)?;
        // The rename is durable only once the folder's entry is on disk.
        std::fs::File::open(dir)?.sync_all()
    })();
    result.map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(path, e)
    })
}

/// A name that becomes one folder under a parent (`--name`): not empty, no path separator, not
/// `.` or `..`, no control characters, so the folder lands where the parent says and nowhere else.
pub fn check_folder_name(flag: &str, name: &str) -> Result<()> {
    let why = if name.is_empty() {
        Some("it is empty")
    } else if name == "." || name == ".." {
        Some("`.` and `..` are not folder names")
    } else if name.contains('/') || name.contains('\\') {
        Some("it holds a path separator")
    } else if name.chars().any(char::is_control) {
        Some("it holds a control character (a newline, a tab, ...)")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(crate::error::Error::Usage(format!(
            "{flag} {name:?}: {why}; a name is one folder under the output folder (letters, digits, '-', '_', '.')"
        ))),
    }
}
