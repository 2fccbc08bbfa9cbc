//! With the `torch` feature, the binary records where libtorch is (an rpath), so `sluice` runs
//! without LD_LIBRARY_PATH; libtorch's own dependencies sit in the same folder. A CUDA libtorch
//! (scripts/gpu-check.sh builds one) is kept linked.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_some()
        && let Some(dir) = std::env::var_os("LIBTORCH")
    {
        let lib = std::path::Path::new(&dir).join("lib");
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
        // A CUDA libtorch: nothing references libtorch_cuda.so directly, and the linker's
        // --as-needed would drop it, leaving libtorch without its CUDA kernels.
        if lib.join("libtorch_cuda.so").is_file() {
            println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
        }
    }
}
