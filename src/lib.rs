//! resnet-train: ResNets with ReLU, PolyReLU or PolyNorm activations (PolyCom, ICLR 2025),
//! trained with mixed precision on libtorch.
pub mod cli;
pub mod data;
pub mod dist;
pub mod error;
pub mod fault;
pub mod ffi;
pub mod fsutil;
pub mod model;
pub mod report;
pub mod rng;
pub mod runtime;
pub mod stats;
pub mod train;
