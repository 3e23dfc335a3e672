//! Gradients: backward from a given output gradient, dropping them (set to None), mixed
//! precision's unscale-and-check, and the foreach norm clip.

use super::{call, ptrs};
use crate::error::Result;
use std::ffi::{c_char, c_int, c_void};
use tch::Tensor;

extern "C" {
    fn rt_grads_set_none(params: *mut *mut c_void, n: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_backward_with_grad(output: *mut c_void, grad: *mut c_void, err: *mut *mut c_char) -> c_int;
    fn rt_foreach_unscale(
        grads: *mut *mut c_void,
        n: c_int,
        found_inf: *mut c_void,
        inv_scale: *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_foreach_clip_grad_norm(
        grads: *mut *mut c_void,
        n: c_int,
        max_norm: f64,
        total: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// `optimizer.zero_grad(set_to_none=True)` for these parameters.
pub fn grads_set_none(params: &[Tensor]) -> Result<()> {
    let mut p = ptrs(params);
    // SAFETY: an array of live tensor pointers, valid for the call.
    call("zero_grad", |e| unsafe { rt_grads_set_none(p.as_mut_ptr(), params.len() as c_int, e) })
}

/// `torch.autograd.backward(output, grad)`: backward from a non-scalar output with its gradient
/// (tch's `backward` takes none), accumulating into the leaves' `.grad`.
pub fn backward_with_grad(output: &Tensor, grad: &Tensor) -> Result<()> {
    // SAFETY: two live tensors, valid for the call.
    call("backward", |e| unsafe {
        rt_backward_with_grad(output.as_ptr() as *mut c_void, grad.as_ptr() as *mut c_void, e)
    })
}

/// `torch._amp_foreach_non_finite_check_and_unscale_`: multiplies `grads` by `inv_scale` in place
/// and sets `found_inf` (a 1-element float tensor) to 1 if any gradient holds inf/NaN.
pub fn foreach_unscale(grads: &[Tensor], found_inf: &Tensor, inv_scale: &Tensor) -> Result<()> {
    let mut g = ptrs(grads);
    // SAFETY: an array of live tensor pointers and two live tensors.
    call("unscale", |e| unsafe {
        rt_foreach_unscale(
            g.as_mut_ptr(),
            grads.len() as c_int,
            found_inf.as_ptr() as *mut c_void,
            inv_scale.as_ptr() as *mut c_void,
            e,
        )
    })
}

/// Total L2 norm of `grads` (a 0-d float tensor on their device); with a finite `max_norm` > 0 the
/// gradients are scaled in place as torch.nn.utils.clip_grad_norm_ does.
pub fn foreach_clip_grad_norm(grads: &[Tensor], max_norm: f64) -> Result<Tensor> {
    let mut g = ptrs(grads);
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: an array of live tensor pointers; on success the shim returns a new tensor we own.
    call("clip_grad_norm", |e| unsafe {
        rt_foreach_clip_grad_norm(g.as_mut_ptr(), grads.len() as c_int, max_norm, &mut out, e)
    })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}
