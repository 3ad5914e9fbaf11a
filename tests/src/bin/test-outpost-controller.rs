//! The controller program, built inside the test crate so the harness always runs the current code. Fail points
//! are configured from `FAILPOINTS` (e.g. `store::submit=panic(disk on fire)`) — only here, never in the real binary.
fn main() {
    let scenario = fail::FailScenario::setup();
    let result = outpost_controller::entry::run_main();
    scenario.teardown();
    std::process::exit(result);
}
