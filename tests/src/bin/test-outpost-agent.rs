//! The agent program, built inside the test crate so the harness always runs the current code.
fn main() -> anyhow::Result<()> {
    outpost_agent::entry::main()
}
