//! The only unsafe code of the crate, each part with a safe face:
//! `torch` (the C++ shim over ATen, the CUDA library loader), `dist` (c10d's store and process
//! groups), `jpeg` (libjpeg-turbo's TurboJPEG 3
//! API) and `process` (signal handlers, fault injection, PID checks).
pub mod dist;
pub mod jpeg;
pub mod process;
mod torch;

pub use torch::*;
