//! End-to-end tests: the real `conduit` binary with a temporary CONDUIT_HOME.

mod config;

fn main() {}
