//! Memory hygiene for long-lived idle processes (a session's supervisor and init).

/// Drops this process's mappings of the nsbox code pages it has touched so far.
///
/// A session's supervisor is forked from the CLI that created it and then ran the whole
/// sandbox start-up: by the time it idles, about 2 MiB of nsbox's code are mapped into it,
/// nearly all of which it will never run again. `MADV_DONTNEED` on the (never written,
/// read-and-execute) code mapping unmaps those pages from this process only; they stay in the
/// page cache, shared with every other nsbox process, and the few the idle loop needs fault
/// back in from there on first use. Only the mapping holding this very function is touched,
/// and only if it is `r-xp` — never data, relocated read-only data or anything writable, whose
/// private copies `MADV_DONTNEED` would discard.
pub fn release_code_pages() {
    let here = release_code_pages as *const () as usize;
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return;
    };
    for line in maps.lines() {
        let mut fields = line.split_whitespace();
        let (Some(range), Some(perms)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Some((start, end)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end)) = (
            usize::from_str_radix(start, 16),
            usize::from_str_radix(end, 16),
        ) else {
            continue;
        };
        if perms != "r-xp" || !(start..end).contains(&here) {
            continue;
        }
        // SAFETY: [start, end) is a whole, page-aligned, read-and-execute private file mapping
        // of this program's code (it contains this function). It has no private (written)
        // pages, so MADV_DONTNEED only drops page-table entries; later accesses fault the
        // identical bytes back in from the file. No Rust reference points into it as data.
        let _ =
            unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED) };
        return;
    }
}
