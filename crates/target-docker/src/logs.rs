//! Container output as the Engine's logs route returns it.
//!
//! For a container without a TTY (ours never have one), stdout and stderr arrive multiplexed:
//! each frame is an 8-byte header (stream byte: 0 stdin, 1 stdout, 2 stderr; three zero bytes;
//! the payload length as a big-endian u32) followed by the payload. A container with a TTY sends
//! the raw text; both are read here, so a container someone created by hand reads right too.

/// The text of a logs answer, frames joined in arrival order (stdout and stderr interleaved as
/// they were written). Bytes that are not UTF-8 are replaced.
pub fn demultiplex(body: &[u8]) -> String {
    if !looks_multiplexed(body) {
        return String::from_utf8_lossy(body).into_owned();
    }
    let mut out = Vec::with_capacity(body.len());
    let mut rest = body;
    while rest.len() >= 8 {
        let len = u32::from_be_bytes([rest[4], rest[5], rest[6], rest[7]]) as usize;
        let end = (8 + len).min(rest.len());
        // A frame cut short (the answer ended early) keeps what arrived.
        out.extend_from_slice(&rest[8..end]);
        rest = &rest[end..];
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn looks_multiplexed(body: &[u8]) -> bool {
    body.len() >= 8 && body[0] <= 2 && body[1..4] == [0, 0, 0]
}

/// The last `n` non-blank lines of `text`, joined with ` | ` (one line for a status message).
pub fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(stream: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![stream, 0, 0, 0];
        f.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    #[test]
    fn frames_of_both_streams_are_joined_in_order() {
        let mut body = frame(1, b"loading model a\n");
        body.extend(frame(2, b"error: no such file\n"));
        body.extend(frame(1, b""));
        body.extend(frame(1, b"bye\n"));
        assert_eq!(demultiplex(&body), "loading model a\nerror: no such file\nbye\n");
    }

    #[test]
    fn a_frame_cut_short_keeps_what_arrived() {
        let mut body = frame(1, b"whole\n");
        let mut cut = frame(2, b"partial line");
        cut.truncate(8 + 4);
        body.extend(cut);
        assert_eq!(demultiplex(&body), "whole\npart");
    }

    #[test]
    fn raw_text_from_a_tty_passes_through() {
        assert_eq!(demultiplex(b"plain output\nmore\n"), "plain output\nmore\n");
        assert_eq!(demultiplex(b""), "");
    }

    #[test]
    fn a_frame_longer_than_one_read_of_a_header_is_not_mistaken_for_text() {
        let payload = vec![b'x'; 70_000];
        assert_eq!(demultiplex(&frame(1, &payload)).len(), 70_000);
    }

    #[test]
    fn last_lines_skips_blank_ones() {
        assert_eq!(last_lines("a\n\nb\nc\n  \n", 2), "b | c");
        assert_eq!(last_lines("only\n", 10), "only");
        assert_eq!(last_lines("", 3), "");
    }
}
