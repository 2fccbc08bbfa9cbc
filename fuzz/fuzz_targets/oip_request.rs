//! The scoring server's infer request decoder: the one-pass JSON reader
//! (`sluice_server::request::read_request`) and the binary tensor data extension, where
//! `Inference-Header-Content-Length` splits the body into JSON and binary parts
//! (`sluice_server::decode_infer_inputs`, what `POST .../infer` runs before the model).
//!
//! Input: the `Inference-Header-Content-Length` value, a newline, then the body; an empty first
//! line means no such header (a plain JSON request). Checked: nothing panics; the reader accepts
//! only JSON (whatever it accepts serde_json parses too); every decoded tensor holds as many
//! elements as its shape says.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use sluice_server::decode_infer_inputs;
use sluice_server::request::read_request;

fuzz_target!(|data: &[u8]| {
    let (header, body) = match data.iter().position(|&b| b == b'\n') {
        Some(0) => (None, &data[1..]),
        Some(i) => (Some(&data[..i]), &data[i + 1..]),
        None => (None, data),
    };
    // The JSON part as the decoder will find it, when the header is a plain byte count.
    let json_len = header.and_then(|h| std::str::from_utf8(h).ok()?.trim().parse::<usize>().ok());
    if let Some(json) = json_len.map_or(Some(body), |n| body.get(..n)) {
        agrees_with_serde(json);
    }
    let body = Bytes::copy_from_slice(body);
    if let Ok(inputs) = decode_infer_inputs(header, &body) {
        for tensor in &inputs {
            let elements = tensor.shape.iter().try_fold(1u64, |n, &d| n.checked_mul(u64::try_from(d).ok()?));
            assert_eq!(elements, Some(tensor.data.len() as u64), "input '{}'", tensor.name);
        }
    }
});

/// The reader accepts only JSON: whatever it reads, serde_json parses too. (The converse does not
/// hold: JSON that is not a request object is refused with the same kind of message.)
fn agrees_with_serde(json: &[u8]) {
    if read_request(json).is_ok() {
        let serde = serde_json::from_slice::<IgnoredAny>(json);
        assert!(serde.is_ok(), "read_request accepted what serde_json refuses: {serde:?}");
    }
}
