//! Arbitrary input must give an error, never a panic or an acceptance, wherever a client or an
//! operator can supply it.
#![allow(clippy::unwrap_used)]

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use proptest::prelude::*;
use sluice_auth::{
    Algorithm, Claims, Jwks, KeyDigest, TokenError, TokenSigner, TokenVerifier, bearer_credential, check_key_value,
};

const NOW: u64 = 1_750_000_000;

fn setup() -> (TokenSigner, TokenVerifier) {
    let signer = TokenSigner::generate();
    let verifier = TokenVerifier::new(Algorithm::EdDSA, &Jwks { keys: vec![signer.public_jwk()] }).unwrap();
    (signer, verifier)
}

fn claims() -> Claims {
    Claims { iss: "cp".into(), sub: "s".into(), aud: "endpoint:e".into(), iat: NOW, exp: NOW + 60 }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn arbitrary_strings_never_verify(token in ".{0,400}") {
        let (_, verifier) = setup();
        prop_assert!(verifier.verify(&token, NOW).is_err());
    }

    #[test]
    fn arbitrary_three_part_tokens_never_verify(
        header in proptest::collection::vec(any::<u8>(), 0..80),
        payload in proptest::collection::vec(any::<u8>(), 0..200),
        signature in proptest::collection::vec(any::<u8>(), 0..80),
    ) {
        let (_, verifier) = setup();
        let token = format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode(header),
            URL_SAFE_NO_PAD.encode(payload),
            URL_SAFE_NO_PAD.encode(signature)
        );
        prop_assert!(verifier.verify(&token, NOW).is_err());
    }

    #[test]
    fn any_single_character_change_breaks_a_token(index in any::<prop::sample::Index>(), replacement in "[A-Za-z0-9_.=-]") {
        let (signer, verifier) = setup();
        let token = signer.sign(&claims());
        let i = index.index(token.len());
        let mut changed = token.clone();
        changed.replace_range(i..i + 1, &replacement);
        prop_assume!(changed != token);
        prop_assert!(verifier.verify(&changed, NOW).is_err(), "accepted change at {} to {}", i, replacement);
    }

    #[test]
    fn bearer_credential_is_total_and_returns_a_clean_substring(header in prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..100),
        // Header-like text, so that the accepting branch is exercised too.
        "[ \t]{0,2}(Bearer|bearer|BEARER|Basic|Bearerx|)[ \t]{0,3}[!-~ \t\né]{0,20}".prop_map(String::into_bytes),
    ]) {
        if let Some(credential) = bearer_credential(&header) {
            prop_assert!(!credential.is_empty());
            prop_assert!(!credential.contains(char::is_whitespace));
            let text = std::str::from_utf8(&header).unwrap();
            prop_assert!(text.trim().to_ascii_lowercase().starts_with("bearer "));
            prop_assert!(text.trim_end().ends_with(credential));
        }
    }

    #[test]
    fn check_key_value_error_never_echoes_the_value(value in "[a-zA-Z]{20,40}[ \t\n\u{0}é]?") {
        match check_key_value(&value) {
            Ok(()) => prop_assert!(value.bytes().all(|b| b.is_ascii_graphic())),
            Err(err) => prop_assert!(!err.to_string().contains(&value[..20])),
        }
    }

    #[test]
    fn digest_from_hex_is_total(s in ".{0,80}") {
        if let Ok(d) = KeyDigest::from_hex(&s) {
            prop_assert_eq!(d.to_hex(), s.to_ascii_lowercase());
        }
    }
}

#[test]
fn huge_input_is_refused() {
    let (signer, verifier) = setup();
    let token = signer.sign(&claims());
    // Valid prefix, then megabytes of valid base64: only the length cap can refuse this early,
    // and it must refuse rather than decode or panic.
    let huge = format!("{token}{}", "A".repeat(10 * 1024 * 1024));
    assert_eq!(verifier.verify(&huge, NOW), Err(TokenError::Malformed));
    let many_dots = ".".repeat(1024 * 1024);
    assert_eq!(verifier.verify(&many_dots, NOW), Err(TokenError::Malformed));
    assert!(verifier.verify(&token, NOW).is_ok());
}
