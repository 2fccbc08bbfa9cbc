//! With the `torch` feature, the binary records where libtorch is (an rpath), so `sluice` runs
//! without LD_LIBRARY_PATH; libtorch's own dependencies sit in the same folder.
fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    if std::env::var_os("CARGO_FEATURE_TORCH").is_some()
        && let Some(dir) = std::env::var_os("LIBTORCH")
    {
        println!("cargo:rustc-link-arg=-Wl,-rpath,{}/lib", std::path::Path::new(&dir).display());
    }
}
