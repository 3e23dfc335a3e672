//! Models: the activations, the ResNet family, and their weights on disk.
pub mod activation;
pub mod batch_norm;
pub mod resnet;
pub mod sync_bn;
pub mod weights;

pub use activation::{ActConfig, ActImpl, ActInit, ActKind, Activation, Consumer, NormAxis};
pub use resnet::{Arch, ForwardCost, ParamGroup, ResNet, ResNetConfig, SiteCoefficients};

/// Runs `f` (a model's construction) with libtorch's global generator seeded to `seed`, holding a
/// process-wide lock, so initial weights depend on the seed only, not on what other threads draw.
pub fn seeded<T>(seed: i64, f: impl FnOnce() -> T) -> T {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _guard = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    f()
}

/// Converts every 4-d variable (the conv weights) to the channels_last memory format in place.
pub fn to_channels_last(vs: &tch::nn::VarStore) -> crate::error::Result<()> {
    tch::no_grad(|| {
        for (_, mut v) in vs.variables() {
            if v.dim() == 4 {
                v.set_data(&crate::ffi::to_channels_last(&v)?);
            }
        }
        Ok(())
    })
}
