//! The only unsafe code of the crate, each part with a safe face:
//! `torch` (the C++ shim over ATen, the CUDA library loader) and `jpeg` (libjpeg-turbo's TurboJPEG 3 API).
pub mod jpeg;
mod torch;

pub use torch::*;
