//! Generates the agent API's Rust types and ttrpc stubs from `protos/agent.proto` into
//! OUT_DIR (pure-Rust parser: no protoc needed).
use ttrpc_codegen::{Codegen, Customize, ProtobufCustomize};

fn main() {
    let out_dir =
        std::path::PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR is set by cargo"));
    println!("cargo:rerun-if-changed=protos/agent.proto");
    Codegen::new()
        .out_dir(&out_dir)
        .input("protos/agent.proto")
        .include("protos")
        .rust_protobuf()
        .customize(Customize {
            async_all: true,
            ..Default::default()
        })
        .rust_protobuf_customize(ProtobufCustomize::default().gen_mod_rs(false))
        .run()
        .expect("generating the agent API from protos/agent.proto failed");

    // The generated files start with inner attributes and docs (`#![allow(..)]`, `//!`), which `include!`
    // inside a `mod {}` does not accept; lib.rs sets the same allows on the module.
    for name in ["agent.rs", "agent_ttrpc.rs"] {
        let path = out_dir.join(name);
        let text = std::fs::read_to_string(&path).expect("generated file is readable");
        let kept: String = text
            .lines()
            .filter(|l| !(l.trim_start().starts_with("#![") || l.trim_start().starts_with("//!")))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(&path, kept).expect("generated file is writable");
    }
}
