//! Relaying the workload's output to the caller: secret masking, the output cap, the `--json`
//! event encoding and non-blocking writes. Pure data handling; the supervisor's event loop
//! owns the descriptors and calls in here.

pub mod events;
pub mod log;
pub mod mask;
pub mod result;
pub mod sink;
pub mod stream;

pub use events::{Chunk, Event, Usage, Utf8Chunker};
pub use mask::Masker;
pub use sink::Sink;
