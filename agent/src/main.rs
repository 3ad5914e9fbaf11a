//! `outpost-agent`: see [`outpost_agent::entry`].

fn main() -> anyhow::Result<()> {
    outpost_agent::entry::main()
}
