//! Compiles the demo application's gRPC service with protoc.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/demo.proto"], &["proto"])?;
    Ok(())
}
