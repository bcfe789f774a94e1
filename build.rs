//! Compiles `proto/switchboard.proto` (devices) and `proto/cluster.proto` (node to node)
//! with protox (a pure-Rust protobuf compiler), so a fresh machine needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/switchboard.proto");
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    let descriptors = protox::compile(["proto/switchboard.proto", "proto/cluster.proto"], ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
