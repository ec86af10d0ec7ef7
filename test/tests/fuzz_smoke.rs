//! The smoke of every fuzz target: each harness of `mesh_test::fuzz` over its seed
//! corpus (`fuzz/corpus/NAME`) and a few thousand mutations of it, in process, with a
//! fixed seed. `test/fuzz` runs the same harnesses under libFuzzer for longer; inputs
//! it finds crashing are added to the corpus, and so run here from then on.

use std::path::{Path, PathBuf};

fn corpus(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(name)
}

#[test]
fn every_fuzz_target_survives_its_corpus_and_mutations() {
    for (name, harness) in mesh_test::fuzz::TARGETS {
        let dir = corpus(name);
        let seeds = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .count();
        assert!(seeds > 0, "{name} has no seed inputs in {}", dir.display());
        // Slow harnesses (CSR signing, YAML) get fewer mutations per seed.
        let mutations = match *name {
            "csr" | "manifests" | "admission_review" => 400,
            _ => 5000,
        };
        let ran = mesh_test::fuzz::smoke(*harness, &dir, mutations, 13);
        eprintln!("{name}: {ran} inputs");
    }
}

/// Writes the binary seeds (a real ClientHello, real CSRs) into the corpus:
/// `cargo test -p mesh-test --test fuzz_smoke -- --ignored`.
#[test]
#[ignore = "regenerates committed seed files"]
fn write_binary_seeds() {
    let hello =
        mesh_test::identity::client_hello("web.shop.serviceaccount.identity.mesh.cluster.local");
    std::fs::write(corpus("client_hello").join("mesh"), &hello).expect("write");
    std::fs::write(corpus("detect").join("client_hello"), &hello).expect("write");
    let app = mesh_test::identity::client_hello("example.com");
    std::fs::write(corpus("client_hello").join("app"), &app).expect("write");
    let p256 = &rcgen::PKCS_ECDSA_P256_SHA256;
    let name = mesh_api::identity::dns_name("web", "shop");
    std::fs::write(
        corpus("csr").join("web"),
        mesh_test::identity::csr(&name, p256),
    )
    .expect("write");
    let other = mesh_api::identity::dns_name("admin", "mesh");
    std::fs::write(
        corpus("csr").join("other"),
        mesh_test::identity::csr(&other, p256),
    )
    .expect("write");
}
