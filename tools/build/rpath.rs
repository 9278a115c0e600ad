//! Shared build script for the crates that link libtorch (through `torch-sys`).
//!
//! `torch-sys` does not give the final binaries an rpath, so without this a test binary or `mrdino`
//! fails to start with "libtorch_cpu.so: cannot open shared object file". `DEP_TCH_LIBTORCH_LIB` is
//! exported by `torch-sys` (`links = "tch"`) to every package that depends on it directly.
//! `--no-as-needed -ltorch` keeps `libtorch_cuda.so` linked so CUDA is visible on GPU machines.

fn main() {
    code_version();
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        if let Some(lib) = std::env::var_os("DEP_TCH_LIBTORCH_LIB") {
            println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.to_string_lossy());
        }
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed");
        println!("cargo:rustc-link-arg=-ltorch");
    }
}

/// `MRDINO_CODE_VERSION` = crate version plus the git commit the binary was built from (and `-dirty` when the
/// work tree had changes), recorded in every output's metadata.
fn code_version() {
    let version = std::env::var("CARGO_PKG_VERSION").unwrap_or_default();
    let git = |args: &[&str]| {
        std::process::Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let full = match git(&["rev-parse", "--short=12", "HEAD"]) {
        Some(rev) => {
            let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
            format!("{version}+{rev}{}", if dirty { "-dirty" } else { "" })
        }
        None => version,
    };
    println!("cargo:rustc-env=MRDINO_CODE_VERSION={full}");
    if let Some(dir) = git(&["rev-parse", "--git-dir"]) {
        println!("cargo:rerun-if-changed={dir}/HEAD");
        println!("cargo:rerun-if-changed={dir}/index");
    }
}
