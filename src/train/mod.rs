//! Training: the loop (trainer.rs, read it top to bottom) and one module per concern.
pub mod ablate;
pub mod amp;
pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod engine;
pub mod eval;
pub mod guards;
pub mod loss;
pub mod metrics;
pub mod optim;
pub mod run_dir;
pub mod schedule;
pub mod stability;
pub mod state;
pub mod study;
pub mod trainer;
