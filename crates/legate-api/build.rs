//! Finds the compiled descriptor set that ships inside the `envoy-types` package, so that the
//! loader can reflect over exactly the protos the Rust types were generated from. The protos
//! stay in the dependency; nothing of them is copied into this repository.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("Cargo.toml");
    let output = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--manifest-path"])
        .arg(&manifest)
        .output()
        .expect("run `cargo metadata`");
    assert!(
        output.status.success(),
        "cargo metadata failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: serde_json::Value =
        serde_json::from_slice(&output.stdout).expect("parse `cargo metadata` output");
    let package = metadata["packages"]
        .as_array()
        .and_then(|packages| packages.iter().find(|p| p["name"] == "envoy-types"))
        .expect("envoy-types in the dependency graph");
    let manifest_path = PathBuf::from(package["manifest_path"].as_str().unwrap());
    let descriptors = manifest_path
        .parent()
        .unwrap()
        .join("src/generated/types.bin");
    assert!(
        descriptors.is_file(),
        "{} is missing",
        descriptors.display()
    );
    println!("cargo:rerun-if-changed={}", descriptors.display());
    println!(
        "cargo:rustc-env=LEGATE_ENVOY_DESCRIPTORS={}",
        descriptors.display()
    );
}
