//! Images in: decoding, torchvision-compatible transforms, datasets, sampling and the loader.
pub mod augment;
pub mod augment_ops;
pub mod dataset;
pub mod decode;
pub mod loader;
pub mod resize;
pub mod sampler;
pub mod synthetic;
pub mod transform;
