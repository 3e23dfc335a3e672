//! The only unsafe code of the crate, each part with a safe face:
//! `torch` (the C++ shim over ATen, the CUDA library loader), `jpeg` (libjpeg-turbo's TurboJPEG 3
//! API) and `process` (signal handlers, fault injection, PID checks).
pub mod jpeg;
pub mod process;
mod torch;

pub use torch::*;
