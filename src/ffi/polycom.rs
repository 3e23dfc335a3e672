//! The fused PolyReLU / PolyNorm operator (alone or with the BatchNorm before it), the CPU
//! kernels' instruction-set switch, and the CUDA kernels' SIMT emulator (the tests' way to run
//! them without a GPU).

use super::call;
use crate::error::Result;
use std::ffi::{c_char, c_int, c_void};
use tch::Tensor;

extern "C" {
    fn rt_polycom_apply(
        kind: c_int,
        x: *mut c_void,
        w: *mut c_void,
        b: *mut c_void,
        eps: f64,
        lowp_out: c_int,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_bn_act_apply(
        kind: c_int,
        z: *mut c_void,
        gamma: *mut c_void,
        beta: *mut c_void,
        identity: *mut c_void,
        w: *mut c_void,
        b: *mut c_void,
        running_mean: *mut c_void,
        running_var: *mut c_void,
        train: c_int,
        momentum: f64,
        bn_eps: f64,
        eps: f64,
        lowp_out: c_int,
        clamp: f64,
        out: *mut *mut c_void,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_polycom_set_cpu_isa(isa: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cpu_isa(out: *mut c_int, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_set_cuda_simulation(on: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_bn_folds(out: *mut i64, err: *mut *mut c_char) -> c_int;
    fn rt_simt_selftest(
        mode: c_int,
        blocks: u32,
        threads: u32,
        out: *mut f64,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_simt_half_conversions(
        input: *const f32,
        bits: *mut u16,
        back: *mut f32,
        n: i64,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Which fused PolyCom operator (src/ffi/polycom.cpp).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolyCom {
    PolyRelu,
    /// Over dim 1 (the channels).
    PolyNorm,
}

/// The fused, differentiable PolyReLU / PolyNorm over x (fp32, fp64, bf16 or fp16; any layout)
/// with weight `w` (1..=8 entries) and bias `b` (one entry). fp32 arithmetic and an fp32 output
/// (fp64 for fp64 input), or with `lowp_out` a bf16/fp16 input's own type (rounded once, at the
/// end; its gradient comes back in that type too); backward in closed form. CPU, or CUDA kernels
/// compiled with NVRTC.
pub fn polycom(op: PolyCom, x: &Tensor, w: &Tensor, b: &Tensor, eps: f64, lowp_out: bool) -> Result<Tensor> {
    let mut out: *mut c_void = std::ptr::null_mut();
    let kind = match op {
        PolyCom::PolyRelu => 0,
        PolyCom::PolyNorm => 1,
    };
    let (xp, wp, bp) = (x.as_ptr() as *mut c_void, w.as_ptr() as *mut c_void, b.as_ptr() as *mut c_void);
    // SAFETY: three live tensors; on success the shim returns a new heap tensor we take ownership of.
    call("fused activation", |e| unsafe {
        rt_polycom_apply(kind, xp, wp, bp, eps, lowp_out as c_int, &mut out, e)
    })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

/// A BatchNorm layer's tensors and settings, as `bn_polycom` takes them.
pub struct BatchNormArgs<'a> {
    pub gamma: Option<&'a Tensor>,
    pub beta: Option<&'a Tensor>,
    pub running_mean: &'a Tensor,
    pub running_var: &'a Tensor,
    /// Training mode (batch statistics, running statistics updated) or eval mode.
    pub train: bool,
    pub momentum: f64,
    pub eps: f64,
}

/// The activation of `bn_polycom`: as `polycom`'s arguments, and `act_clamp`'s bound (the
/// activation's input clamped to [-c, c] first).
pub struct PolyComArgs<'a> {
    pub op: PolyCom,
    pub w: &'a Tensor,
    pub b: &'a Tensor,
    pub eps: f64,
    pub lowp_out: bool,
    pub clamp: Option<f64>,
}

/// `polycom(op, batch_norm(z) [+ identity], w, b, ...)` as one differentiable operator that keeps z
/// for the backward instead of the activation's input (recomputed there in one pass). Batch norm
/// is libtorch's, with the same values and running-statistics update as `Tensor::batch_norm`.
pub fn bn_polycom(
    z: &Tensor,
    bn: &BatchNormArgs,
    identity: Option<&Tensor>,
    act: &PolyComArgs,
) -> Result<Tensor> {
    let ptr = |t: Option<&Tensor>| t.map_or(std::ptr::null_mut(), |t| t.as_ptr() as *mut c_void);
    let kind = match act.op {
        PolyCom::PolyRelu => 0,
        PolyCom::PolyNorm => 1,
    };
    let mut out: *mut c_void = std::ptr::null_mut();
    // SAFETY: live tensors or nulls (which the shim reads as undefined); on success the shim
    // returns a new heap tensor we take ownership of.
    call("fused batch norm + activation", |e| unsafe {
        rt_bn_act_apply(
            kind,
            ptr(Some(z)),
            ptr(bn.gamma),
            ptr(bn.beta),
            ptr(identity),
            ptr(Some(act.w)),
            ptr(Some(act.b)),
            ptr(Some(bn.running_mean)),
            ptr(Some(bn.running_var)),
            bn.train as c_int,
            bn.momentum,
            bn.eps,
            act.eps,
            act.lowp_out as c_int,
            act.clamp.unwrap_or(0.0),
            &mut out,
            e,
        )
    })?;
    Ok(unsafe { Tensor::from_ptr(out as *mut torch_sys::C_tensor) })
}

/// The fused activations' CPU kernels: those for the instruction set ATen's own kernels use on
/// this CPU (`Auto`), the portable build, AVX2+FMA, or AVX-512 (F, BW, VL, DQ).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum CpuIsa {
    Auto = 0,
    Portable = 1,
    Avx2 = 2,
    Avx512 = 3,
}

/// Picks the CPU kernels (for tests and benchmarks; `Auto` is the default).
pub fn set_polycom_cpu_isa(isa: CpuIsa) -> Result<()> {
    // SAFETY: plain value argument.
    call("fused activation", |e| unsafe { rt_polycom_set_cpu_isa(isa as c_int, e) })
}

/// The CPU kernels in use (`Portable`, `Avx2` or `Avx512`).
pub fn polycom_cpu_isa() -> Result<CpuIsa> {
    let mut out = 0;
    // SAFETY: valid out-pointer.
    call("fused activation", |e| unsafe { rt_polycom_cpu_isa(&mut out, e) })?;
    Ok(match out {
        3 => CpuIsa::Avx512,
        2 => CpuIsa::Avx2,
        _ => CpuIsa::Portable,
    })
}

/// While on, the fused operators run their CUDA kernels' source (compiled for the host) on CPU
/// tensors under a SIMT emulator (src/ffi/simt_host.h) instead of the CPU kernels: how the CUDA
/// kernels are checked numerically without a GPU (`check-act --simulate-cuda`). Process-wide.
pub fn set_polycom_cuda_simulation(on: bool) -> Result<()> {
    // SAFETY: plain value argument.
    call("fused activation", |e| unsafe { rt_polycom_set_cuda_simulation(on as c_int, e) })
}

/// How many times this process ran batch norm's backward folded into the CUDA kernels (PolyNorm's
/// channels-last backward taking batch norm's sums; on a GPU or simulated): how a check shows that
/// the path it covers took the fold.
pub fn polycom_cuda_bn_folds() -> Result<i64> {
    let mut out = 0i64;
    // SAFETY: a valid out-pointer.
    call("fused activation", |e| unsafe { rt_polycom_cuda_bn_folds(&mut out, e) })?;
    Ok(out)
}

/// How a kernel run by the SIMT emulator uses warp shuffles and `__syncthreads` (`simt_selftest`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SimtSelftest {
    /// Correctly: every lane shuffles, every thread reaches the barrier.
    Correct = 0,
    /// The upper 16 lanes of each warp exit before a full-warp shuffle.
    LanesExitBeforeShuffle = 1,
    /// Half the block waits at a `__syncthreads` the other half never reaches.
    DivergentBarrier = 2,
}

/// Runs the SIMT emulator's self-check kernel as `blocks` x `threads` (a multiple of 32): the
/// per-block sums of the threads' global indices, or the emulator's error for a misuse.
pub fn simt_selftest(mode: SimtSelftest, blocks: u32, threads: u32) -> Result<Vec<f64>> {
    let mut out = vec![0f64; blocks as usize];
    // SAFETY: `out` holds one value per block, which is all the kernel writes.
    call("simt emulator", |e| unsafe {
        rt_simt_selftest(mode as c_int, blocks, threads, out.as_mut_ptr(), e)
    })?;
    Ok(out)
}

/// The simulated kernels' fp16 conversions: (fp16 bits of each value, rounded to nearest even;
/// those bits back in fp32).
pub fn simt_half_conversions(input: &[f32]) -> Result<(Vec<u16>, Vec<f32>)> {
    let (mut bits, mut back) = (vec![0u16; input.len()], vec![0f32; input.len()]);
    // SAFETY: three buffers of input.len() elements.
    call("simt emulator", |e| unsafe {
        rt_simt_half_conversions(input.as_ptr(), bits.as_mut_ptr(), back.as_mut_ptr(), input.len() as i64, e)
    })?;
    Ok((bits, back))
}
