//! nsbox: a native Linux sandbox. The library owns all logic; `main.rs` only dispatches to
//! [`cli::main`].
//!
//! The modules, from the edge down; each imports only from modules below it:
//!
//! - [`cli`]: flags → request; prints results and [`report::Failure`]s (message, hint, exit
//!   code from [`exit`]). [`doctor`]: `nsbox doctor`'s checks.
//! - [`build`], [`session`]: `nsbox build` and sessions, both built on a sandbox run.
//! - [`sandbox`]: one sandbox from clone to teardown (supervisor, setup child / init, their
//!   messages), applying the plans below in the order of `docs/setup-order.md`.
//! - [`rootfs`]: the root filesystem plan (pure) and its interpreter; [`cgroup`], [`net`],
//!   [`seccomp`], [`relay`]: limits, network, syscall filter, output.
//! - [`spec`]: the validated plan of one sandbox, from a [`profile`], the [`config`] and the
//!   command line; [`image`] and [`registry`]: the image store and pulls.
//! - Leaves: [`units`] (sizes, durations), [`ids`] (id ranges, fresh ids), [`exit`],
//!   [`fingerprint`], [`fault`] (the kill tests' phase hook), [`host`] (the mount table,
//!   read-only), and [`sys`], the only home of `unsafe`.

pub mod build;
pub mod cgroup;
pub mod cli;
pub mod config;
pub mod doctor;
pub mod exit;
pub mod fault;
pub mod fingerprint;
pub mod host;
pub mod idrange;
pub mod ids;
pub mod image;
pub mod net;
pub mod profile;
pub mod registry;
pub mod relay;
pub mod report;
pub mod rootfs;
pub mod runtime;
pub mod sandbox;
pub mod seccomp;
pub mod serve;
pub mod session;
pub mod snapshot;
pub mod spec;
pub mod sys;
pub mod units;
