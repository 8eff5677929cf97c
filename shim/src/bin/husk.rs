//! `husk`: the user CLI (`husk check`, `husk ps`, `husk logs`).
fn main() {}
