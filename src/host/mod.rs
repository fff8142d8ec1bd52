//! What nsbox knows about the host it runs on: mount table, kernel features. Read-only; takes
//! injected roots so unit tests run against fixtures.

pub mod doctor;
pub mod mountinfo;
pub mod path;
