//! Models: the activations, the ResNet family, and their weights on disk.
pub mod activation;
pub mod resnet;
pub mod weights;

pub use activation::{ActConfig, ActInit, ActKind, Activation, NormAxis};
pub use resnet::{Arch, ParamGroup, ResNet, ResNetConfig};
