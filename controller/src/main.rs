//! `outpost-controller`: see [`outpost_controller::entry`].

fn main() -> anyhow::Result<()> {
    outpost_controller::entry::main()
}
