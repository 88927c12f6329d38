//! End-to-end tests of the real `conduit` binary: temporary CONDUIT_HOME, ports from
//! the OS, processes stopped through their handles, waits bounded by deadlines.
#![allow(
    missing_docs,
    unreachable_pub,
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod config;
mod harness;
mod manage;
mod plain;
mod real_clients;
mod refusals;
mod service;
mod sources;
mod tune;
mod tunnel;
mod up_down;
