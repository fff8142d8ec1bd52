//! The binary's global allocator: small allocations come from one fixed arena until it is
//! used up, everything else from the libc's `malloc`.
//!
//! Why our own: nsbox links musl (see .cargo/config.toml), whose allocator maps and unmaps a
//! few pages for each new size class and gives them back as soon as they empty: about a
//! hundred mmap/munmap calls, with their page faults and TLB flushes, while a one-shot parses
//! its arguments and builds its plan, about 0.1 ms of a cold start. General-purpose
//! allocators made for speed (mimalloc, measured) start up dearer than that. A cold start
//! allocates little and briefly, so a bump arena serves it: one atomic add per allocation,
//! no system call, and the last allocation given back is reused (the common allocate, use,
//! free pattern). Long-lived processes (a session's supervisor, the server) run out of it
//! early in their life and go on with `malloc`; what they leave in the arena is at most its
//! size, once.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// The arena's size: a one-shot's start uses about 250 KiB (550 KiB with a filtered network);
/// a long-lived process keeps at most this much it no longer needs.
const SIZE: usize = 512 << 10;
/// Larger allocations (I/O buffers, images' data) go to `malloc` at once.
const LARGEST: usize = 16 << 10;

#[repr(C, align(4096))]
struct Bytes(UnsafeCell<[u8; SIZE]>);

// SAFETY: disjoint ranges of the bytes are handed out by an atomic bump (below); no two
// allocations overlap, so no byte is shared between threads without the allocation's owner
// passing it on.
unsafe impl Sync for Bytes {}

static BYTES: Bytes = Bytes(UnsafeCell::new([0; SIZE]));
/// Offset of the first free byte.
static NEXT: AtomicUsize = AtomicUsize::new(0);

pub struct Arena;

fn base() -> usize {
    BYTES.0.get() as usize
}

fn owns(ptr: *mut u8) -> bool {
    (base()..base() + SIZE).contains(&(ptr as usize))
}

impl Arena {
    /// Bump-allocates `layout` from the arena, or None when it does not fit.
    fn bump(layout: Layout) -> Option<*mut u8> {
        if layout.size() > LARGEST {
            return None;
        }
        let mut next = NEXT.load(Ordering::Relaxed);
        loop {
            let start = (base() + next).next_multiple_of(layout.align()) - base();
            let end = start.checked_add(layout.size())?;
            if end > SIZE {
                return None;
            }
            match NEXT.compare_exchange_weak(next, end, Ordering::Relaxed, Ordering::Relaxed) {
                Ok(_) => return Some((base() + start) as *mut u8),
                Err(now) => next = now,
            }
        }
    }
}

// SAFETY: every pointer returned is either a range of the arena no other live allocation
// holds (the bump above, or the roll-back below, which only moves the end back over the
// allocation being freed) or the System allocator's, and each kind is freed and resized by
// its own allocator (`owns` tells them apart).
unsafe impl GlobalAlloc for Arena {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        match Self::bump(layout) {
            Some(ptr) => ptr,
            // SAFETY: the caller's layout contract is passed on unchanged.
            None => unsafe { System.alloc(layout) },
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if owns(ptr) {
            // The most recent allocation gives its bytes back; any other stays used.
            let start = ptr as usize - base();
            let _ = NEXT.compare_exchange(
                start + layout.size(),
                start,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
        } else {
            // SAFETY: `ptr` came from System with this layout (it is not the arena's).
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !owns(ptr) {
            // SAFETY: `ptr` came from System with this layout; the caller's contract holds.
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        let start = ptr as usize - base();
        // The most recent allocation grows or shrinks in place while it fits.
        if new_size <= LARGEST && start + new_size <= SIZE {
            let end = start + layout.size();
            if NEXT
                .compare_exchange(end, start + new_size, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            {
                return ptr;
            }
        }
        if new_size <= layout.size() {
            return ptr;
        }
        // SAFETY: the caller guarantees `new_size` with the old alignment is a valid layout.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: a valid non-zero layout (new_size > old size).
        let new = unsafe { self.alloc(new_layout) };
        if !new.is_null() {
            // SAFETY: both ranges are valid for the old size and do not overlap (`new` is a
            // fresh allocation).
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new, layout.size());
                self.dealloc(ptr, layout);
            }
        }
        new
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test: the arena is one static, and these checks depend on its state (nothing else
    // in the unit tests uses it: their allocator is the default one).
    #[test]
    fn bumps_reuses_the_last_freed_grows_in_place_and_falls_back() {
        let a = Arena;
        let small = Layout::from_size_align(24, 8).unwrap();
        // SAFETY: valid non-zero layouts; every pointer is freed with the layout it had.
        unsafe {
            let p = a.alloc(small);
            assert!(owns(p));
            assert_eq!(p as usize % 8, 0);
            p.write_bytes(0xaa, 24);
            // The last allocation's bytes are given back and handed out again.
            a.dealloc(p, small);
            let q = a.alloc(small);
            assert_eq!(p, q);
            // An earlier allocation freed out of order is not reused.
            let r = a.alloc(small);
            a.dealloc(q, small);
            let s = a.alloc(small);
            assert_ne!(s, q);
            // The last one grows in place and keeps its bytes.
            s.write_bytes(7, 24);
            let grown = a.realloc(s, small, 4000);
            assert_eq!(grown, s);
            assert_eq!(*grown.add(23), 7);
            // One that is not last moves, keeping its bytes.
            r.write_bytes(9, 24);
            let moved = a.realloc(r, small, 100);
            assert_ne!(moved, r);
            assert!(owns(moved));
            assert_eq!(*moved.add(23), 9);
            // Strict alignment holds.
            let page = Layout::from_size_align(64, 4096).unwrap();
            let aligned = a.alloc(page);
            assert_eq!(aligned as usize % 4096, 0);
            // Large allocations, and an arena allocation grown past the limit, are malloc's.
            let large = Layout::from_size_align(LARGEST + 1, 8).unwrap();
            let big = a.alloc(large);
            assert!(!big.is_null() && !owns(big));
            a.dealloc(big, large);
            let moved_out = a.realloc(moved, Layout::from_size_align(100, 8).unwrap(), 1 << 20);
            assert!(!owns(moved_out));
            assert_eq!(*moved_out.add(23), 9);
            a.dealloc(moved_out, Layout::from_size_align(1 << 20, 8).unwrap());
            a.dealloc(aligned, page);
            a.dealloc(grown, Layout::from_size_align(4000, 8).unwrap());
            // A full arena hands every allocation to malloc.
            let saved = NEXT.swap(SIZE - 8, Ordering::Relaxed);
            let spilled = a.alloc(small);
            assert!(!spilled.is_null() && !owns(spilled));
            a.dealloc(spilled, small);
            NEXT.store(saved, Ordering::Relaxed);
        }
    }
}
