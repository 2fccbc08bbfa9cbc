//! Content codings of message bodies (RFC 9110 §8.4): which coding a message says it carries,
//! decoding a body within a limit on its decoded size, negotiating a response's coding from
//! `Accept-Encoding`, and compressing a body.
//!
//! Only `gzip` (with its alias `x-gzip`) and `deflate` are supported, the two every HTTP client
//! library has (Triton's and KServe's clients among them). `deflate` is the zlib format (RFC 1950)
//! as RFC 9110 says; a raw deflate stream, which some clients send under that name, is detected
//! by its missing zlib header and accepted too.
//!
//! Decoding is bounded by the decoded size, not the encoded one: a stream stops being inflated as
//! soon as its output would pass the limit, and the output buffer never grows past the limit, so
//! a small "bomb" (64 MiB of zeros compress to 64 KiB) costs about the limit in memory (for a
//! moment up to 1.5 times it while the buffer grows, twice for a gzip stream whose trailer
//! understates its size) and the time to inflate that much.

use flate2::{Compression, Decompress, FlushDecompress, Status};

use crate::{Head, tokens};

/// The content codings Sluice decodes and produces, as a 415 answer's `Accept-Encoding` lists them.
pub const SUPPORTED: &str = "gzip, deflate";

/// Bodies shorter than this are sent as they are, whatever the caller accepts. An answer this
/// small fits with its head in one TCP segment (1460 bytes of payload on Ethernet) already, so
/// compressing it saves no packet and no round trip, only adds the CPU and the gzip framing (18
/// bytes); from about one segment on, every 1.4 KiB saved is a segment less on the wire.
pub const MIN_COMPRESSED_BODY: usize = 1024;

/// The compression level of answers. Tensor JSON is mostly digits, which only dynamic Huffman
/// codes pack well: zlib-rs's level 1 uses fixed codes and left a 64x10 FP32 answer at 68 % of its
/// size, level 2 at 43 % and level 6 (the default) at 42 %, level 2 in about half the time of
/// level 6 (benches/RESULTS.md). An answer's compression is latency its caller waits for.
const LEVEL: u32 = 2;

/// A supported content coding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
}

impl Coding {
    /// Its name in `Content-Encoding`.
    pub fn as_str(self) -> &'static str {
        match self {
            Coding::Gzip => "gzip",
            Coding::Deflate => "deflate",
        }
    }

    fn parse(token: &[u8]) -> Option<Coding> {
        if token.eq_ignore_ascii_case(b"gzip") || token.eq_ignore_ascii_case(b"x-gzip") {
            Some(Coding::Gzip)
        } else if token.eq_ignore_ascii_case(b"deflate") {
            Some(Coding::Deflate)
        } else {
            None
        }
    }
}

