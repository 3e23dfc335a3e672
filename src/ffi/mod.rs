//! The only unsafe code of the crate, each part with a safe face; C++ exceptions come back as
//! `Error::Torch`. By concern: `aten` (autocast, memory formats, TF32), `optim` (the optimizers'
//! kernels), `grads` (backward, unscale, clip), `polycom` (the fused activations), `cuda`
//! (devices, the CUDA library, the kernels' NVRTC compilation and cache), `dist` (c10d's store and
//! process groups), `jpeg` (libjpeg-turbo's TurboJPEG 3 API) and `process` (signal handlers, fault
//! injection, PID checks). The C++ side is shim.cpp (with polycom*.cpp, polycom.cu, dist*.cpp).

mod aten;
mod cuda;
pub mod dist;
mod grads;
pub mod jpeg;
mod optim;
mod polycom;
pub mod process;

pub use aten::*;
pub use cuda::*;
pub use grads::*;
pub use optim::*;
pub use polycom::*;

use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use tch::{Device, Kind, Tensor};

extern "C" {
    fn rt_free(p: *mut c_char);
}

fn ptrs(ts: &[Tensor]) -> Vec<*mut c_void> {
    ts.iter().map(|t| t.as_ptr() as *mut c_void).collect()
}

/// Takes ownership of a malloc'ed string from the shim (None for null).
fn take_string(p: *mut c_char) -> Option<String> {
    if p.is_null() {
        return None;
    }
    // SAFETY: the shim hands us a NUL-terminated malloc'ed string that we now own.
    let s = unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned();
    unsafe { rt_free(p) };
    Some(s)
}

fn c_path(p: Option<&std::path::Path>, what: &str) -> Result<CString> {
    CString::new(p.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default())
        .map_err(|_| Error::Usage(format!("{what} contains a NUL byte")))
}

/// Calls a shim function and turns its error slot into a `Result`.
fn call(what: &str, f: impl FnOnce(*mut *mut c_char) -> c_int) -> Result<()> {
    let mut err: *mut c_char = std::ptr::null_mut();
    if f(&mut err) == 0 {
        return Ok(());
    }
    let msg = take_string(err).unwrap_or_else(|| "unknown error".to_string());
    Err(Error::Torch(format!("{what}: {msg}")))
}

fn device_code(device: Device) -> c_int {
    match device {
        Device::Cuda(_) => 1,
        _ => 0,
    }
}

fn kind_code(kind: Kind) -> Result<c_int> {
    match kind {
        Kind::Half => Ok(5),
        Kind::Float => Ok(6),
        Kind::BFloat16 => Ok(15),
        other => Err(Error::Torch(format!("autocast does not support {other:?}"))),
    }
}
