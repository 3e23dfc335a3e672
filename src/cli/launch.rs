//! `resnet-train launch --nproc-per-node N -- train ...`: this node's ranks of a data-parallel
//! job, started as torchrun starts them (see `crate::launch`).

pub use crate::launch::{run, LaunchArgs};