/// Why a body could not be decoded. Each says what the caller should change.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// A coding Sluice does not decode, or more than one coding stacked: 415.
    #[error("unsupported Content-Encoding '{0}': supported are gzip and deflate (or identity), one at a time")]
    Unsupported(String),
    /// The decoded body passed the limit: 413.
    #[error("request body is larger than the limit of {limit} bytes once decoded from {coding}")]
    TooLarge { coding: &'static str, limit: usize },
    /// Not a valid stream of its coding: 400.
    #[error("cannot decode the {coding} request body: {detail}")]
    Corrupt { coding: &'static str, detail: String },
}

/// The content coding `head` declares: `None` without `Content-Encoding` (or with only
/// `identity`). Every `Content-Encoding` line counts, as a list. Scans the headers once and
/// allocates nothing unless the coding is refused.
pub fn content_coding(head: &Head) -> Result<Option<Coding>, DecodeError> {
    let mut found = None;
    for (name, value) in head.raw_headers() {
        if !name.eq_ignore_ascii_case(b"content-encoding") {
            continue;
        }
        for token in tokens(value) {
            if token.eq_ignore_ascii_case(b"identity") {
                continue;
            }
            match (Coding::parse(token), found) {
                (Some(coding), None) => found = Some(coding),
                _ => return Err(DecodeError::Unsupported(String::from_utf8_lossy(value).into_owned())),
            }
        }
    }
    Ok(found)
}

/// Decodes `body`, of coding `coding`, refusing it once it decodes to more than `limit` bytes.
/// An empty body is empty in any coding.
pub fn decode(coding: Coding, body: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    if body.is_empty() {
        return Ok(Vec::new());
    }
    match coding {
        Coding::Gzip => inflate(Format::Gzip, body, limit),
        Coding::Deflate if zlib_header(body) => match inflate(Format::Zlib, body, limit) {
            // A raw stream whose first bytes happen to pass the header check (a stored block can)
            // fails as zlib at once: it gets its chance as raw deflate.
            Err(DecodeError::Corrupt { .. }) if let Ok(raw) = inflate(Format::Raw, body, limit) => Ok(raw),
            result => result,
        },
        Coding::Deflate => inflate(Format::Raw, body, limit),
    }
}

/// Whether `body` starts with a zlib header (RFC 1950 §2.2): compression method 8 (deflate), a
/// window of at most 32 KiB, and the two bytes a multiple of 31.
fn zlib_header(body: &[u8]) -> bool {
    match body {
        [cmf, flg, ..] => cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(*cmf) << 8 | u16::from(*flg)) % 31 == 0,
        _ => false,
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Format {
    Gzip,
    Zlib,
    Raw,
}

impl Format {
    fn decompressor(self) -> Decompress {
        match self {
            Format::Gzip => Decompress::new_gzip(15),
            Format::Zlib => Decompress::new(true),
            Format::Raw => Decompress::new(false),
        }
    }

    fn coding(self) -> &'static str {
        match self {
            Format::Gzip => "gzip",
            Format::Zlib | Format::Raw => "deflate",
        }
    }
}

/// Deflate's best ratio is about 1032 to 1: a gzip trailer that claims more than this per input
/// byte is not believed for sizing a buffer.
const MAX_RATIO: usize = 1032;

/// The next capacity of an output buffer of `capacity` bytes: twice as much while that stays
/// within half the limit, else the limit. A buffer is copied as it grows, so the old one and the
/// new one are both held for a moment: at most half the limit and the limit.
fn grown(capacity: usize, limit: usize) -> usize {
    if capacity.saturating_mul(4) > limit { limit } else { capacity * 2 }
}

/// Inflates `input` into a buffer that grows (by doubling, from a guess) up to `limit` bytes and
/// no further: once it is full, the stream is run into a one-byte probe, and a byte there means
/// the body is too large. The stream must end with its end marker (and for gzip, its CRC and
/// length) and nothing may follow it, except further gzip members (RFC 1952 §2.2).
fn inflate(format: Format, mut input: &[u8], limit: usize) -> Result<Vec<u8>, DecodeError> {
    let coding = format.coding();
    let too_large = || DecodeError::TooLarge { coding, limit };
    let corrupt = |detail: String| DecodeError::Corrupt { coding, detail };
    // A gzip stream ends with its last member's size (mod 2^32): when it is within the limit and
    // believable, the buffer is sized once. It is only a hint (a corrupt or hostile stream may
    // say anything), never a reason to refuse. Otherwise a guess: JSON tensors of random-looking
    // floats compress about 2 times, repeated or sparse data far more.
    let declared = match (format, input.last_chunk::<4>()) {
        (Format::Gzip, Some(size)) => Some(u32::from_le_bytes(*size) as usize),
        _ => None,
    };
    let initial = match declared {
        Some(n) if n <= limit && n <= input.len().saturating_mul(MAX_RATIO) => n.max(64),
        _ => grown(input.len().saturating_mul(4).max(4096) / 2, limit),
    };
    let mut out = Vec::with_capacity(initial);
    let mut d = format.decompressor();
    loop {
        if out.len() == out.capacity() && out.len() < limit {
            out.reserve_exact(grown(out.capacity(), limit) - out.len());
        }
        let full = out.len() >= limit;
        let (in_before, out_before) = (d.total_in(), d.total_out());
        let status = if full {
            d.decompress(input, &mut [0u8; 1], FlushDecompress::None)
        } else {
            d.decompress_vec(input, &mut out, FlushDecompress::None)
        }
        .map_err(|e| corrupt(e.to_string().replace("deflate decompression error: ", "")))?;
        if (full && d.total_out() > out_before) || out.len() > limit {
            return Err(too_large());
        }
        let used = usize::try_from(d.total_in() - in_before).unwrap_or(input.len());
        input = &input[used..];
        match status {
            Status::StreamEnd if input.is_empty() => return Ok(out),
            Status::StreamEnd if format == Format::Gzip => d = format.decompressor(),
            Status::StreamEnd => {
                return Err(corrupt(format!("{} bytes follow the end of the compressed stream", input.len())));
            }
            // There was room for output (the buffer's spare capacity, or the probe), so a call
            // that neither read nor wrote has run out of input before the end of the stream.
            Status::Ok | Status::BufError if used == 0 && d.total_out() == out_before => {
                return Err(corrupt("the compressed stream is truncated".into()));
            }
            Status::Ok | Status::BufError => {}
        }
    }
}

/// A response's `head` as it reads once its body was decoded: without `Content-Encoding`, with
/// the `Content-Length` of the `decoded_len` bytes; for a proxy that decodes an answer whose
/// coding its caller did not accept.
pub fn decoded_response_head(head: &Head, decoded_len: usize) -> Result<Head, crate::Error> {
    const DROPPED: [&str; 3] = ["content-encoding", "content-length", "transfer-encoding"];
    let mut out = Vec::with_capacity(head.bytes.len() + 32);
    out.extend_from_slice(if head.minor_version == 0 { b"HTTP/1.0 " } else { b"HTTP/1.1 " });
    out.extend_from_slice(itoa::Buffer::new().format(head.status).as_bytes());
    out.push(b' ');
    out.extend_from_slice(&head.bytes[head.first.clone()]);
    out.extend_from_slice(b"\r\n");
    for (name, value) in head.headers() {
        if !DROPPED.iter().any(|d| d.eq_ignore_ascii_case(name)) {
            crate::push_header(&mut out, name, value);
        }
    }
    crate::push_content_length(&mut out, decoded_len);
    out.extend_from_slice(b"\r\n");
    crate::parse_response(&mut bytes::BytesMut::from(&out[..]), false)?.ok_or(crate::Error::Incomplete)
}

/// The coding of an answer to a caller that sent `accept_encoding` (the `Accept-Encoding` value;
/// `None` when it sent none, which gets identity): the supported coding with the highest weight
/// (q-value) above zero, `gzip` on a tie, unless the caller weighs `identity` higher. `*` stands
/// for every coding the caller does not name.
pub fn negotiate(accept_encoding: Option<&[u8]>) -> Option<Coding> {
    let accept = accept_encoding?;
    let gzip = weight(accept, b"gzip").unwrap_or(0);
    let deflate = weight(accept, b"deflate").unwrap_or(0);
    let (coding, best) = if gzip >= deflate { (Coding::Gzip, gzip) } else { (Coding::Deflate, deflate) };
    // Identity unnamed (and no `*`) is acceptable but not preferred: a caller that lists codings
    // asks for them.
    let identity = weight(accept, b"identity").unwrap_or(0);
    (best > 0 && best >= identity).then_some(coding)
}

/// Whether a caller that sent `accept_encoding` takes an answer whose `Content-Encoding` is
/// `content_encoding`: it gives every coding there (by name, or through `*`) a weight above zero.
/// A caller that sent no `Accept-Encoding` takes identity only (RFC 9110 would allow any coding;
/// Sluice never assumes a client decodes what it did not ask for).
pub fn accepts(accept_encoding: Option<&[u8]>, content_encoding: &[u8]) -> bool {
    let mut codings = tokens(content_encoding).filter(|t| !t.eq_ignore_ascii_case(b"identity"));
    match accept_encoding {
        Some(accept) => codings.all(|c| weight(accept, c).is_some_and(|w| w > 0)),
        None => codings.next().is_none(),
    }
}

/// The weight, in thousandths, that an `Accept-Encoding` value gives `coding`: its own (the
/// highest if named twice), else that of `*`; `None` when neither is named. An item whose weight
/// is malformed is dropped rather than guessed at.
fn weight(accept: &[u8], coding: &[u8]) -> Option<u16> {
    let (mut own, mut star) = (None::<u16>, None::<u16>);
    for item in tokens(accept) {
        let mut parts = item.split(|&b| b == b';');
        let name = parts.next().unwrap_or_default().trim_ascii();
        let mut q = Some(1000);
        for param in parts.map(<[u8]>::trim_ascii) {
            if let Some(v) = param.strip_prefix(b"q=").or_else(|| param.strip_prefix(b"Q=")) {
                q = qvalue(v);
            }
        }
        let Some(q) = q else { continue };
        let slot = if same_coding(name, coding) {
            &mut own
        } else if name == b"*" {
            &mut star
        } else {
            continue;
        };
        *slot = Some(slot.map_or(q, |old| old.max(q)));
    }
    own.or(star)
}

/// Whether two coding names mean the same coding (`x-gzip` is `gzip`).
fn same_coding(a: &[u8], b: &[u8]) -> bool {
    a.eq_ignore_ascii_case(b) || matches!((Coding::parse(a), Coding::parse(b)), (Some(x), Some(y)) if x == y)
}

/// RFC 9110 §12.4.2: `0[.ddd]` or `1[.000]`, in thousandths.
fn qvalue(v: &[u8]) -> Option<u16> {
    let (int, frac) = match v.split_first()? {
        (b'0', rest) => (0u16, rest),
        (b'1', rest) => (1000u16, rest),
        _ => return None,
    };
    let frac = match frac {
        [] => &[][..],
        [b'.', digits @ ..] if digits.len() <= 3 && digits.iter().all(u8::is_ascii_digit) => digits,
        _ => return None,
    };
    let mut thousandths = 0u16;
    for (i, d) in frac.iter().enumerate() {
        thousandths += u16::from(d - b'0') * [100, 10, 1][i];
    }
    (int + thousandths <= 1000).then_some(int + thousandths)
}

/// `body` compressed in `coding`.
pub fn encode(coding: Coding, body: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let out = Vec::with_capacity(body.len() / 4 + 64);
    let level = Compression::new(LEVEL);
    let written = match coding {
        Coding::Gzip => {
            let mut e = flate2::write::GzEncoder::new(out, level);
            e.write_all(body).and_then(|()| e.finish())
        }
        Coding::Deflate => {
            let mut e = flate2::write::ZlibEncoder::new(out, level);
            e.write_all(body).and_then(|()| e.finish())
        }
    };
    written.expect("compressing into a Vec cannot fail; this is a bug")
}

/// What to send for an answer of `body` to a caller that sent `accept_encoding`: the compressed
/// body and its coding, or `None` to send `body` as it is (the caller accepts no supported
/// coding, the body is shorter than [`MIN_COMPRESSED_BODY`], or compressing did not shrink it).
/// Costs one comparison when the caller sent no `Accept-Encoding`.
pub fn compress_for(accept_encoding: Option<&[u8]>, body: &[u8]) -> Option<(Coding, Vec<u8>)> {
    if body.len() < MIN_COMPRESSED_BODY {
        return None;
    }
    let coding = negotiate(accept_encoding)?;
    let compressed = encode(coding, body);
    (compressed.len() < body.len()).then_some((coding, compressed))
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use bytes::BytesMut;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};

    use super::*;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = GzEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    fn zlib(data: &[u8]) -> Vec<u8> {
        let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    fn raw_deflate(data: &[u8], level: u32) -> Vec<u8> {
        let mut e = DeflateEncoder::new(Vec::new(), Compression::new(level));
        e.write_all(data).expect("write");
        e.finish().expect("finish")
    }

    /// Tensor-like JSON: what request and answer bodies are.
    fn json_body(values: usize) -> Vec<u8> {
        let data: Vec<String> = (0..values).map(|i| format!("{:.6}", ((i * 7919) % 1_000_003) as f64 / 1e6)).collect();
        format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,{values}],"datatype":"FP32","data":[{}]}}]}}"#,
            data.join(",")
        )
        .into_bytes()
    }

    fn head(headers: &str) -> Head {
        let mut buf = BytesMut::from(format!("POST /score HTTP/1.1\r\n{headers}\r\n").as_bytes());
        crate::parse_request(&mut buf).expect("parses").expect("whole")
    }

    fn corrupt(result: Result<Vec<u8>, DecodeError>) -> String {
        match result {
            Err(DecodeError::Corrupt { detail, .. }) => detail,
            other => panic!("expected a corrupt stream, got {other:?}"),
        }
    }

    #[test]
    fn gzip_and_both_deflates_decode() {
        let body = json_body(2000);
        assert_eq!(decode(Coding::Gzip, &gzip(&body), body.len()).expect("gzip"), body);
        assert_eq!(decode(Coding::Deflate, &zlib(&body), body.len()).expect("zlib"), body);
        // Raw deflate, as some clients send under `deflate`, compressed and stored (level 0).
        for level in [6, 0] {
            let raw = raw_deflate(&body, level);
            assert!(!zlib_header(&raw) || level == 0, "a compressed raw stream is told apart by its header");
            assert_eq!(decode(Coding::Deflate, &raw, body.len()).expect("raw deflate"), body, "level {level}");
        }
        // Concatenated gzip members are one body (RFC 1952 §2.2), as `gzip -d` reads them.
        let mut two = gzip(b"{\"data\": ");
        two.extend(gzip(b"[1, 2]}"));
        assert_eq!(decode(Coding::Gzip, &two, 100).expect("two members"), b"{\"data\": [1, 2]}");
        // What this module compresses, it decodes.
        for coding in [Coding::Gzip, Coding::Deflate] {
            assert_eq!(decode(coding, &encode(coding, &body), body.len()).expect("round trip"), body);
        }
        assert_eq!(decode(Coding::Gzip, b"", 0).expect("empty"), b"");
    }

    #[test]
    fn the_limit_is_on_the_decoded_size() {
        let body = json_body(2000);
        // Exactly at the limit is fine; a byte over is not, however small the encoded body.
        assert_eq!(decode(Coding::Gzip, &gzip(&body), body.len()).expect("at the limit").len(), body.len());
        for (coding, encoded) in [(Coding::Gzip, gzip(&body)), (Coding::Deflate, zlib(&body))] {
            assert!(encoded.len() < body.len() / 2);
            match decode(coding, &encoded, body.len() - 1) {
                Err(DecodeError::TooLarge { limit, .. }) => assert_eq!(limit, body.len() - 1),
                other => panic!("{coding:?}: expected too large, got {other:?}"),
            }
        }
        // 64 MiB of zeros in about 64 KiB, refused at a 1 MiB limit (the test of its memory is
        // tests/bomb.rs, with a counting allocator).
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..64 {
            e.write_all(&zeros).expect("write");
        }
        let bomb = e.finish().expect("finish");
        assert!(bomb.len() < 100 * 1024, "{} bytes", bomb.len());
        let err = decode(Coding::Gzip, &bomb, 1 << 20).expect_err("refused");
        assert!(matches!(err, DecodeError::TooLarge { limit: 1_048_576, coding: "gzip" }), "{err:?}");
        assert_eq!(err.to_string(), "request body is larger than the limit of 1048576 bytes once decoded from gzip");
    }

    #[test]
    fn corrupt_streams_are_named() {
        let body = json_body(500);
        let good = gzip(&body);
        assert!(corrupt(decode(Coding::Gzip, b"{\"not\": \"gzip\"}", 1 << 20)).contains("header"));
        // Cut short: the end marker, CRC and length are missing.
        let truncated = corrupt(decode(Coding::Gzip, &good[..good.len() - 12], 1 << 20));
        assert!(truncated.contains("truncated"), "{truncated}");
        let zlib_truncated = zlib(&body);
        let detail = corrupt(decode(Coding::Deflate, &zlib_truncated[..zlib_truncated.len() / 2], 1 << 20));
        assert!(detail.contains("truncated"), "{detail}");
        // A wrong CRC.
        let mut bad_crc = good.clone();
        let at = bad_crc.len() - 8;
        bad_crc[at] ^= 0xff;
        corrupt(decode(Coding::Gzip, &bad_crc, 1 << 20));
        // Bytes after the end of a zlib stream, or garbage after a gzip member.
        let mut trailing = zlib(&body);
        trailing.extend_from_slice(b"junk");
        assert!(corrupt(decode(Coding::Deflate, &trailing, 1 << 20)).contains("4 bytes follow"));
        let mut after = good.clone();
        after.extend_from_slice(b"junk");
        corrupt(decode(Coding::Gzip, &after, 1 << 20));
        // The message names the coding and the problem.
        let e = decode(Coding::Deflate, b"\xff\xff\xff\xff", 100).expect_err("corrupt");
        assert!(e.to_string().starts_with("cannot decode the deflate request body: "), "{e}");
    }

    #[test]
    fn content_encoding_is_read_from_every_line() {
        assert_eq!(content_coding(&head("content-type: application/json\r\n")).expect("none"), None);
        assert_eq!(content_coding(&head("Content-Encoding: identity\r\n")).expect("identity"), None);
        assert_eq!(content_coding(&head("Content-Encoding: GZIP\r\n")).expect("gzip"), Some(Coding::Gzip));
        assert_eq!(content_coding(&head("content-encoding: x-gzip\r\n")).expect("x-gzip"), Some(Coding::Gzip));
        assert_eq!(content_coding(&head("content-encoding: deflate\r\n")).expect("deflate"), Some(Coding::Deflate));
        assert_eq!(content_coding(&head("content-encoding: identity, gzip\r\n")).expect("list"), Some(Coding::Gzip));
        for refused in ["br", "gzip, gzip", "deflate, gzip", "zstd", "compress"] {
            let e = content_coding(&head(&format!("content-encoding: {refused}\r\n"))).expect_err(refused);
            assert!(matches!(&e, DecodeError::Unsupported(v) if v == refused), "{e:?}");
            assert!(e.to_string().contains("supported are gzip and deflate"), "{e}");
        }
        // Two lines are one list: two codings.
        assert!(content_coding(&head("content-encoding: gzip\r\ncontent-encoding: deflate\r\n")).is_err());
    }

    #[test]
    fn accept_encoding_is_negotiated_by_weight() {
        let n = |v: &str| negotiate(Some(v.as_bytes()));
        assert_eq!(negotiate(None), None);
        assert_eq!(n(""), None);
        assert_eq!(n("gzip"), Some(Coding::Gzip));
        assert_eq!(n("deflate"), Some(Coding::Deflate));
        assert_eq!(n("x-gzip"), Some(Coding::Gzip));
        assert_eq!(n("br, zstd"), None);
        // A tie goes to gzip; a higher weight wins.
        assert_eq!(n("deflate, gzip"), Some(Coding::Gzip));
        assert_eq!(n("gzip, deflate, br, zstd"), Some(Coding::Gzip));
        assert_eq!(n("gzip;q=0.5, deflate"), Some(Coding::Deflate));
        assert_eq!(n("gzip ; q=0.8, deflate;q=0.9"), Some(Coding::Deflate));
        assert_eq!(n("GZIP;Q=1.0"), Some(Coding::Gzip));
        // q=0 refuses; `*` covers what is not named.
        assert_eq!(n("gzip;q=0"), None);
        assert_eq!(n("gzip;q=0.000, deflate;q=0.001"), Some(Coding::Deflate));
        assert_eq!(n("*"), Some(Coding::Gzip));
        assert_eq!(n("*;q=0.3, gzip;q=0"), Some(Coding::Deflate));
        assert_eq!(n("*;q=0"), None);
        // Identity weighed higher wins; on a tie the named coding does.
        assert_eq!(n("identity, gzip;q=0.5"), None);
        assert_eq!(n("gzip, identity"), Some(Coding::Gzip));
        assert_eq!(n("identity;q=0, gzip;q=0.1"), Some(Coding::Gzip));
        // A malformed weight drops its item only.
        assert_eq!(n("gzip;q=abc"), None);
        assert_eq!(n("gzip;q=1.5, deflate;q=0.2"), Some(Coding::Deflate));
        assert_eq!(n("gzip;q=0.1234"), None);
        assert_eq!(n("gzip;level=9"), Some(Coding::Gzip));
        assert_eq!(qvalue(b"0.125"), Some(125));
        assert_eq!(qvalue(b"1.000"), Some(1000));
        assert_eq!(qvalue(b"1.001"), None);
        assert_eq!(qvalue(b"."), None);
    }

    #[test]
    fn a_caller_takes_only_the_codings_it_named() {
        let a = |accept: Option<&str>, coding: &str| accepts(accept.map(str::as_bytes), coding.as_bytes());
        assert!(a(Some("gzip"), "gzip"));
        assert!(a(Some("x-gzip"), "gzip"));
        assert!(a(Some("br;q=0.5"), "br"));
        assert!(a(Some("*"), "deflate"));
        assert!(a(None, "identity"));
        assert!(!a(None, "gzip"));
        assert!(!a(Some("deflate"), "gzip"));
        assert!(!a(Some("gzip;q=0"), "gzip"));
        assert!(!a(Some("*, gzip;q=0"), "gzip"));
    }

    #[test]
    fn a_decoded_answer_loses_its_coding_and_keeps_the_rest() {
        let mut buf = BytesMut::from(
            &b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nContent-Encoding: gzip\r\nvary: accept-encoding\r\ncontent-length: 30\r\n\r\n"[..],
        );
        let head = crate::parse_response(&mut buf, false).expect("parses").expect("whole");
        let decoded = decoded_response_head(&head, 1234).expect("rebuilt");
        assert_eq!((decoded.status, decoded.framing), (200, crate::Framing::Length(1234)));
        let headers: Vec<(&str, &[u8])> = decoded.headers().collect();
        assert_eq!(
            headers,
            [("content-type", &b"application/json"[..]), ("vary", b"accept-encoding"), ("content-length", b"1234")]
        );
    }

    #[test]
    fn answers_are_compressed_only_when_it_pays() {
        let body = json_body(1000);
        assert_eq!(compress_for(None, &body), None);
        assert_eq!(compress_for(Some(b"br"), &body), None);
        assert_eq!(compress_for(Some(b"gzip"), &body[..MIN_COMPRESSED_BODY - 1]), None);
        let (coding, gz) = compress_for(Some(b"gzip"), &body).expect("compressed");
        assert_eq!(coding, Coding::Gzip);
        assert!(gz.len() < body.len() * 3 / 4, "{} of {}", gz.len(), body.len());
        assert_eq!(decode(Coding::Gzip, &gz, body.len()).expect("decodes"), body);
        let (coding, z) = compress_for(Some(b"deflate"), &body).expect("compressed");
        assert_eq!(coding, Coding::Deflate);
        assert!(zlib_header(&z), "deflate answers are zlib, as RFC 9110 says");
        // What does not shrink (random bytes, as binary tensor data can be) goes as it is.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..4096)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(compress_for(Some(b"gzip"), &noise), None);
    }
}
