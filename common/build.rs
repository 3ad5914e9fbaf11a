//! Compiles `proto/outpost/v1/*.proto` with protox (no system protoc) and keeps the descriptor set for reflection.
use prost::Message;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let files = ["outpost/v1/agent.proto", "outpost/v1/admin.proto", "outpost/v1/join.proto"];
    let fds = protox::compile(files, ["../proto"])?;
    std::fs::write(out.join("outpost_descriptor.bin"), fds.encode_to_vec())?;
    // No generated `XClient::connect` constructor: it would clash with the `Connect` RPC. Clients use `new(channel)`.
    tonic_prost_build::configure().build_transport(false).compile_fds(fds)?;
    println!("cargo:rerun-if-changed=../proto");
    Ok(())
}
