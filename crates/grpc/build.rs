//! Generates the protocol's messages, server and client from `proto/grpc_predict_v2.proto` with
//! the protoc binary the `protoc-bin-vendored` crate carries: nothing is downloaded, and no protoc
//! need be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "proto/grpc_predict_v2.proto";
    println!("cargo:rerun-if-changed={proto}");
    let mut config = tonic_prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure()
        // Tensor bytes as `bytes::Bytes`: slices of the decoded message, not copies.
        .bytes(".inference")
        .compile_with_config(config, &[proto], &["proto"])?;
    Ok(())
}
