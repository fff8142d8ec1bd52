//! What nsbox reads about the host it runs on: the mount table (`/proc/self/mountinfo`), from
//! which the cgroup layout (v1, v2 or hybrid) is detected. Read-only; takes injected roots so
//! unit tests run against fixtures. The checks of `nsbox doctor`, which do create things, live
//! in [`crate::doctor`].

pub mod mountinfo;
pub mod path;
