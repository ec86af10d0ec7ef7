//! Compiles the gRPC API from `proto/` in pure Rust (protox parses the files, tonic's
//! generator writes the code): building needs nothing but cargo, no `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(
        [
            "proto/destination.proto",
            "proto/discovery.proto",
            "proto/identity.proto",
            "proto/policy.proto",
        ],
        ["proto"],
    )?;
    // Small stream buffers: see `src/codec.rs`.
    tonic_prost_build::configure()
        .codec_path("crate::codec::SmallCodec")
        .compile_fds(files)?;
    Ok(())
}
