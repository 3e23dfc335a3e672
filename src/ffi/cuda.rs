//! CUDA: device selection and memory, loading libtorch_cuda, and the fused kernels' NVRTC
//! compilation, tuning and on-disk cache.

use super::{c_path, call, take_string};
use crate::error::{Error, Result};
use std::ffi::{c_char, c_int, CString};

extern "C" {
    fn rt_cuda_max_memory_allocated(device: c_int, out: *mut i64, err: *mut *mut c_char) -> c_int;
    fn rt_cuda_set_device(device: c_int, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_kernel_names(out: *mut *mut c_char, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_unavailable(device: c_int, reason: *mut *mut c_char, err: *mut *mut c_char) -> c_int;
    fn rt_cuda_describe_device(device: c_int, out: *mut *mut c_char, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_compile_check(
        arch: *const c_char,
        nvrtc_path: *const c_char,
        log: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_polycom_cuda_ptx(
        arch: *const c_char,
        nvrtc_path: *const c_char,
        tuning: *const c_char,
        ptx: *mut *mut c_char,
        log: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_polycom_cuda_set_cache_dir(dir: *const c_char, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_check_tuning(spec: *const c_char, err: *mut *mut c_char) -> c_int;
    fn rt_polycom_cuda_ptxas_report(
        arch: *const c_char,
        nvrtc_path: *const c_char,
        tuning: *const c_char,
        report: *mut *mut c_char,
        log: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> c_int;
    fn rt_polycom_cuda_cached_compile_check(
        arch: *const c_char,
        nvrtc_path: *const c_char,
        dir: *const c_char,
        tuning: *const c_char,
        from_cache: *mut c_int,
        size: *mut usize,
        log: *mut *mut c_char,
        err: *mut *mut c_char,
    ) -> c_int;
}

/// Peak bytes PyTorch's caching allocator has handed out on CUDA device `index` since the start
/// (torch.cuda.max_memory_allocated).
/// Makes cuda:`index` the process's current CUDA device, as `torch.cuda.set_device` does.
pub fn cuda_set_device(index: usize) -> Result<()> {
    // SAFETY: a plain value argument.
    call("cuda set device", |e| unsafe { rt_cuda_set_device(index as c_int, e) })
}

pub fn cuda_max_memory_allocated(index: usize) -> Result<u64> {
    let mut out = 0i64;
    // SAFETY: plain value argument and a valid out-pointer.
    call("cuda memory stats", |e| unsafe { rt_cuda_max_memory_allocated(index as c_int, &mut out, e) })?;
    Ok(out.max(0) as u64)
}

/// The kernels polycom.cu defines, sorted (as the SIMT emulator's build of it registers them): the
/// entry points a GPU's image of the same source must hold, since the CUDA path launches kernels
/// by name.
pub fn polycom_cuda_kernel_names() -> Result<Vec<String>> {
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: a valid out-pointer; the shim hands over a malloc'ed string.
    call("fused activation", |e| unsafe { rt_polycom_cuda_kernel_names(&mut out, e) })?;
    Ok(take_string(out).unwrap_or_default().lines().map(str::to_string).collect())
}

/// None when the fused activations' CUDA kernels run on CUDA device `index` (NVRTC found, kernels
/// compiled and loaded; done once per device), else why not.
pub fn polycom_cuda_unavailable(index: usize) -> Result<Option<String>> {
    let mut reason: *mut c_char = std::ptr::null_mut();
    // SAFETY: plain value argument and a valid out-pointer.
    call("fused activation", |e| unsafe { rt_polycom_cuda_unavailable(index as c_int, &mut reason, e) })?;
    Ok(take_string(reason))
}

/// CUDA device `index` in words, from the NVIDIA driver: "NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB,
/// CUDA driver 13.0)". An error where there is no driver or no such device.
pub fn cuda_device_description(index: usize) -> Result<String> {
    let mut out: *mut c_char = std::ptr::null_mut();
    // SAFETY: plain value argument and a valid out-pointer.
    call("CUDA device", |e| unsafe { rt_cuda_describe_device(index as c_int, &mut out, e) })?;
    Ok(take_string(out).unwrap_or_default())
}

/// Compiles the fused activations' CUDA kernels with NVRTC for `arch` ("compute_90": PTX, "sm_90":
/// a cubin) without a GPU. `Ok(None)` on success, `Ok(Some(log))` when NVRTC is missing or the
/// source does not compile.
pub fn polycom_cuda_compile_check(
    arch: &str,
    nvrtc_path: Option<&std::path::Path>,
) -> Result<Option<String>> {
    let arch = CString::new(arch).map_err(|_| Error::Usage("arch contains a NUL byte".into()))?;
    let path = CString::new(nvrtc_path.map(|p| p.to_string_lossy().into_owned()).unwrap_or_default())
        .map_err(|_| Error::Usage("NVRTC path contains a NUL byte".into()))?;
    let mut log: *mut c_char = std::ptr::null_mut();
    // SAFETY: two NUL-terminated strings alive for the call and a valid out-pointer.
    call("fused activation", |e| unsafe {
        rt_polycom_cuda_compile_check(arch.as_ptr(), path.as_ptr(), &mut log, e)
    })?;
    Ok(take_string(log))
}

/// Where the CUDA kernels, once compiled for a GPU, are kept for later processes (None: every
/// process compiles them, several seconds).
pub fn set_kernel_cache_dir(dir: Option<&std::path::Path>) -> Result<()> {
    let dir = c_path(dir, "the kernel cache folder")?;
    // SAFETY: a NUL-terminated string alive for the call.
    call("kernel cache", |e| unsafe { rt_polycom_cuda_set_cache_dir(dir.as_ptr(), e) })
}

/// Checks a `RESNET_TRAIN_CUDA_TUNING` value (e.g. "min_blocks=4,blocks_per_sm=16").
pub fn check_cuda_tuning(spec: &str) -> Result<()> {
    let spec = CString::new(spec)
        .map_err(|_| Error::Usage("RESNET_TRAIN_CUDA_TUNING contains a NUL byte".into()))?;
    let mut err: *mut c_char = std::ptr::null_mut();
    // SAFETY: a NUL-terminated string alive for the call and a valid error slot.
    if unsafe { rt_polycom_cuda_check_tuning(spec.as_ptr(), &mut err) } == 0 {
        return Ok(());
    }
    Err(Error::Usage(take_string(err).unwrap_or_else(|| "RESNET_TRAIN_CUDA_TUNING is not valid".into())))
}

/// Compiles the CUDA kernels for `arch` under `tuning` (RESNET_TRAIN_CUDA_TUNING's syntax) through
/// the cache folder `dir`, no GPU needed: `Ok(Ok((from_cache, bytes)))`, or `Ok(Err(log))` when
/// NVRTC is missing or fails (or the tuning is not valid).
pub fn polycom_cuda_cached_compile(
    arch: &str,
    nvrtc_path: Option<&std::path::Path>,
    dir: &std::path::Path,
    tuning: &str,
) -> Result<std::result::Result<(bool, usize), String>> {
    let arch = CString::new(arch).map_err(|_| Error::Usage("arch contains a NUL byte".into()))?;
    let tuning = CString::new(tuning).map_err(|_| Error::Usage("the tuning contains a NUL byte".into()))?;
    let (path, dir) = (c_path(nvrtc_path, "NVRTC path")?, c_path(Some(dir), "the kernel cache folder")?);
    let (mut from_cache, mut size, mut log): (c_int, usize, *mut c_char) = (0, 0, std::ptr::null_mut());
    // SAFETY: four NUL-terminated strings alive for the call and valid out-pointers.
    call("fused activation", |e| unsafe {
        rt_polycom_cuda_cached_compile_check(
            arch.as_ptr(),
            path.as_ptr(),
            dir.as_ptr(),
            tuning.as_ptr(),
            &mut from_cache,
            &mut size,
            &mut log,
            e,
        )
    })?;
    Ok(match take_string(log) {
        Some(log) => Err(log),
        None => Ok((from_cache != 0, size)),
    })
}

/// Loads libtorch_cuda.so next to the libtorch_cpu.so this process uses, so that `--device cuda`
/// works: the linker drops the library because no symbol of it is referenced (tch-rs issue 980).
/// On a CPU-only install (no file, or its CUDA dependencies missing) this is a silent no-op.
/// Returns the path that was loaded.
pub fn load_cuda_library() -> Option<String> {
    let maps = std::fs::read_to_string("/proc/self/maps").ok()?;
    let cpu_lib =
        maps.lines().filter_map(|l| l.split_whitespace().nth(5)).find(|p| p.ends_with("/libtorch_cpu.so"))?;
    let dir = std::path::Path::new(cpu_lib).parent()?;
    let cuda_lib = dir.join("libtorch_cuda.so");
    if !cuda_lib.exists() {
        return None;
    }
    let c_path = CString::new(cuda_lib.to_string_lossy().as_bytes()).ok()?;
    // SAFETY: dlopen with a valid C string; the handle is intentionally leaked (the library stays loaded).
    let handle = unsafe { libc::dlopen(c_path.as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL) };
    if handle.is_null() {
        None
    } else {
        Some(cuda_lib.to_string_lossy().into_owned())
    }
}

/// The fused activations' CUDA kernels as PTX for a virtual architecture (`arch` = "compute_90"),
/// compiled with NVRTC without a GPU: `Ok(Ok(ptx))`, or `Ok(Err(log))` when NVRTC is missing or
/// the source does not compile or `tuning` (`RESNET_TRAIN_CUDA_TUNING`'s syntax, "" for none) is
/// wrong. The tests read it to check what the kernels compile to.
pub fn polycom_cuda_ptx(
    arch: &str,
    nvrtc_path: Option<&std::path::Path>,
    tuning: &str,
) -> Result<std::result::Result<String, String>> {
    nvrtc_text(arch, nvrtc_path, tuning, rt_polycom_cuda_ptx)
}

/// As `polycom_cuda_ptx` for a real architecture ("sm_90"): ptxas's report of every kernel's
/// registers and spills, from which the tests watch for spills.
pub fn polycom_cuda_ptxas_report(
    arch: &str,
    nvrtc_path: Option<&std::path::Path>,
    tuning: &str,
) -> Result<std::result::Result<String, String>> {
    nvrtc_text(arch, nvrtc_path, tuning, rt_polycom_cuda_ptxas_report)
}

/// A shim function taking (arch, NVRTC path, tuning, out text, log, error slot).
type NvrtcTextFn = unsafe extern "C" fn(
    *const c_char,
    *const c_char,
    *const c_char,
    *mut *mut c_char,
    *mut *mut c_char,
    *mut *mut c_char,
) -> c_int;

/// Calls a shim function that compiles the kernels (arch, NVRTC path, tuning) and returns a text
/// (`out`) or NVRTC's log.
fn nvrtc_text(
    arch: &str,
    nvrtc_path: Option<&std::path::Path>,
    tuning: &str,
    f: NvrtcTextFn,
) -> Result<std::result::Result<String, String>> {
    let arch = CString::new(arch).map_err(|_| Error::Usage("arch contains a NUL byte".into()))?;
    let path = c_path(nvrtc_path, "NVRTC path")?;
    let tuning = CString::new(tuning).map_err(|_| Error::Usage("tuning contains a NUL byte".into()))?;
    let (mut out, mut log): (*mut c_char, *mut c_char) = (std::ptr::null_mut(), std::ptr::null_mut());
    // SAFETY: three NUL-terminated strings alive for the call and two valid out-pointers, as
    // both shim functions take them.
    call("fused activation", |e| unsafe {
        f(arch.as_ptr(), path.as_ptr(), tuning.as_ptr(), &mut out, &mut log, e)
    })?;
    Ok(match take_string(log) {
        Some(log) => Err(log),
        None => Ok(take_string(out).unwrap_or_default()),
    })
}
