//! Process start-up and device selection.

use crate::error::{Error, Result};
use tch::Device;

/// Call once at start-up, before any CUDA query: makes libtorch's CUDA backend available when
/// the machine has it (see `ffi::load_cuda_library`).
pub fn init() {
    crate::ffi::load_cuda_library();
    // Compiled CUDA kernels are kept under the cache folder (a failure only costs a compile).
    let _ = crate::ffi::set_kernel_cache_dir(cache_dir().map(|d| d.join("kernels")).as_deref());
}

/// The cache folder: `$RESNET_TRAIN_CACHE`, else `~/.cache/resnet-train` (the libtorch install,
/// the embedded dataset, folder indexes, compiled CUDA kernels).
pub fn cache_dir() -> Option<std::path::PathBuf> {
    std::env::var_os("RESNET_TRAIN_CACHE")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::PathBuf::from(h).join(".cache/resnet-train")))
}

/// The environment variables a run reads that can be wrong: a clear error before any work
/// (`RESNET_TRAIN_CUDA_TUNING`, the CUDA kernels' tuning, would otherwise only turn the fused
/// activations off with a warning on the GPU).
pub fn check_environment() -> Result<()> {
    if let Some(spec) = std::env::var_os("RESNET_TRAIN_CUDA_TUNING") {
        crate::ffi::check_cuda_tuning(&spec.to_string_lossy()).map_err(|e| Error::Usage(e.to_string()))?;
    }
    Ok(())
}

/// Parses `cpu`, `cuda`, `cuda:N` or `auto` (CUDA when available, else CPU).
pub fn parse_device(s: &str) -> Result<Device> {
    let bad = || Error::Usage(format!("--device {s:?}: expected cpu, cuda, cuda:N or auto"));
    let device = match s {
        "auto" => return Ok(Device::cuda_if_available()),
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => match s.strip_prefix("cuda:") {
            Some(n) => Device::Cuda(n.parse().map_err(|_| bad())?),
            None => return Err(bad()),
        },
    };
    if let Device::Cuda(n) = device {
        let count = tch::Cuda::device_count();
        if n as i64 >= count {
            return Err(Error::Usage(format!(
                "--device {s}: {} (is this a CPU-only libtorch, or LD_LIBRARY_PATH missing the CUDA libraries?)",
                if count == 0 { "no CUDA device is available".to_string() } else { format!("only {count} CUDA device(s)") }
            )));
        }
    }
    Ok(device)
}

/// Makes a CUDA `device` the process's current one, as DDP scripts call `torch.cuda.set_device(
/// local_rank)`: what libtorch does on "the current device" (pinned host buffers, which create a
/// context there; c10d NCCL's barrier before any collective) then happens on this rank's GPU
/// rather than on GPU 0 of every rank. Tensors and kernels name their device anyway; a failure
/// only warns.
pub fn use_device(device: Device) {
    if let Device::Cuda(n) = device {
        if let Err(e) = crate::ffi::cuda_set_device(n) {
            eprintln!("warning: could not make cuda:{n} the current CUDA device: {e}");
        }
    }
}

/// This very binary, for child processes (study jobs, launched ranks, step measurements):
/// /proc/self/exe runs it even if the file was rebuilt or replaced meanwhile (its path would then
/// name another program, or nothing: "... (deleted)").
pub fn this_program() -> Result<std::path::PathBuf> {
    let proc_exe = std::path::PathBuf::from("/proc/self/exe");
    if proc_exe.exists() {
        return Ok(proc_exe);
    }
    std::env::current_exe().map_err(|e| Error::Usage(format!("cannot find this program: {e}")))
}

/// The device in words for logs and records: "Cuda(0): NVIDIA H200 (sm_90, 132 SMs, 139.8 GiB,
/// CUDA driver 13.0)" (the driver's answer; only the index where it cannot answer), or "Cpu:
/// Intel(R) Xeon(R) Processor (2 logical CPUs; AVX-512 BF16 FP16)" (from /proc/cpuinfo: the CPU
/// timings depend on these, so a record says which CPU made them; just "Cpu" where it cannot tell).
pub fn describe_device(device: Device) -> String {
    match device {
        Device::Cuda(i) => match crate::ffi::cuda_device_description(i) {
            Ok(d) => format!("{device:?}: {d}"),
            Err(_) => format!("{device:?}"),
        },
        Device::Cpu => match std::fs::read_to_string("/proc/cpuinfo").ok().and_then(|c| describe_cpu(&c)) {
            Some(d) => format!("Cpu: {d}"),
            None => "Cpu".to_string(),
        },
        _ => format!("{device:?}"),
    }
}

/// "MODEL (N logical CPUs; ISA...)" from the text of /proc/cpuinfo: the first processor's model
/// name and the vector extensions the kernels (ours and oneDNN's) choose between.
pub fn describe_cpu(cpuinfo: &str) -> Option<String> {
    let field = |name: &str| {
        cpuinfo.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            (k.trim() == name).then(|| v.trim().to_string())
        })
    };
    let model = field("model name")?;
    let logical =
        cpuinfo.lines().filter(|l| l.split_once(':').is_some_and(|(k, _)| k.trim() == "processor")).count();
    let flags = field("flags").unwrap_or_default();
    let has = |f: &str| flags.split_whitespace().any(|x| x == f);
    let mut isa = Vec::new();
    if has("avx512f") {
        isa.push("AVX-512");
        for (flag, name) in [("avx512_bf16", "BF16"), ("avx512_fp16", "FP16"), ("amx_bf16", "AMX")] {
            if has(flag) {
                isa.push(name);
            }
        }
    } else {
        isa.push(if has("avx2") { "AVX2" } else { "no AVX2" });
    }
    Some(format!("{model} ({logical} logical CPUs; {})", isa.join(" ")))
}
