//! outpostctl, built inside the test crate so the harness always runs the current code.
fn main() -> std::process::ExitCode {
    outpost_ctl::main()
}
