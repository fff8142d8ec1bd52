//! nsbox: a native Linux sandbox. The library owns all logic; `main.rs` only dispatches to
//! [`cli::main`].

pub mod build;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod exit;
pub mod fingerprint;
pub mod host;
pub mod image;
pub mod net;
pub mod profile;
pub mod registry;
pub mod relay;
pub mod rootfs;
pub mod sandbox;
pub mod seccomp;
pub mod serve;
pub mod session;
pub mod spec;
pub mod sys;
