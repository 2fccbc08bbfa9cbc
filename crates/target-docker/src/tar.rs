//! A minimal writer of ustar archives: what the Engine takes to put files into a container
//! (`PUT /containers/{id}/archive`) and to make an image from a root filesystem
//! (`POST /images/create?fromSrc=-`). Regular files and directories only, with the owner and mode
//! they must have inside the container; every entry is a 512-byte header, the data, and zeros up
//! to the next 512-byte boundary, and two zero blocks end the archive.

const BLOCK: usize = 512;

/// An archive being built in memory.
#[derive(Debug, Default)]
pub struct Tar {
    bytes: Vec<u8>,
}

/// Why an entry cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum TarError {
    #[error("tar entry name '{0}' is longer than 100 bytes or not relative")]
    Name(String),
}

impl Tar {
    /// An empty archive.
    pub fn new() -> Tar {
        Tar::default()
    }

    /// Adds a directory (`path` without a trailing slash; one is added).
    pub fn dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> Result<&mut Tar, TarError> {
        self.entry(&format!("{}/", path.trim_end_matches('/')), b'5', mode, uid, gid, &[])
    }

    /// Adds a regular file holding `data`.
    pub fn file(&mut self, path: &str, mode: u32, uid: u32, gid: u32, data: &[u8]) -> Result<&mut Tar, TarError> {
        self.entry(path, b'0', mode, uid, gid, data)
    }

    /// The archive with its end-of-archive marker.
    pub fn finish(mut self) -> Vec<u8> {
        self.bytes.resize(self.bytes.len() + 2 * BLOCK, 0);
        self.bytes
    }

    fn entry(
        &mut self,
        name: &str,
        kind: u8,
        mode: u32,
        uid: u32,
        gid: u32,
        data: &[u8],
    ) -> Result<&mut Tar, TarError> {
        // Paths are relative to where the archive is extracted; a longer name would need the
        // ustar prefix field or a PAX header, which nothing here needs.
        if name.len() > 100 || name.is_empty() || name.starts_with('/') {
            return Err(TarError::Name(name.to_owned()));
        }
        let mut h = [0u8; BLOCK];
        h[..name.len()].copy_from_slice(name.as_bytes());
        octal(&mut h[100..108], u64::from(mode & 0o7777));
        octal(&mut h[108..116], u64::from(uid));
        octal(&mut h[116..124], u64::from(gid));
        octal(&mut h[124..136], data.len() as u64);
        octal(&mut h[136..148], 0); // mtime: the epoch; nothing reads it
        h[156] = kind;
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        // The checksum is the sum of the header's bytes with its own field read as spaces.
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
        octal(&mut h[148..155], u64::from(sum));
        h[155] = b' ';
        self.bytes.extend_from_slice(&h);
        self.bytes.extend_from_slice(data);
        let padding = (BLOCK - data.len() % BLOCK) % BLOCK;
        self.bytes.resize(self.bytes.len() + padding, 0);
        Ok(self)
    }
}

/// Writes `value` as zero-padded octal digits filling `field` but its last byte, which is NUL.
fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    // Only a value too large for the field would be longer; the callers' values fit (sizes up to
    // 8 GiB in 11 digits).
    let text = &text.as_bytes()[text.len().saturating_sub(digits)..];
    field[..digits].copy_from_slice(text);
    field[digits] = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8], range: std::ops::Range<usize>) -> String {
        String::from_utf8(h[range].iter().copied().take_while(|&b| b != 0).collect()).expect("ascii")
    }

    fn number(h: &[u8], range: std::ops::Range<usize>) -> u64 {
        u64::from_str_radix(field(h, range).trim(), 8).expect("octal")
    }

    #[test]
    fn entries_have_valid_headers_padding_and_an_end_marker() {
        let mut tar = Tar::new();
        tar.dir("run/sluice", 0o700, 10001, 10001).expect("dir");
        tar.file("run/sluice/gateway-token", 0o400, 10001, 10001, b"secret-token").expect("file");
        let bytes = tar.finish();
        // Header, header + one data block, two end blocks.
        assert_eq!(bytes.len(), 512 * 5);

        let dir = &bytes[..512];
        assert_eq!(field(dir, 0..100), "run/sluice/");
        assert_eq!(dir[156], b'5');
        assert_eq!(number(dir, 100..108), 0o700);
        assert_eq!(number(dir, 124..136), 0);

        let file = &bytes[512..1024];
        assert_eq!(field(file, 0..100), "run/sluice/gateway-token");
        assert_eq!(file[156], b'0');
        assert_eq!(number(file, 100..108), 0o400);
        assert_eq!(number(file, 108..116), 10001);
        assert_eq!(number(file, 116..124), 10001);
        assert_eq!(number(file, 124..136), 12);
        assert_eq!(&file[257..265], b"ustar\x0000");
        assert_eq!(&bytes[1024..1036], b"secret-token");
        assert!(bytes[1036..].iter().all(|&b| b == 0), "padding and end marker are zeros");

        for header in [dir, file] {
            let stored = number(header, 148..156);
            let mut copy = header.to_vec();
            copy[148..156].copy_from_slice(b"        ");
            let sum: u64 = copy.iter().map(|&b| u64::from(b)).sum();
            assert_eq!(stored, sum, "checksum");
        }
    }

    #[test]
    fn data_of_a_whole_block_gets_no_padding() {
        let mut tar = Tar::new();
        tar.file("a", 0o644, 0, 0, &[7u8; 512]).expect("file");
        assert_eq!(tar.finish().len(), 512 * 4);
    }

    #[test]
    fn long_and_absolute_names_are_refused() {
        let mut tar = Tar::new();
        assert!(tar.file(&"a".repeat(101), 0o644, 0, 0, b"").is_err());
        assert!(tar.file("/etc/passwd", 0o644, 0, 0, b"").is_err());
        assert!(tar.file(&"a".repeat(100), 0o644, 0, 0, b"").is_ok());
    }
}
