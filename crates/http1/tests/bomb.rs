//! A decompression bomb costs at most about the limit in memory: 64 MiB of zeros, compressed to
//! about 64 KiB, refused at a 1 MiB limit while the most this process holds on top of the bomb
//! stays under 1.5 MiB plus the inflater's state. Its own test binary, so that the counting
//! allocator sees this test alone.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};

use flate2::Compression;
use sluice_http1::encoding::{Coding, DecodeError, decode};

/// The system allocator, counting the bytes live and the most ever live since [`reset_peak`].
struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: every call is passed on to `System` unchanged; only counters are added.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `alloc`'s contract, which `System.alloc` has too.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above with this `layout`.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// 64 MiB of zeros, compressed a mebibyte at a time (never held whole).
fn bomb(coding: Coding) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let write = |w: &mut dyn Write| {
        for _ in 0..64 {
            w.write_all(&zeros).expect("write");
        }
    };
    match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::best());
            write(&mut e);
            e.finish().expect("finish")
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(Vec::new(), Compression::best());
            write(&mut e);
            e.finish().expect("finish")
        }
    }
}

/// A gzip stream's last member with a small size in its trailer: a bomb that does not declare
/// its size where a decoder looks first.
fn disguised(mut bomb: Vec<u8>) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(b"{}").expect("write");
    bomb.extend(e.finish().expect("finish"));
    bomb
}

#[test]
fn a_bomb_is_refused_without_inflating_it() {
    const LIMIT: usize = 1 << 20;
    let cases = [
        ("gzip", Coding::Gzip, bomb(Coding::Gzip)),
        ("gzip, its size hidden", Coding::Gzip, disguised(bomb(Coding::Gzip))),
        ("deflate", Coding::Deflate, bomb(Coding::Deflate)),
    ];
    for (what, coding, bomb) in cases {
        assert!(bomb.len() < 100 * 1024, "{what}: {} bytes", bomb.len());
        let before = LIVE.load(Ordering::Relaxed);
        reset_peak();
        let result = decode(coding, &bomb, LIMIT);
        let peak = PEAK.load(Ordering::Relaxed) - before;
        assert!(matches!(result, Err(DecodeError::TooLarge { limit: LIMIT, .. })), "{what}: {result:?}");
        // The output buffer (at most the limit, and half of it again while it grows) and the
        // inflater's own state (its 32 KiB window and tables): nowhere near the bomb's 64 MiB.
        assert!(peak < LIMIT * 3 / 2 + 256 * 1024, "{what}: {peak} bytes at the peak");
        eprintln!("{what}: {} bytes refused at a peak of {peak} bytes", bomb.len());
    }
}
