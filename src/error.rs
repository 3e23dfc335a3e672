//! Errors that carry what the user needs to fix them: the file, the key, the flag.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    #[error("{0}")]
    Usage(String),

    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },

    #[error("{path}: weights do not match the model:\n{report}")]
    KeyMismatch { path: PathBuf, report: String },

    #[error("libtorch: {0}")]
    Torch(String),

    /// Training stopped by a stability guard; the message is the diagnosis.
    #[error("training diverged: {0}")]
    Diverged(String),

    /// Stopped by SIGINT/SIGTERM after saving the run (the exit code is 128 + the signal).
    #[error("stopped by signal {signal}: {msg}")]
    Interrupted { signal: i32, msg: String },
}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Error::Torch(e.to_string())
    }
}

impl Error {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    pub fn file(path: impl Into<PathBuf>, msg: impl Into<String>) -> Self {
        Error::File { path: path.into(), msg: msg.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
