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
    torch_build()
        .file("src/ffi/shim.cpp")
        .file("src/ffi/polycom.cpp")
        .file("src/ffi/polycom_cuda.cpp")
        .compile("resnet_train_shim");

    // c10d (TCPStore, ProcessGroupGloo) against a stub of gloo's headers: the wheel ships c10d's
    // headers but not gloo's, while libtorch_cpu.so contains gloo (see src/ffi/gloo_stub/).
    torch_build()
        .file("src/ffi/dist.cpp")
        .include("src/ffi/gloo_stub")
        .define("USE_C10D_GLOO", None)
        .compile("resnet_train_dist");

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
    }
    for (isa, flags) in isas {
        let mut b = torch_build();
        b.file("src/ffi/polycom_cpu.cpp").define("RT_ISA", isa).flag("-fopenmp").opt_level(3);
        for f in flags {
            b.flag(f);
        }
        b.compile(&format!("resnet_train_polycom_{isa}"));
    }
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
    for f in [
        "shim.cpp",
        "polycom.cpp",
        "polycom.h",
        "polycom_kernels.h",
        "polycom_cpu.cpp",
        "polycom_cuda.cpp",
        "polycom.cu",
        "dist.cpp",
        "guarded.h",
    ] {
        println!("cargo:rerun-if-changed=src/ffi/{f}");
    }
    println!("cargo:rerun-if-changed=src/ffi/shim.h");
    println!("cargo:rerun-if-changed=src/ffi/gloo_stub");
    println!("cargo:rerun-if-changed=src/ffi/jpeg_shim.c");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}
