//! End-to-end tests of the real `conduit` binary: temporary CONDUIT_HOME, ports from
//! the OS, processes stopped through their handles, waits bounded by deadlines.
#![allow(
    missing_docs,
    unreachable_pub,
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used
)]

mod allow_from;
mod authorized;
mod backpressure;
mod balance;
mod chaos;
mod config;
mod deploy;
mod descriptors;
mod faults;
mod harness;
mod hostile;
mod http;
mod idle;
mod ipv6;
mod lifecycle;
mod limits;
mod manage;
mod names;
mod openapi;
mod ops;
mod output;
mod performance;
mod plain;
mod procfs;
mod proxy_protocol;
mod real_clients;
mod refusals;
mod rotation;
mod routers;
mod service;
mod soak;
mod sources;
mod stopping;
mod suites;
mod tune;
mod tunnel;
mod udp;
mod up_down;
mod users;
