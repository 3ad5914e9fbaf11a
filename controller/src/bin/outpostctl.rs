//! `outpostctl`: see [`outpost_controller::ctl`].

fn main() -> std::process::ExitCode {
    outpost_controller::ctl::main()
}
