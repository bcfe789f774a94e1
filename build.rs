//! Compiles `proto/switchboard.proto` (devices), `proto/cluster.proto` (node to node) and
//! `proto/e2ee.proto` (the client SDK's encrypted formats) with protox (a pure-Rust
//! protobuf compiler), so a fresh machine needs no system `protoc`; and lists the web
//! client's built files (`web/dist/`, committed) so that `src/http/web_app.rs` embeds them
//! in the binary with `include_bytes!`.
use std::path::{Path, PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/switchboard.proto");
    println!("cargo:rerun-if-changed=proto/cluster.proto");
    println!("cargo:rerun-if-changed=proto/e2ee.proto");
    let descriptors = protox::compile(["proto/switchboard.proto", "proto/cluster.proto", "proto/e2ee.proto"], ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(descriptors)?;
    web_assets()?;
    Ok(())
}

/// Every file under `dir`, recursively, sorted.
fn files(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.path());
    for entry in entries {
        let path = entry.path();
        println!("cargo:rerun-if-changed={}", path.display());
        if entry.file_type()?.is_dir() {
            files(&path, out)?;
        } else {
            out.push(path);
        }
    }
    Ok(())
}

/// Writes `$OUT_DIR/web_assets.rs`: `(path under /app/, bytes)` for each built file.
fn web_assets() -> Result<(), Box<dyn std::error::Error>> {
    let root = Path::new(&std::env::var("CARGO_MANIFEST_DIR")?).join("web/dist");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut list = Vec::new();
    if root.is_dir() {
        files(&root, &mut list)?;
    }
    let mut code = String::from("/// The web client's built files: path under `/app/`, contents.\npub static ASSETS: &[(&str, &[u8])] = &[\n");
    for path in list {
        let relative = path.strip_prefix(&root)?.to_string_lossy().replace('\\', "/");
        code.push_str(&format!("    ({relative:?}, include_bytes!({:?})),\n", path.display().to_string()));
    }
    code.push_str("];\n");
    std::fs::write(Path::new(&std::env::var("OUT_DIR")?).join("web_assets.rs"), code)?;
    Ok(())
}
