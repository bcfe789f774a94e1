//! Compiles `proto/switchboard.proto` with protox (a pure-Rust protobuf compiler), so a
//! fresh machine needs no system `protoc`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/switchboard.proto");
    let descriptors = protox::compile(["proto/switchboard.proto"], ["proto"])?;
    prost_build::Config::new()
        .bytes(["."])
        .compile_fds(descriptors)?;
    Ok(())
}
