//! A run folder's life: its lock and files, checkpoints of named state, the session log, metrics
//! and TensorBoard events, and evaluation.
pub mod checkpoint;
pub mod eval;
pub mod metrics;
pub mod real_labels;
pub mod run_dir;
pub mod sessions;
pub mod state;
pub mod tensorboard;
