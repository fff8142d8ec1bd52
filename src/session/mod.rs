//! Persistent sessions: a sandbox that stays up between commands, so the steps of an agent
//! pipeline (set up, implement, test, fix, push) share files and background processes.
//!
//! - [`state`]: the session's directory on the host (record, lock, socket, name);
//! - [`daemon`]: its supervisor, one small process per session, forked by `nsbox create`;
//! - [`client`]: what other nsbox commands use to run commands in it, stop it, read its stats;
//! - [`copy`]: copying files and trees in and out, resolved inside the sandbox's root;
//! - [`protocol`]: the messages between them;
//! - [`oneshot`]: the records that make running one-shot sandboxes visible and stoppable;
//! - [`journal`]: the host-wide journal of lifecycle events (`nsbox events`).
//!
//! There is no daemon for all sessions, and nothing survives a session's supervisor: its
//! death ends the sandbox, and `nsbox prune` removes what it could not.

pub mod client;
pub mod copy;
pub mod daemon;
pub mod journal;
pub mod oneshot;
pub mod protocol;
pub mod state;

use crate::sandbox::SandboxError;
pub use state::StateError;

/// Why a session operation failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    State(#[from] StateError),
    #[error("{0}: {1}")]
    Io(&'static str, std::io::Error),
    #[error("the session did not start ({phase}): {message}")]
    Start { phase: String, message: String },
    #[error("session {id} is not running: {why}")]
    NotRunning { id: String, why: String },
    #[error("the session refused: {0}")]
    Refused(String),
    #[error("unexpected answer from the session's supervisor: {0}")]
    Protocol(String),
    #[error("{0}")]
    Sandbox(#[from] SandboxError),
    #[error("{0}")]
    Copy(String),
}

impl SessionError {
    /// "setup" when nothing ran, "run" otherwise (for `--json` error events).
    pub fn phase(&self) -> &'static str {
        match self {
            SessionError::NotRunning { .. }
            | SessionError::Refused(_)
            | SessionError::Protocol(_) => "run",
            _ => "setup",
        }
    }
}
