//! placeholder, replaced by the ipi suite
fn main() {}
