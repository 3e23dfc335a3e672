//! The optimizer step and its parts: the engine that runs it (engine.rs), mixed precision, loss,
//! clipping, the optimizers, EMA, the learning-rate schedule, and the stability guards.
pub mod amp;
pub mod clip;
pub mod ema;
pub mod engine;
pub mod guards;
pub mod loss;
pub mod optim;
pub mod schedule;
pub mod stability;
