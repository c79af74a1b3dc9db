//! `sqlx::migrate!` embeds `../migrations` when this crate compiles; without this, cargo would
//! not notice a new migration file and binaries would silently lack it.
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
