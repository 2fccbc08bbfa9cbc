//! Credentials for the gateway and the control plane: API keys and their SHA-256 digests, the
//! `Authorization: Bearer` header, and Ed25519 (`EdDSA`, RFC 8037) JWTs. The control plane holds
//! the secrets (keys at creation time, the token signing key); the gateway holds only key digests
//! and public keys (a JWKS), compares in constant time, and verifies tokens against an algorithm
//! pinned by configuration. No type here prints a credential through `Debug` or an error message.
#![forbid(unsafe_code)]

pub mod jwt;
pub mod key;

pub use jwt::{
    Algorithm, AlgorithmError, Claims, IAT_LEEWAY_SECS, Jwk, Jwks, JwksError, MAX_TOKEN_LEN, SignerError, TokenError,
    TokenSigner, TokenVerifier,
};
pub use key::{
    DigestError, KeyDigest, KeyError, MAX_KEY_LEN, MIN_KEY_LEN, bearer_credential, check_key_value,
    constant_time_str_eq, generate_key,
};
