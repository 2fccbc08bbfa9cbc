//! The gateway's token checks: `TokenVerifier::verify` on any string, on tokens with any header
//! and claims that carry a valid signature, and on valid tokens with bytes changed; JWKS parsing
//! and `TokenVerifier::new`; the `Authorization: Bearer` parser.
//!
//! Input: one mode byte, then the mode's bytes:
//! - 0: a token as a client sends it (also read as an `Authorization` header value);
//! - 1: a header JSON, a newline, a claims JSON: signed with the verifier's key, then verified;
//! - 2: a JWKS document: parsed, turned into a verifier, which then checks a valid token;
//! - 3: (position, byte) pairs applied to a valid token: a changed token must never verify.
//!
//! Checked: nothing panics; a token whose header is `{"alg":"EdDSA"}` and whose claims parse and
//! are current verifies, with exactly those claims; a changed token is always refused.
#![no_main]

use std::sync::OnceLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signer as _, SigningKey};
use libfuzzer_sys::fuzz_target;
use sluice_auth::{Algorithm, Claims, IAT_LEEWAY_SECS, Jwks, TokenSigner, TokenVerifier, bearer_credential};

const SEED: [u8; 32] = [7; 32];
const NOW: u64 = 1_750_000_000;

struct Fixture {
    key: SigningKey,
    verifier: TokenVerifier,
    /// A token the verifier accepts at [`NOW`].
    token: String,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let signer = TokenSigner::from_seed_bytes(&SEED).expect("a 32-byte seed");
        let jwks = Jwks { keys: vec![signer.public_jwk()] };
        let verifier = TokenVerifier::new(Algorithm::EdDSA, &jwks).expect("our own key");
        let claims = Claims { iss: "i".into(), sub: "s".into(), aud: "endpoint:e".into(), iat: NOW, exp: NOW + 60 };
        let token = signer.sign(&claims);
        assert_eq!(verifier.verify(&token, NOW), Ok(claims));
        Fixture { key: SigningKey::from_bytes(&SEED), verifier, token }
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let f = fixture();
    match mode % 4 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                // Only a signature by the fixture's key verifies, and the fuzzer cannot make one.
                assert!(f.verifier.verify(token, NOW).is_err() || token == f.token);
            }
            if let Some(credential) = bearer_credential(rest) {
                assert!(!credential.is_empty() && !credential.contains(char::is_whitespace));
            }
        }
        1 => {
            let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&b"{\"alg\":\"EdDSA\"}"[..], rest),
            };
            let input = format!("{}.{}", URL_SAFE_NO_PAD.encode(header), URL_SAFE_NO_PAD.encode(claims));
            let signature = f.key.sign(input.as_bytes());
            let token = format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()));
            let verdict = f.verifier.verify(&token, NOW);
            if header == b"{\"alg\":\"EdDSA\"}"
                && let Ok(expected) = serde_json::from_slice::<Claims>(claims)
                && claims.trim_ascii_start().starts_with(b"{")
                && NOW < expected.exp
                && expected.iat <= NOW + IAT_LEEWAY_SECS
                && token.len() <= sluice_auth::MAX_TOKEN_LEN
            {
                assert_eq!(verdict, Ok(expected));
            }
        }
        2 => {
            if let Ok(jwks) = serde_json::from_slice::<Jwks>(rest)
                && let Ok(verifier) = TokenVerifier::new(Algorithm::EdDSA, &jwks)
            {
                let _ = verifier.verify(&f.token, NOW);
            }
        }
        _ => {
            let mut token = f.token.clone().into_bytes();
            for edit in rest.chunks_exact(3) {
                let at = usize::from(u16::from_le_bytes([edit[0], edit[1]]));
                match token.get_mut(at) {
                    Some(b) => *b = edit[2],
                    None => token.push(edit[2]),
                }
            }
            if let Ok(token) = std::str::from_utf8(&token)
                && token != f.token
            {
                assert!(f.verifier.verify(token, NOW).is_err(), "a changed token verified");
            }
        }
    }
});
