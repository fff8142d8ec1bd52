//! nsbox's integration tests: the real binary, as root, in real namespaces. One test binary;
//! modules group the properties. Root-only tests say SKIP when not root, and fail instead when
//! NSBOX_TEST_REQUIRE_ROOT=1.
#![allow(clippy::unwrap_used)]

mod networld;
mod oci_build;
mod support;

mod bad_input;
mod bombs;
mod build;
mod cli;
mod config;
mod credentials;
mod credentials_http;
mod e2b;
mod egress;
mod exec_basics;
mod exit_codes;
mod faults;
mod files;
mod hostside;
mod images;
mod isolation;
mod lifecycle;
mod lifetimes;
mod limits;
mod load;
mod registry;
mod registry_support;
mod remote;
mod results;
mod runtime;
mod runtime_diff;
mod serve;
mod sessions;
mod snapshots;
mod store_faults;
mod watching;
