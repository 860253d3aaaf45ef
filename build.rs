//! With `--features torch`: link flags torch-sys leaves out.
//! - An rpath to the libtorch the binary was linked against, so it starts without
//!   `LD_LIBRARY_PATH` on the machine that built it. torch-sys reports the directory (its
//!   `links = "tch"` metadata `libtorch_lib`) but sets no rpath. Written as DT_RUNPATH
//!   (`--enable-new-dtags`), which `LD_LIBRARY_PATH` overrides: on a GPU machine with its own
//!   PyTorch, point `LD_LIBRARY_PATH` at that torch's `lib`.
//! - `libtorch_cuda.so` kept as a needed library: no Rust symbol refers to it, so the
//!   linker's `--as-needed` drops it, and without it libtorch registers no CUDA backend
//!   (`tch::Cuda::is_available()` is false even on a GPU machine).
//!
//! Without the feature this script does nothing.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,--enable-new-dtags,-rpath,{dir}");
    if std::path::Path::new(&dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
}
