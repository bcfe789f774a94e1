//! Compiles `proto/switchboard.proto` (devices), `proto/cluster.proto` (node to node) and
//! `proto/e2ee.proto` (the client SDK's encrypted formats) with protox (a pure-Rust
//! protobuf compiler), so a fresh machine needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/switchboard.proto");
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    println!("cargo:rerun-if-changed=proto/e2ee.proto");
    let descriptors = protox::compile(["proto/switchboard.proto", "proto/cluster.proto", "proto/e2ee.proto"], ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    Ok(())
}
