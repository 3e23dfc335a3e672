//! Reads shard members by position: each decode thread keeps its shards open (a few at a time),
//! so a sample costs one positioned read, not an open and a stat.

use std::cell::RefCell;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Shards a thread keeps open; the least recently used one is closed beyond this.
const OPEN_PER_THREAD: usize = 16;

thread_local! {
    static OPEN: RefCell<Vec<(PathBuf, File)>> = const { RefCell::new(Vec::new()) };
}

/// The `len` bytes at `offset` of `shard`.
pub fn read_member(shard: &Path, offset: u64, len: u64) -> std::io::Result<Vec<u8>> {
    OPEN.with(|open| {
        let mut open = open.borrow_mut();
        let at = match open.iter().position(|(p, _)| p == shard) {
            Some(i) => i,
            None => {
                if open.len() >= OPEN_PER_THREAD {
                    open.remove(0);
                }
                open.push((shard.to_path_buf(), File::open(shard)?));
                open.len() - 1
            }
        };
        // Most recently used last.
        let entry = open.remove(at);
        open.push(entry);
        let file = &open[open.len() - 1].1;
        let mut buf = vec![0; len as usize];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    })
}
