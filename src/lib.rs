//! resnet-train: ResNets with ReLU, PolyReLU or PolyNorm activations (PolyCom, ICLR 2025),
//! trained with mixed precision on libtorch.
//!
//! The layers, each using only those before it: `ffi` (all unsafe code and native kernels) →
//! `data`, `model` → `train` (one run) → `experiments` (many runs) → `cli` (flags into one
//! library call each).
pub mod cli;
pub mod data;
pub mod dist;
pub mod error;
pub mod experiments;
pub mod fault;
pub mod ffi;
pub mod fsutil;
pub mod launch;
pub mod model;
pub mod rng;
pub mod runtime;
pub mod supervise;
pub mod train;
