//! Generates the gRPC `TunnelControl` code from `proto/grpc/tunnel.proto`.
//!
//! protoc comes from $PROTOC when set, else from the `protoc-bin-vendored` crate, so
//! a fresh machine needs no system package to build.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto = "../proto/grpc/tunnel.proto";
    println!("cargo:rerun-if-changed={proto}");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = match std::env::var_os("PROTOC") {
        Some(p) => std::path::PathBuf::from(p),
        None => protoc_bin_vendored::protoc_bin_path()?,
    };
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &[proto], &["../proto/grpc"])?;
    Ok(())
}
