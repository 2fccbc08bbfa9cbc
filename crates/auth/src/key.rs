//! API keys: generation, validation of operator-chosen values, SHA-256 digests compared in
//! constant time, and extraction of the credential from an `Authorization: Bearer` header.

use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use subtle::ConstantTimeEq as _;

/// Shortest explicitly set API key accepted by [`check_key_value`], in characters.
pub const MIN_KEY_LEN: usize = 16;
/// Longest explicitly set API key accepted by [`check_key_value`], in characters.
pub const MAX_KEY_LEN: usize = 256;

/// Entropy of a generated key. 256 bits makes the unsalted SHA-256 digest safe to store: nobody
/// can brute-force a preimage, so the digest alone does not let anyone authenticate.
const GENERATED_KEY_BYTES: usize = 32;

/// Why an explicitly set API key was refused. Never carries the key itself, so the message can
/// be logged or returned to the operator who supplied it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Fewer than [`MIN_KEY_LEN`] characters.
    #[error("api key must be at least {MIN_KEY_LEN} characters, got {0}")]
    TooShort(usize),
    /// More than [`MAX_KEY_LEN`] characters.
    #[error("api key must be at most {MAX_KEY_LEN} characters, got {0}")]
    TooLong(usize),
    /// A character outside visible ASCII (`!` to `~`), e.g. a space, control character or
    /// non-ASCII letter; the position is a character index starting at 0.
    #[error("api key may only contain visible ASCII characters; character {0} is not one")]
    InvalidCharacter(usize),
}

/// Why a hex string is not a [`KeyDigest`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DigestError {
    /// The string is not 64 characters long.
    #[error("key digest must be 64 hex characters, got {0}")]
    Length(usize),
    /// The string has the right length but contains a non-hex character.
    #[error("key digest must contain only hex characters")]
    NotHex,
}

/// Generates a new API key: 32 bytes from the operating system's CSPRNG, base64url without
/// padding, so always 43 characters from `[A-Za-z0-9_-]`.
///
/// # Panics
///
/// If the operating system cannot supply random bytes. There is no safe fallback for a credential,
/// and on supported platforms this does not happen once the OS has booted.
pub fn generate_key() -> String {
    let mut bytes = [0u8; GENERATED_KEY_BYTES];
    fill_random(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Fills `buf` from the OS CSPRNG, panicking if it is unavailable (see [`generate_key`]).
pub(crate) fn fill_random(buf: &mut [u8]) {
    if let Err(err) = getrandom::fill(buf) {
        panic!("the operating system random number generator failed: {err}");
    }
}

/// Checks an explicitly set API key (one an operator chose instead of [`generate_key`]): 16 to 256
/// characters, all visible ASCII, so that it travels unchanged in an HTTP header. The error never
/// contains the key.
pub fn check_key_value(value: &str) -> Result<(), KeyError> {
    if let Some(position) = value.chars().position(|c| !c.is_ascii_graphic()) {
        return Err(KeyError::InvalidCharacter(position));
    }
    // All ASCII from here on, so bytes and characters coincide.
    match value.len() {
        len if len < MIN_KEY_LEN => Err(KeyError::TooShort(len)),
        len if len > MAX_KEY_LEN => Err(KeyError::TooLong(len)),
        _ => Ok(()),
    }
}

/// The SHA-256 digest of an API key: what the gateway stores and compares instead of the key.
///
/// `==` is constant time (it is [`KeyDigest::ct_eq`]). `Debug` shows only the first two bytes, and
/// serde reads and writes the lowercase hex form.
#[derive(Clone, Copy)]
pub struct KeyDigest([u8; 32]);

impl KeyDigest {
    /// The digest of `key`.
    pub fn of(key: &str) -> Self {
        Self(Sha256::digest(key.as_bytes()).into())
    }

    /// Lowercase hex, 64 characters.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex characters (either case).
    pub fn from_hex(s: &str) -> Result<Self, DigestError> {
        if s.len() != 64 {
            return Err(DigestError::Length(s.chars().count()));
        }
        let mut bytes = [0u8; 32];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| DigestError::NotHex)?;
        Ok(Self(bytes))
    }

    /// Whether `presented` is the key this digest was made from. Hashes it and compares the
    /// digests in constant time, so timing reveals neither the key nor how much of it matched.
    pub fn matches(&self, presented: &str) -> bool {
        self.ct_eq(&Self::of(presented))
    }

    /// Constant-time equality of two digests.
    pub fn ct_eq(&self, other: &KeyDigest) -> bool {
        self.0.ct_eq(&other.0).into()
    }
}

impl PartialEq for KeyDigest {
    // Derived equality would short-circuit on the first differing byte; route `==` through the
    // constant-time path so that no caller can pick the leaky one by accident.
    fn eq(&self, other: &Self) -> bool {
        self.ct_eq(other)
    }
}

impl Eq for KeyDigest {}

impl fmt::Debug for KeyDigest {
    // Enough to tell digests apart in logs; the full digest of a weak operator-chosen key would
    // let anyone who reads the logs test guesses offline.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDigest({:02x}{:02x}…)", self.0[0], self.0[1])
    }
}

