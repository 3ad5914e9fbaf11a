//! The controller program, built inside the test crate so the harness always runs the current code.
fn main() -> anyhow::Result<()> {
    outpost_controller::entry::main()
}
