//! `outpost-controller`: see [`outpost_controller::entry`].

fn main() {
    std::process::exit(outpost_controller::entry::run_main());
}