impl FromStr for KeyDigest {
    type Err = DigestError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_hex(s)
    }
}

impl Serialize for KeyDigest {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for KeyDigest {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        Self::from_hex(&s).map_err(serde::de::Error::custom)
    }
}

/// The credential of an `Authorization: Bearer <credential>` header value, or `None` if the value
/// is not UTF-8, uses another scheme, or has an empty credential or one with inner whitespace.
/// The scheme is matched case-insensitively (RFC 9110, 11.1), any number of spaces may follow it,
/// and surrounding spaces and tabs are ignored.
pub fn bearer_credential(authorization_header: &[u8]) -> Option<&str> {
    let value = std::str::from_utf8(authorization_header).ok()?.trim_matches(is_ows);
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let credential = rest.trim_matches(is_ows);
    // A credential is a single token68; anything with whitespace in it is not a bearer token, and
    // returning part of it would authenticate a header the client did not mean to send.
    if credential.is_empty() || credential.contains(|c: char| c.is_whitespace()) {
        return None;
    }
    Some(credential)
}

/// HTTP optional whitespace (RFC 9110, 5.6.3).
fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// Constant-time string equality for shared secrets such as the admin token. Compares SHA-256
/// digests of both sides, so the time taken reveals neither a matching prefix nor the length of
/// the expected value.
pub fn constant_time_str_eq(a: &str, b: &str) -> bool {
    KeyDigest::of(a).ct_eq(&KeyDigest::of(b))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn generated_keys_are_43_url_safe_chars_and_distinct() {
        let keys: Vec<String> = (0..64).map(|_| generate_key()).collect();
        for key in &keys {
            assert_eq!(key.len(), 43, "{key}");
            assert!(key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'), "{key}");
            assert_eq!(URL_SAFE_NO_PAD.decode(key).unwrap().len(), 32);
            check_key_value(key).unwrap();
        }
        let mut unique = keys.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), keys.len());
    }

    #[test]
    fn digest_matches_only_its_own_key() {
        let keys: Vec<String> = (0..8).map(|_| generate_key()).collect();
        let digests: Vec<KeyDigest> = keys.iter().map(|k| KeyDigest::of(k)).collect();
        for (i, digest) in digests.iter().enumerate() {
            for (j, key) in keys.iter().enumerate() {
                assert_eq!(digest.matches(key), i == j, "digest {i} vs key {j}");
                assert_eq!(digest.ct_eq(&digests[j]), i == j);
                assert_eq!(*digest == digests[j], i == j);
            }
        }
        // Near misses: a prefix, an extension, a changed last character.
        let key = &keys[0];
        assert!(!digests[0].matches(&key[..42]));
        assert!(!digests[0].matches(&format!("{key}x")));
        assert!(!digests[0].matches(""));
        // Digests differing only in their first or last byte: every byte takes part.
        let hex = digests[0].to_hex();
        for changed in [format!("{}{}", &hex[..62], if &hex[62..] == "00" { "01" } else { "00" }), {
            let first = if &hex[..2] == "00" { "01" } else { "00" };
            format!("{first}{}", &hex[2..])
        }] {
            let other = KeyDigest::from_hex(&changed).unwrap();
            assert!(!digests[0].ct_eq(&other) && digests[0] != other, "{changed}");
        }
    }

    #[test]
    fn digest_is_sha256() {
        // Known answer: SHA-256("abc").
        assert_eq!(KeyDigest::of("abc").to_hex(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }

    #[test]
    fn digest_hex_round_trip_and_errors() {
        let d = KeyDigest::of("some-key-value-123");
        let hex = d.to_hex();
        assert_eq!(hex.len(), 64);
        assert_eq!(hex, hex.to_lowercase());
        assert_eq!(KeyDigest::from_hex(&hex).unwrap(), d);
        assert_eq!(KeyDigest::from_hex(&hex.to_uppercase()).unwrap(), d);
        assert_eq!(hex.parse::<KeyDigest>().unwrap(), d);
        assert_eq!(KeyDigest::from_hex(&hex[..63]), Err(DigestError::Length(63)));
        assert_eq!(KeyDigest::from_hex(""), Err(DigestError::Length(0)));
        let bad = format!("{}g", &hex[..63]);
        assert_eq!(KeyDigest::from_hex(&bad), Err(DigestError::NotHex));
        // 64 bytes but not 64 ASCII characters must not slice mid-character or pass.
        let multibyte = "é".repeat(32);
        assert!(KeyDigest::from_hex(&multibyte).is_err());
    }

    #[test]
    fn digest_serde_is_lowercase_hex_string() {
        let d = KeyDigest::of("some-key-value-123");
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{}\"", d.to_hex()));
        let back: KeyDigest = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        assert!(serde_json::from_str::<KeyDigest>("\"abcd\"").is_err());
        assert!(serde_json::from_str::<KeyDigest>("42").is_err());
    }

    #[test]
    fn digest_debug_shows_only_a_prefix() {
        let d = KeyDigest::of("some-key-value-123");
        let hex = d.to_hex();
        let debug = format!("{d:?}");
        assert_eq!(debug, format!("KeyDigest({}…)", &hex[..4]));
        assert!(!debug.contains(&hex[..8]));
    }

    #[test]
    fn check_key_value_bounds() {
        assert_eq!(check_key_value(&"a".repeat(15)), Err(KeyError::TooShort(15)));
        assert_eq!(check_key_value(""), Err(KeyError::TooShort(0)));
        check_key_value(&"a".repeat(16)).unwrap();
        check_key_value(&"a".repeat(256)).unwrap();
        assert_eq!(check_key_value(&"a".repeat(257)), Err(KeyError::TooLong(257)));
        // Every visible ASCII character is allowed.
        let all_visible: String = ('!'..='~').collect();
        check_key_value(&all_visible).unwrap();
    }

    #[test]
    fn check_key_value_refuses_invisible_and_non_ascii() {
        for (value, position) in [
            ("abcdefgh ijklmnopq", 8),
            ("abcdefghijklmnopq\n", 17),
            ("\tabcdefghijklmnopq", 0),
            ("abcdefgh\u{7f}ijklmnopq", 8),
            ("abcdefghéijklmnopq", 8),
            ("abcdefgh\0ijklmnopq", 8),
        ] {
            assert_eq!(check_key_value(value), Err(KeyError::InvalidCharacter(position)), "{value:?}");
        }
    }

    #[test]
    fn check_key_value_error_never_contains_the_key() {
        for value in ["SECRETSECRET", "SECRETSECRET-with space-in-it", &format!("SECRET{}", "x".repeat(300))] {
            let err = check_key_value(value).unwrap_err();
            let message = err.to_string();
            let debug = format!("{err:?}");
            assert!(!message.contains("SECRET") && !debug.contains("SECRET"), "{message} / {debug}");
            assert!(!message.ends_with('.'));
        }
    }

    #[test]
    fn bearer_credential_accepts_bearer_scheme() {
        assert_eq!(bearer_credential(b"Bearer abc123"), Some("abc123"));
        assert_eq!(bearer_credential(b"bearer abc123"), Some("abc123"));
        assert_eq!(bearer_credential(b"BEARER abc123"), Some("abc123"));
        assert_eq!(bearer_credential(b"Bearer    abc123"), Some("abc123"));
        assert_eq!(bearer_credential(b"  Bearer abc123 \t"), Some("abc123"));
        assert_eq!(bearer_credential(b"Bearer a.b-c_d~e+f/g="), Some("a.b-c_d~e+f/g="));
    }

    #[test]
    fn bearer_credential_refuses_everything_else() {
        for value in [
            &b""[..],
            b"Bearer",
            b"Bearer ",
            b"Bearer    ",
            b"Bearerabc123",
            b"Basic dXNlcjpwYXNz",
            b"Token abc123",
            b"Bearer\tabc123",
            b"Bearer abc 123",
            b"Bearer abc\n123",
            b"Bearer \xff\xfe",
            b"\xffBearer abc",
            b"abc123",
        ] {
            assert_eq!(bearer_credential(value), None, "{:?}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn constant_time_str_eq_is_equality() {
        assert!(constant_time_str_eq("admin-token", "admin-token"));
        assert!(constant_time_str_eq("", ""));
        assert!(!constant_time_str_eq("admin-token", "admin-tokem"));
        assert!(!constant_time_str_eq("admin-token", "admin-token-longer"));
        assert!(!constant_time_str_eq("admin-token", ""));
    }
}
