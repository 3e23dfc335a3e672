//! ATen settings and tensor helpers that the tch crate lacks: autocast with a dtype,
//! channels_last, pinned memory, TF32, the CPU allocator's statistics, torch's seeded generator.

use super::{call, device_code, kind_code};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, c_void};
use tch::{Device, Kind, Tensor};

extern "C" {
    fn rt_autocast_set_enabled(device_type: c_int, enabled: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_autocast_is_enabled(device_type: c_int, out: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rt_autocast_set_dtype(device_type: c_int, dtype: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_autocast_get_dtype(device_type: c_int, out: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rt_autocast_increment_nesting(err: *mut *mut c_char) -> c_int;
    fn rt_autocast_decrement_nesting(out: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rt_autocast_clear_cache(err: *mut *mut c_char) -> c_int;
    fn rt_to_channels_last(t: *mut c_void, out: *mut *mut c_void, err: *mut *mut c_char) -> c_int;
    fn rt_is_channels_last(t: *mut c_void, out: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rt_pin_memory(t: *mut c_void, out: *mut *mut c_void, err: *mut *mut c_char) -> c_int;
    fn rt_set_allow_tf32(allow: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_seeded_randn(seed: u64, n: c_int, out: *mut f64, err: *mut *mut c_char) -> c_int;
    fn rt_cpu_memory_tracking(
        current: *mut i64,
        peak: *mut i64,
        reset_peak: c_int,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Bytes in tensors from libtorch's CPU allocator: (now, peak). The first call starts counting
/// (a wrapper around the allocator, for the rest of the process; tensors allocated before are
/// not counted). `reset_peak`: the peak restarts from now after this reading.
pub fn cpu_memory_allocated(reset_peak: bool) -> Result<(u64, u64)> {
    let (mut current, mut peak) = (0i64, 0i64);
    // SAFETY: valid out-pointers.
    call("cpu memory stats", |e| unsafe {
        rt_cpu_memory_tracking(&mut current, &mut peak, reset_peak as c_int, e)
    })?;
    Ok((current.max(0) as u64, peak.max(0) as u64))
}

/// Autocast (mixed precision) for one device type, with the chosen low-precision dtype, while the
/// guard lives; the previous state is restored on drop. Mirrors `torch.autocast(device, dtype)`.
pub struct AutocastGuard {
    device: c_int,
    prev_enabled: c_int,
    prev_dtype: c_int,
}

impl AutocastGuard {
    pub fn new(device: Device, dtype: Kind) -> Result<Self> {
        let dev = device_code(device);
        let code = kind_code(dtype)?;
        let (mut prev_enabled, mut prev_dtype) = (0, 0);
        // SAFETY: plain value arguments and valid out-pointers.
        call("autocast state", |e| unsafe { rt_autocast_is_enabled(dev, &mut prev_enabled, e) })?;
        call("autocast dtype", |e| unsafe { rt_autocast_get_dtype(dev, &mut prev_dtype, e) })?;
        call("autocast dtype", |e| unsafe { rt_autocast_set_dtype(dev, code, e) })?;
        call("autocast enable", |e| unsafe { rt_autocast_set_enabled(dev, 1, e) })?;
        call("autocast nesting", |e| unsafe { rt_autocast_increment_nesting(e) })?;
        Ok(Self { device: dev, prev_enabled, prev_dtype })
    }
}

impl Drop for AutocastGuard {
    fn drop(&mut self) {
        let mut depth = 0;
        // SAFETY: as in `new`. Errors cannot be reported from drop; these calls do not throw.
        let _ = call("autocast nesting", |e| unsafe { rt_autocast_decrement_nesting(&mut depth, e) });
        if depth == 0 {
            let _ = call("autocast cache", |e| unsafe { rt_autocast_clear_cache(e) });
        }
        let _ = call("autocast", |e| unsafe { rt_autocast_set_enabled(self.device, self.prev_enabled, e) });
        let _ = call("autocast", |e| unsafe { rt_autocast_set_dtype(self.device, self.prev_dtype, e) });
    }
}

/// Whether autocast is currently enabled for the device's type.
pub fn autocast_enabled(device: Device) -> Result<bool> {
    let mut out = 0;
    // SAFETY: valid out-pointer.
    call("autocast state", |e| unsafe { rt_autocast_is_enabled(device_code(device), &mut out, e) })?;
    Ok(out != 0)
}

/// A copy of a 4-d tensor in the channels_last (NHWC) memory format; other ranks come back contiguous.
pub fn to_channels_last(t: &Tensor) -> Result<Tensor> {
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor; on success the shim returns a new heap tensor we take ownership of.
    call("channels_last", |e| unsafe { rt_to_channels_last(t.as_ptr() as *mut c_void, &mut out, e) })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

/// A page-locked copy of a CPU tensor (tch's `pin_memory(device)` passes the device argument that
/// libtorch deprecated, and libtorch then warns on every batch).
pub fn pin_memory(t: &Tensor) -> Result<Tensor> {
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: `t` is a live tensor; on success the shim returns a new heap tensor we take ownership of.
    call("pin_memory", |e| unsafe { rt_pin_memory(t.as_ptr() as *mut c_void, &mut out, e) })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

/// Whether a tensor's strides are those of the channels_last memory format.
pub fn is_channels_last(t: &Tensor) -> Result<bool> {
    let mut out = 0;
    // SAFETY: `t` is a live tensor; valid out-pointer.
    call("channels_last", |e| unsafe { rt_is_channels_last(t.as_ptr() as *mut c_void, &mut out, e) })?;
    Ok(out != 0)
}

/// Allows TF32 in CUDA matmuls and cuDNN convolutions (`--precision tf32`).
pub fn set_allow_tf32(allow: bool) -> Result<()> {
    // SAFETY: plain value argument.
    call("tf32", |e| unsafe { rt_set_allow_tf32(allow as c_int, e) })
}

/// The first `n` values of `torch.randn(1, generator=g)` called in a loop on a CPU generator
/// seeded with `seed`: torch's own draws, so that timm's learning-rate noise is reproduced exactly.
pub fn seeded_randn(seed: u64, n: usize) -> Result<Vec<f64>> {
    let mut out = vec![0.0f64; n];
    let count = c_int::try_from(n).map_err(|_| Error::Usage(format!("{n} draws are too many")))?;
    // SAFETY: `out` holds `n` writable doubles for the call's duration.
    call("seeded randn", |e| unsafe { rt_seeded_randn(seed, count, out.as_mut_ptr(), e) })?;
    Ok(out)
}

/// The bytes of a contiguous CPU uint8 tensor, to fill it in place (no copy through libtorch).
/// The slice borrows the tensor mutably; do not hold shallow clones of it while writing.
pub fn uint8_bytes_mut(t: &mut Tensor) -> Result<&mut [u8]> {
    if t.device() != Device::Cpu || t.kind() != Kind::Uint8 || !t.is_contiguous() {
        return Err(Error::Torch(format!(
            "expected a contiguous CPU uint8 tensor, got {:?} {:?}",
            t.device(),
            t.kind()
        )));
    }
    let len = t.numel();
    if len == 0 {
        return Ok(&mut []);
    }
    // SAFETY: the tensor is a contiguous CPU uint8 tensor of `len` elements, so its data pointer
    // addresses `len` initialised bytes, which stay alive and unaliased while `t` is borrowed.
    Ok(unsafe { std::slice::from_raw_parts_mut(t.data_ptr() as *mut u8, len) })
}
