//! Images in: decoding, torchvision-compatible transforms, datasets, sampling, the loader, and the
//! batch transforms on the device (random erasing, Mixup/CutMix).
pub mod augment;
pub mod augment_ops;
pub mod batch_transform;
pub mod dataset;
pub mod decode;
pub mod erasing;
pub mod loader;
pub mod mixup;
pub mod remote;
pub mod resize;
pub mod sampler;
pub mod shard_fetch;
mod shard_reader;
pub mod shards;
pub mod synthetic;
pub mod tar_index;
pub mod transform;
