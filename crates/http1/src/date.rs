//! The `Date` header of Sluice's own responses, formatted once per second per thread.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

thread_local! {
    static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
}

/// Appends `date: {now}\r\n`, the time as an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`).
/// Allocates only when the second changes.
pub fn push_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|cached| {
        let mut cached = cached.borrow_mut();
        if cached.0 != second {
            *cached = (second, httpdate::fmt_http_date(now));
        }
        crate::push_header(out, "date", cached.1.as_bytes());
    })
}
