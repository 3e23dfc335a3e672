//! Build script: compiles the C++ shim (src/ffi/shim.cpp) against libtorch's headers and bakes
//! libtorch's library folder into the rpath, so binaries and tests run with no LD_LIBRARY_PATH.
use std::path::PathBuf;

fn main() {
    // torch-sys (`links = "tch"`) exports its libtorch library folder to direct dependents.
    let lib_dir = PathBuf::from(
        std::env::var("DEP_TCH_LIBTORCH_LIB")
            .expect("torch-sys did not export DEP_TCH_LIBTORCH_LIB; run scripts/bootstrap.sh first"),
    );
    let root = lib_dir.parent().expect("libtorch lib folder has a parent").to_path_buf();
    let include = root.join("include");

    // The CUDA kernels' source, embedded as a C++ raw string (compiled at run time with NVRTC).
    let out_dir = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let cu = std::fs::read_to_string("src/ffi/polycom.cu").expect("read src/ffi/polycom.cu");
    std::fs::write(out_dir.join("polycom_cu.inc"), format!("R\"POLYCOM_CU({cu})POLYCOM_CU\"\n"))
        .expect("write polycom_cu.inc");

    let torch_build = || {
        let mut b = cc::Build::new();
        b.cpp(true)
            .include(&include)
            .include(include.join("torch/csrc/api/include"))
            .include(&out_dir)
            .flag("-std=c++17")
            .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
            .flag_if_supported("-Wno-unused-parameter")
            .flag_if_supported("-Wno-deprecated-declarations")
            .flag_if_supported("-Wno-psabi")
            .warnings(false);
        b
    };
    // Each C++ library compiles on its own thread: every file includes ATen's headers (~30 s
    // each), and the crate waits for all of them.
    let mut jobs: Vec<Box<dyn FnOnce() + Send>> = Vec::new();
    let mut shim = torch_build();
    shim.file("src/ffi/shim.cpp").file("src/ffi/polycom.cpp").file("src/ffi/polycom_cuda.cpp");
    // OpenMP on for shim.cpp's own at::parallel_for (the gradient norms; see below for why).
    shim.flag("-fopenmp");
    jobs.push(Box::new(move || shim.compile("resnet_train_shim")));
    // The CUDA kernels' source as host C++ under the SIMT emulator (no ATen headers: fast).
    let mut simt = cc::Build::new();
    simt.cpp(true)
        .file("src/ffi/simt_host.cpp")
        .file("src/ffi/polycom_cuda_sim.cpp")
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .opt_level(2)
        .warnings(false);
    jobs.push(Box::new(move || simt.compile("resnet_train_simt")));

    // c10d (TCPStore, ProcessGroupGloo) against a stub of gloo's headers: the wheel ships c10d's
    // headers but not gloo's, while libtorch_cpu.so contains gloo (see src/ffi/gloo_stub/).
    let mut dist = torch_build();
    dist.file("src/ffi/dist.cpp").include("src/ffi/gloo_stub").define("USE_C10D_GLOO", None);
    jobs.push(Box::new(move || dist.compile("resnet_train_dist")));

    let nccl = torch_build();
    let (nccl_root, nccl_include, nccl_out) = (root.clone(), include.clone(), out_dir.clone());
    jobs.push(Box::new(move || build_nccl_object(&nccl_root, &nccl_include, &nccl_out, &nccl)));

    // The fused activations' CPU kernels, once per instruction set (as ATen builds its own), with
    // OpenMP on: at::parallel_for is a header template that runs on OpenMP's pool only when the
    // caller is compiled with -fopenmp (libtorch's libgomp serves it at run time).
    let arch = std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let mut isas = vec![("default", vec!["-DCPU_CAPABILITY=DEFAULT"])];
    if arch == "x86_64" {
        isas.push((
            "avx2",
            vec!["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma", "-mf16c"],
        ));
        // ATen's own AVX512 build flags (cmake/Codegen.cmake): 16 fp32 lanes, which libtorch's
        // convolutions and batch norm already use on such CPUs.
        isas.push((
            "avx512",
            vec![
                "-DCPU_CAPABILITY=AVX512",
                "-DCPU_CAPABILITY_AVX512",
                "-mavx512f",
                "-mavx512bw",
                "-mavx512vl",
                "-mavx512dq",
                "-mfma",
                "-mf16c",
            ],
        ));
    }
    for (isa, flags) in isas {
        let mut b = torch_build();
        // One object folder per build: cc names the object after the source file, and the three
        // builds run in parallel (a shared folder let one build's archive take another's object).
        // An archive an older build.rs left in OUT_DIR itself would come first in the link
        // search path and shadow the new one: removed.
        let _ = std::fs::remove_file(out_dir.join(format!("libresnet_train_polycom_{isa}.a")));
        b.file("src/ffi/polycom_cpu.cpp")
            .define("RT_ISA", isa)
            .flag("-fopenmp")
            .opt_level(3)
            .out_dir(out_dir.join(format!("polycom_{isa}")));
        for f in flags {
            b.flag(f);
        }
        jobs.push(Box::new(move || b.compile(&format!("resnet_train_polycom_{isa}"))));
    }
    std::thread::scope(|scope| {
        let handles: Vec<_> = jobs.into_iter().map(|job| scope.spawn(job)).collect();
        for h in handles {
            // A failed compile has printed its error; fail the build with it.
            if let Err(panic) = h.join() {
                std::panic::resume_unwind(panic);
            }
        }
    });
    println!("cargo:rustc-link-lib=gomp");

    // The libjpeg-API shim, against the libjpeg-turbo that turbojpeg-sys builds (`links = "turbojpeg"`).
    let mut jpeg = cc::Build::new();
    jpeg.file("src/ffi/jpeg_shim.c").warnings(false);
    for dir in std::env::var("DEP_TURBOJPEG_INCLUDE").unwrap_or_default().split(',').filter(|d| !d.is_empty())
    {
        jpeg.include(dir);
    }
    jpeg.compile("resnet_train_jpeg_shim");

    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib_dir.display());
    println!("cargo:rustc-env=RESNET_TRAIN_LIBTORCH_LIB={}", lib_dir.display());
    // The PyPI wheel's torch/version.py: `__version__` and `git_version`, for sessions.jsonl.
    let version_py = std::fs::read_to_string(root.join("version.py")).unwrap_or_default();
    let py_str = |key: &str| {
        version_py
            .lines()
            .find_map(|l| {
                l.strip_prefix(key)?
                    .trim_start()
                    .strip_prefix('=')?
                    .trim()
                    .strip_prefix('\'')?
                    .split('\'')
                    .next()
            })
            .map(str::to_string)
    };
    let libtorch_version = match (py_str("__version__"), py_str("git_version")) {
        (Some(v), Some(g)) => format!("{v} (pytorch {})", &g[..g.len().min(12)]),
        (Some(v), None) => v,
        _ => format!("unknown ({})", root.display()),
    };
    println!("cargo:rustc-env=RESNET_TRAIN_LIBTORCH_VERSION={libtorch_version}");
    for f in [
        "shim.cpp",
        "polycom.cpp",
        "polycom.h",
        "polycom_kernels.h",
        "polycom_cpu.cpp",
        "polycom_cuda.cpp",
        "polycom.cu",
        "polycom_cuda_sim.cpp",
        "polycom_cuda_sim.h",
        "simt_host.cpp",
        "simt_host.h",
        "dist.cpp",
        "dist_nccl.cpp",
        "guarded.h",
    ] {
        println!("cargo:rerun-if-changed=src/ffi/{f}");
    }
    println!("cargo:rerun-if-changed=src/ffi/shim.h");
    println!("cargo:rerun-if-changed=src/ffi/gloo_stub");
    println!("cargo:rerun-if-changed=src/ffi/cuda_stub");
    println!("cargo:rerun-if-env-changed=RESNET_TRAIN_CUDA_INCLUDE");
    println!("cargo:rerun-if-changed=src/ffi/jpeg_shim.c");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}

