//! Images in: decoding and torchvision-compatible transforms.
pub mod decode;
pub mod transform;
