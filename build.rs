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

    cc::Build::new()
        .cpp(true)
        .file("src/ffi/shim.cpp")
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag_if_supported("-Wno-unused-parameter")
        .flag_if_supported("-Wno-deprecated-declarations")
        .warnings(false)
        .compile("resnet_train_shim");

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
    println!("cargo:rerun-if-changed=src/ffi/shim.cpp");
    println!("cargo:rerun-if-changed=src/ffi/shim.h");
    println!("cargo:rerun-if-changed=src/ffi/jpeg_shim.c");
    println!("cargo:rerun-if-env-changed=LIBTORCH");
}
