//! Compiles the gRPC API from `proto/` with protoc (Debian: `protobuf-compiler`).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(
        &["proto/destination.proto", "proto/identity.proto"],
        &["proto"],
    )?;
    Ok(())
}
