//! Generates the benchmark messages from `proto/bench.proto` with prost-build;
//! protox parses the proto, so no `protoc` is needed.

use std::path::PathBuf;

fn main() {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let root = manifest.join("../proto");
    let file = root.join("bench.proto");
    println!("cargo:rerun-if-changed={}", file.display());
    // psrpc's options.proto, imported as Go protos do ("options.proto").
    let options = manifest.join("../psrpc-build/proto/psrpc");
    let fds = protox::compile([&file], [&root, &options]).expect("parse bench.proto");
    prost_build::Config::new()
        .bytes(["."])
        .enable_type_names()
        .compile_fds(fds)
        .expect("generate bench.proto");
}
