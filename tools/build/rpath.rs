//! Shared build script for the crates that link libtorch (through `torch-sys`).
//!
//! `torch-sys` does not give the final binaries an rpath, so without this a test binary or `mrdino`
//! fails to start with "libtorch_cpu.so: cannot open shared object file". `DEP_TCH_LIBTORCH_LIB` is
//! exported by `torch-sys` (`links = "tch"`) to every package that depends on it directly.
//! `--no-as-needed -ltorch` keeps `libtorch_cuda.so` linked so CUDA is visible on GPU machines.

fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.to_string_lossy());
        }
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}
