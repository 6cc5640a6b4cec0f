//! Compiles the .proto files with protox (pure Rust: no protoc on the machine).

use std::{env, fs, path::PathBuf};

const PROTOS: &[&str] =
    &["ambishare/types/v1/types.proto", "ambishare/registry/v1/registry.proto", "ambishare/owner/v1/owner.proto"];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    // Server reflection serves this descriptor set.
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("ambishare_descriptor.bin"), prost::Message::encode_to_vec(&fds))?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