/// c10d's NCCL backend as a shared object (OUT_DIR/libresnet_train_nccl.so) that the binary
/// embeds (cfg `nccl_embedded`) and loads on CUDA machines only. It needs the CUDA runtime and
/// CRT headers and nccl.h: `RESNET_TRAIN_CUDA_INCLUDE` (folders, `:`-separated), else the PyPI
/// wheels beside libtorch (nvidia/cu13/include, nvidia/nccl/include; scripts/bootstrap.sh
/// installs them). Without them the binary is built without NCCL (Gloo serves every device).
fn build_nccl_object(
    root: &std::path::Path,
    include: &std::path::Path,
    out_dir: &std::path::Path,
    base: &cc::Build,
) {
    println!("cargo::rustc-check-cfg=cfg(nccl_embedded)");
    let dirs: Vec<PathBuf> = match std::env::var("RESNET_TRAIN_CUDA_INCLUDE") {
        Ok(v) => std::env::split_paths(&v).collect(),
        Err(_) => {
            let site = root.parent().map(|p| p.to_path_buf()).unwrap_or_default();
            vec![site.join("nvidia/cu13/include"), site.join("nvidia/nccl/include")]
        }
    };
    let has = |f: &str| dirs.iter().any(|d| d.join(f).exists());
    if !(has("cuda_runtime_api.h") && has("crt/host_config.h") && has("nv/target") && has("nccl.h")) {
        return;
    }
    let compiler = base.get_compiler();
    let so = out_dir.join("libresnet_train_nccl.so");
    let mut cmd = compiler.to_command();
    cmd.args([
        "-shared",
        "-fPIC",
        "-O2",
        "-std=c++17",
        "-D_GLIBCXX_USE_CXX11_ABI=1",
        "-DUSE_C10D_NCCL",
        "-DUSE_CUDA",
        "-w",
    ])
    .arg("-I")
    .arg(include)
    .arg("-I")
    .arg(include.join("torch/csrc/api/include"))
    .arg("-I")
    .arg("src/ffi/cuda_stub");
    for d in &dirs {
        cmd.arg("-I").arg(d);
    }
    // Undefined symbols resolve at load time against libtorch_cuda.so, already loaded then.
    cmd.arg("src/ffi/dist_nccl.cpp").arg("-o").arg(&so);
    let status = cmd.status().expect("run the C++ compiler for dist_nccl.cpp");
    assert!(status.success(), "compiling src/ffi/dist_nccl.cpp (the NCCL backend) failed");
    println!("cargo:rustc-cfg=nccl_embedded");
}
