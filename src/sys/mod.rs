//! The only home of `unsafe` in nsbox: thin, documented wrappers around the system calls that
//! rustix does not cover (clone3, seccomp, a few ioctls and prctls). Every block carries a
//! `// SAFETY:` line. Callers elsewhere in the crate stay in safe Rust.
#![allow(unsafe_code)]

pub mod seccomp;
