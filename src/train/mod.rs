//! One training run: the loop (trainer.rs, read it top to bottom), its set-up (setup.rs), its
//! configuration (config/), the step's parts (step/) and the run folder's life (run/).
pub mod config;
pub mod run;
pub mod setup;
pub mod step;
pub mod trainer;
