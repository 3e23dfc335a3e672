//! Images in: decoding and torchvision-compatible transforms.
pub mod decode;
pub mod synthetic;
pub mod transform;
