//! `outpostctl`: see [`outpost_ctl`].

fn main() -> std::process::ExitCode {
    outpost_ctl::main()
}
