//! `sessions.jsonl` in the run folder: one line per process that trained the run (its first start
//! and every resume), appended and never rewritten: which program, libtorch and machine trained
//! which steps, with which command line. A 200-epoch run is resumed many times, often on other
//! machines or after an upgrade; this is the record of what produced its numbers. A resume keeps
//! the lines of sessions whose last steps it discards: `first_step` says where each one began.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;

pub const FILE: &str = "sessions.jsonl";

/// Environment variables that change how a run behaves or where it ran.
const RECORDED_ENV: &[&str] = &[
    "CUDA_VISIBLE_DEVICES",
    "OMP_NUM_THREADS",
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_JOB_ID",
    "SLURM_PROCID",
    "RESNET_TRAIN_FAULT",
];

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Session {
    /// When the process started training, UTC, ISO 8601.
    pub started_utc: String,
    /// The step and epoch it started from (0 and 0 for a fresh run).
    pub first_step: usize,
    pub first_epoch: usize,
    /// `resnet-train` and its arguments as given.
    pub command: Vec<String>,
    pub cwd: String,
    /// resnet-train's version and build profile.
    pub program: String,
    /// The libtorch it was built against (version and PyTorch commit) and the library it loaded.
    pub libtorch: String,
    pub libtorch_loaded: String,
    pub host: String,
    pub pid: u32,
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    /// The training device, the CUDA devices visible, and the job's processes.
    pub device: String,
    pub cuda_devices: i64,
    pub world_size: usize,
    pub torch_threads: i32,
    pub decode_workers: usize,
    /// The variables of RECORDED_ENV that are set.
    pub env: BTreeMap<String, String>,
    /// What the config came to in this session (absent in lines written before it was recorded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<crate::train::setup::Experiment>,
}

impl Session {
    /// This process, about to train `device` from (step, epoch).
    pub fn this_process(
        first: (usize, usize),
        device: String,
        world_size: usize,
        decode_workers: usize,
        experiment: crate::train::setup::Experiment,
    ) -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
        let field = |text: &str, key: &str| {
            text.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        };
        let mem_kib: f64 = field(&meminfo, "MemTotal")
            .and_then(|v| v.trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0.0);
        Self {
            started_utc: utc_now(),
            first_step: first.0,
            first_epoch: first.1,
            command: std::env::args().collect(),
            cwd: std::env::current_dir().map(|p| p.display().to_string()).unwrap_or_default(),
            program: format!(
                "resnet-train {} ({})",
                env!("CARGO_PKG_VERSION"),
                if cfg!(debug_assertions) { "debug build" } else { "release build" }
            ),
            libtorch: env!("RESNET_TRAIN_LIBTORCH_VERSION").to_string(),
            libtorch_loaded: loaded_library("libtorch_cpu.so").unwrap_or_else(|| "unknown".into()),
            host: super::run_dir::hostname(),
            pid: std::process::id(),
            cpu: field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into()),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_gib: (mem_kib / (1024.0 * 1024.0) * 10.0).round() / 10.0,
            device,
            cuda_devices: tch::Cuda::device_count(),
            world_size,
            torch_threads: tch::get_num_threads(),
            decode_workers,
            env: RECORDED_ENV
                .iter()
                .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v)))
                .collect(),
            experiment: Some(experiment),
        }
    }
}

/// Appends `session` as one line to `dir/sessions.jsonl`, on disk before training starts. A line
/// torn by a kill mid-write is closed first, so it cannot swallow this one.
pub fn append(dir: &Path, session: &Session) -> Result<()> {
    let path = dir.join(FILE);
    let torn = std::fs::read(&path).is_ok_and(|b| b.last().is_some_and(|&c| c != b'\n'));
    let mut line = if torn { "\n".to_string() } else { String::new() };
    line += &serde_json::to_string(session).expect("a session serialises");
    line.push('\n');
    let mut f =
        std::fs::OpenOptions::new().create(true).append(true).open(&path).map_err(|e| Error::io(&path, e))?;
    f.write_all(line.as_bytes()).and_then(|_| f.sync_data()).map_err(|e| Error::io(&path, e))
}

/// The sessions recorded in `dir` (unreadable lines skipped).
pub fn read(dir: &Path) -> Result<Vec<Session>> {
    let path = dir.join(FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}

/// The path of the loaded shared library whose file name is `name` (/proc/self/maps).
fn loaded_library(name: &str) -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    maps.lines()
        .filter_map(|l| l.split_whitespace().nth(5))
        .find(|p| Path::new(p).file_name().is_some_and(|f| f == name))
        .map(str::to_string)
}

/// Now as `YYYY-MM-DDTHH:MM:SSZ`.
fn utc_now() -> String {
    let secs = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    iso8601(secs)
}

/// Seconds since 1970-01-01 UTC as ISO 8601 (Howard Hinnant's days-to-civil algorithm).
pub fn iso8601(secs: u64) -> String {
    let (days, rem) = ((secs / 86_400) as i64, secs % 86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z", rem / 3600, rem % 3600 / 60, rem % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn iso8601_matches_known_dates() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z"); // a leap day
        assert_eq!(iso8601(1_796_300_000), "2026-12-03T12:13:20Z");
        assert_eq!(iso8601(4_107_542_399), "2100-02-28T23:59:59Z"); // 2100 is not a leap year
    }

    #[test]
    fn a_torn_line_does_not_swallow_the_next_session() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = crate::train::config::TrainConfig::default();
        let experiment = crate::train::setup::Experiment::of(&cfg, 1, 10, 0.1);
        let s = Session::this_process((0, 0), "Cpu".into(), 1, 2, experiment);
        append(dir.path(), &s).unwrap();
        // A kill mid-write leaves half a line.
        let mut f = std::fs::OpenOptions::new().append(true).open(dir.path().join(FILE)).unwrap();
        f.write_all(b"{\"started_utc\": \"20").unwrap();
        let resumed = Session { first_step: 7, ..s.clone() };
        append(dir.path(), &resumed).unwrap();
        assert_eq!(read(dir.path()).unwrap(), vec![s, resumed]);
    }
}
