//! The layer unpacker's path handling: any archive (tar, gzip or zstd) unpacked into an empty
//! directory writes nothing outside it — not through `..`, absolute names, symlinks or hard
//! links planted by earlier entries, whiteouts, or long names — and never panics. Runs as root
//! (ownership is shifted as for a real layer) in a private scratch directory per input.
#![no_main]

use std::os::fd::AsFd;
use std::path::Path;

use libfuzzer_sys::fuzz_target;
use nsbox::image::unpack::{unpack, IdShift, Limits};

/// Names in `dir` (one level).
fn names(dir: &Path) -> Vec<std::ffi::OsString> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    v.sort();
    v
}

fuzz_target!(|data: &[u8]| {
    // tmpfs when there is one: fast, and what is written goes with the scratch directory.
    let base = if Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
    let scratch = tempfile::Builder::new()
        .prefix("nsbox-fuzz-unpack-")
        .tempdir_in(base)
        .expect("a scratch directory");
    let layer = scratch.path().join("layer");
    std::fs::create_dir(&layer).expect("the layer directory");
    std::fs::write(scratch.path().join("sentinel"), b"outside").expect("a sentinel");
    let before = names(scratch.path());
    let dir = std::fs::File::open(&layer).expect("open the layer directory");
    let limits = Limits {
        max_bytes: 1 << 20,
        max_entries: 1000,
    };
    let _ = unpack(data, dir.as_fd(), IdShift { base: 0 }, limits);
    assert_eq!(names(scratch.path()), before, "an entry landed outside the layer");
    assert_eq!(
        std::fs::read(scratch.path().join("sentinel")).ok().as_deref(),
        Some(&b"outside"[..]),
        "the file beside the layer changed"
    );
});
