//! New migration files are only embedded by `sqlx::migrate!` when this build script tells cargo to look again.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
