//! What ablations and studies share: a folder that belongs to one grid (its config file, written
//! on first use, refuses a different grid), cells marked done by a small TOML file (so a killed
//! grid continues where it stopped), a guard's stop told apart from an error, and the result
//! tables rewritten atomically after every cell.

use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use serde::{de::DeserializeOwned, Serialize};
use std::path::{Path, PathBuf};

/// A grid of training runs kept in one folder.
pub trait Grid: Sized {
    /// The file in the folder that records the grid (`ablation.toml`, `study.toml`).
    const FILE: &'static str;
    /// What the grid is called in messages ("ablation", "study").
    const WHAT: &'static str;
    /// The grid's folder.
    fn dir(&self) -> PathBuf;
    /// Reads a grid file (with the checks of a user's config).
    fn read(path: &Path) -> Result<Self>;
    /// The grid as text: what must not change for the folder's cells to be continued.
    fn grid_text(&self) -> Result<String>;
}

/// Writes the grid's file on first use; refuses a folder whose file holds another grid.
pub fn claim_folder<G: Grid>(grid: &G) -> Result<()> {
    let dir = grid.dir();
    let saved_path = dir.join(G::FILE);
    let text = grid.grid_text()?;
    if saved_path.exists() {
        if G::read(&saved_path)?.grid_text()? != text {
            return Err(Error::file(
                &saved_path,
                format!(
                    "this folder holds {} {} with a different grid or base config: rerun with the same config to \
                     continue it, or choose another --name",
                    if G::WHAT.starts_with(['a', 'e', 'i', 'o', 'u']) { "an" } else { "a" },
                    G::WHAT
                ),
            ));
        }
        return Ok(());
    }
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    write_atomic(&saved_path, text.as_bytes())
}

/// A grid's config as TOML (for `Grid::grid_text`).
pub fn to_toml<T: Serialize>(value: &T, what: &str) -> Result<String> {
    toml::to_string_pretty(value).map_err(|e| Error::Usage(format!("cannot serialise the {what}: {e}")))
}

/// The done marker at `path`, None when the cell is not done.
pub fn read_marker<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    toml::from_str(&text).map(Some).map_err(|e| Error::file(path, format!("unreadable cell result: {e}")))
}

/// Marks a cell done with what it ended as (written last, atomically: a cell killed before this
/// is not done).
pub fn write_marker<T: Serialize>(path: &Path, value: &T) -> Result<()> {
    let text =
        toml::to_string(value).map_err(|e| Error::Usage(format!("cannot serialise a cell result: {e}")))?;
    write_atomic(path, text.as_bytes())
}

/// A training run's result with a stability guard's stop (`Error::Diverged`) taken out of the
/// errors: `Ok(Err(why))` is a cell that ended by diverging, which is a result, not a failure.
pub fn diverged_or<T>(result: Result<T>) -> Result<std::result::Result<T, String>> {
    match result {
        Ok(v) => Ok(Ok(v)),
        Err(Error::Diverged(why)) => Ok(Err(why)),
        Err(e) => Err(e),
    }
}

/// Rewrites a grid's tables, `<stem>.csv` and `<stem>.md`, in its folder.
pub fn write_tables(dir: &Path, stem: &str, csv: &str, markdown: &str) -> Result<()> {
    write_atomic(&dir.join(format!("{stem}.csv")), csv.as_bytes())?;
    write_atomic(&dir.join(format!("{stem}.md")), markdown.as_bytes())
}
