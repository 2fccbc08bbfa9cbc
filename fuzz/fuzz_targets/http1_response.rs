//! HTTP/1.1 responses as the gateway reads a replica's answers: heads (`parse_response` through
//! `read_head`), bodies by `Content-Length`, chunked coding or end of stream, after GET or HEAD,
//! several answers on one pooled connection.
//!
//! Input: one control byte, then the bytes a replica sends. The control byte picks how many bytes
//! arrive per read (1-64), a small or large body limit and whether the request was HEAD. Checked:
//! nothing panics, and reading the same bytes in small pieces gives exactly what reading them in
//! large ones gives.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{Trickle, run};
use sluice_http1::{Head, parse_response, read_body, read_head};

/// Responses read per input at most.
const MAX_MESSAGES: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else { return };
    let step = usize::from(control & 0x3f) + 1;
    let limit = if control & 0x40 != 0 { 32 } else { 1 << 20 };
    let to_head = control & 0x80 != 0;
    let whole = connection(input, usize::MAX, limit, to_head);
    let pieces = connection(input, step, limit, to_head);
    assert_eq!(whole, pieces, "reading {step} bytes at a time changed the outcome");
});

/// Responses one after another on a pooled connection, each head then its body; what each step
/// gave, as text.
fn connection(input: &[u8], step: usize, limit: usize, to_head: bool) -> Vec<String> {
    let mut io = Trickle::new(input, step);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let parse = |buf: &mut BytesMut| parse_response(buf, to_head);
    for _ in 0..MAX_MESSAGES {
        let head = match run(read_head(&mut io, &mut buf, parse)) {
            Ok(head) => head,
            Err(e) => {
                out.push(format!("head: {e:?}"));
                break;
            }
        };
        out.push(describe(&head));
        match run(read_body(&mut io, &mut buf, head.framing, limit)) {
            Ok(body) => {
                assert!(body.len() <= limit);
                out.push(format!("body: {body:?}"));
            }
            Err(e) => {
                out.push(format!("body: {e:?}"));
                break;
            }
        }
        if !head.keep_alive {
            break;
        }
    }
    out
}

/// Everything a caller can read of a response head.
fn describe(head: &Head) -> String {
    let headers: Vec<_> = head.headers().map(|(n, v)| (n, v, head.is_hop_by_hop(n))).collect();
    // `method()` of a response is its reason phrase (empty when absent or not ASCII).
    format!(
        "{} {:?} 1.{} {:?} keep_alive={} {:?}",
        head.status,
        head.method(),
        head.minor_version,
        head.framing,
        head.keep_alive,
        headers
    )
}
