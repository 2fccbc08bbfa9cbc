//! HTTP/1.1 requests as the scoring server and the gateway read them: heads (`parse_request`
//! through `read_head`), bodies by `Content-Length` or chunked coding (`read_body`), pipelined
//! messages on one connection, and the scoring server's route decision on each head.
//!
//! Input: one control byte, then the bytes a client sends. The control byte picks how many bytes
//! arrive per read (1-64), a small or large body limit, and whether the input is a whole
//! connection or a chunked body alone. Checked: nothing panics, and reading the same bytes in
//! small pieces gives exactly what reading them in large ones gives.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use sluice_fuzz::{Trickle, run};
use sluice_http1::{Framing, Head, parse_request, read_body, read_head};

/// Messages read per input at most; a few show that pipelining keeps the framing straight.
const MAX_MESSAGES: usize = 8;

fuzz_target!(|data: &[u8]| {
    let Some((&control, input)) = data.split_first() else { return };
    let step = usize::from(control & 0x3f) + 1;
    let limit = if control & 0x40 != 0 { 32 } else { 1 << 20 };
    let read = if control & 0x80 != 0 { chunked_body } else { connection };
    let whole = read(input, usize::MAX, limit);
    let pieces = read(input, step, limit);
    assert_eq!(whole, pieces, "reading {step} bytes at a time changed the outcome");
});

/// A chunked body on its own, as `read_body` gets it after a head that said `chunked`.
fn chunked_body(input: &[u8], step: usize, limit: usize) -> Vec<String> {
    let mut io = Trickle::new(input, step);
    let mut buf = BytesMut::new();
    let body = run(read_body(&mut io, &mut buf, Framing::Chunked, limit));
    if let Ok(body) = &body {
        assert!(body.len() <= limit && body.len() <= input.len());
    }
    vec![format!("{body:?}")]
}

/// Requests one after another on a connection, each head then its body, as the server loop reads
/// them; what each step gave, as text.
fn connection(input: &[u8], step: usize, limit: usize) -> Vec<String> {
    let mut io = Trickle::new(input, step);
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for _ in 0..MAX_MESSAGES {
        let head = match run(read_head(&mut io, &mut buf, parse_request)) {
            Ok(head) => head,
            Err(e) => {
                out.push(format!("head: {e:?}"));
                break;
            }
        };
        out.push(describe(&head));
        let path = head.target().split('?').next().unwrap_or_default();
        out.push(format!("route: {:?}", sluice_server::route(head.method(), path).map_err(|e| e.to_string())));
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

/// Everything a caller can read of a request head.
fn describe(head: &Head) -> String {
    let headers: Vec<_> = head.headers().map(|(n, v)| (n, v, head.is_hop_by_hop(n))).collect();
    assert_eq!(
        head.header("content-length"),
        head.headers().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).map(|(_, v)| v)
    );
    format!(
        "{} {} 1.{} {:?} keep_alive={} continue={} {:?}",
        head.method(),
        head.target(),
        head.minor_version,
        head.framing,
        head.keep_alive,
        head.expect_continue,
        headers
    )
}
