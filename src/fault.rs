//! Fault injection for the kill/resume tests. `RESNET_TRAIN_FAULT=<point>@<n>` sends SIGKILL to
//! this process the n-th time it reaches `<point>` — a kill at an exact instant, where a test
//! with timers could only hope to land. Points: `setup` (the run folder is set up, before the
//! first step), `step` (after a step is logged), `eval` (an evaluation has started),
//! `write:<file name>` (a file's new contents are on disk under the temp name, not yet renamed),
//! `fork:rename` (a fork's folder is complete under its hidden name, not yet renamed).
//! With `RESNET_TRAIN_FAULT_RANK=r` only rank r of a data-parallel job (`RANK`) is killed.
//! Without the variable every point is a no-op.
//!
//! `RESNET_TRAIN_SLOW_READ_MS=<ms>` makes every training/eval image read take that much longer:
//! a slow disk, for the input-bound report's test.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

fn target() -> Option<&'static (String, usize)> {
    static TARGET: OnceLock<Option<(String, usize)>> = OnceLock::new();
    TARGET
        .get_or_init(|| {
            let v = std::env::var("RESNET_TRAIN_FAULT").ok()?;
            if let Ok(rank) = std::env::var("RESNET_TRAIN_FAULT_RANK") {
                if std::env::var("RANK").ok()? != rank {
                    return None;
                }
            }
            let (name, n) = v.rsplit_once('@').unwrap_or((&v, "1"));
            Some((name.to_string(), n.parse().ok()?))
        })
        .as_ref()
}

/// Reached `point`: killed here if the fault says so.
pub fn point(point: &str) {
    static HITS: AtomicUsize = AtomicUsize::new(0);
    if let Some((name, n)) = target() {
        if name == point && HITS.fetch_add(1, Ordering::SeqCst) + 1 == *n {
            eprintln!("fault injection: SIGKILL at {point}@{n}");
            crate::ffi::process::kill_self();
        }
    }
}

/// Before each image read: sleeps `RESNET_TRAIN_SLOW_READ_MS` milliseconds when set.
pub fn slow_read() {
    static DELAY: OnceLock<Option<std::time::Duration>> = OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        let ms: u64 = std::env::var("RESNET_TRAIN_SLOW_READ_MS").ok()?.parse().ok()?;
        Some(std::time::Duration::from_millis(ms))
    });
    if let Some(d) = delay {
        std::thread::sleep(*d);
    }
}
