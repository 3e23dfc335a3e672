//! Named state, the currency of checkpoints and snapshots: every component that training updates
//! (model, optimizer, loss scaler, EMA) lists its live tensors by name; a checkpoint writes the
//! union, a snapshot copies it in memory, and both restore by copying values back in place.

use crate::error::{Error, Result};
use std::collections::BTreeMap;
use tch::Tensor;

/// Live tensors by name (shallow clones: writing into them changes the component).
pub type Named = Vec<(String, Tensor)>;

/// `items` with every name prefixed by `prefix` and a dot.
pub fn prefixed(prefix: &str, items: Named) -> Named {
    items.into_iter().map(|(n, t)| (format!("{prefix}.{n}"), t)).collect()
}

/// The entries of `saved` under `prefix.`, with the prefix removed.
pub fn under(prefix: &str, saved: &BTreeMap<String, Tensor>) -> BTreeMap<String, Tensor> {
    let p = format!("{prefix}.");
    saved.iter().filter_map(|(k, t)| k.strip_prefix(&p).map(|n| (n.to_string(), t.shallow_clone()))).collect()
}

/// Copies `saved` values into the `live` tensors in place (converting dtype and device); every
/// live name must be present. `what` names the component in errors.
pub fn copy_into(live: &Named, saved: &BTreeMap<String, Tensor>, what: &str) -> Result<()> {
    tch::no_grad(|| {
        for (name, live) in live {
            let src = saved
                .get(name)
                .ok_or_else(|| Error::Torch(format!("the saved {what} state has no {name}")))?;
            if src.size() != live.size() {
                return Err(Error::Torch(format!(
                    "the saved {what} state's {name} has shape {:?}, expected {:?}",
                    src.size(),
                    live.size()
                )));
            }
            let mut live = live.shallow_clone();
            live.f_copy_(&src.f_to_kind(live.kind())?.f_to_device(live.device())?)?;
        }
        Ok(())
    })
}

/// An in-memory copy of named state at one step.
pub struct Snapshot {
    pub step: usize,
    saved: BTreeMap<String, Tensor>,
}

impl Snapshot {
    pub fn take(step: usize, live: &Named) -> Self {
        let saved = tch::no_grad(|| live.iter().map(|(n, t)| (n.clone(), t.detach().copy())).collect());
        Self { step, saved }
    }

    /// Copies the snapshot back into `live`, bit for bit.
    pub fn restore(&self, live: &Named) -> Result<()> {
        copy_into(live, &self.saved, "snapshot")
    }
}
