//! JSON Web Tokens signed with Ed25519 (JWS algorithm `EdDSA`, RFC 8037), written directly on
//! `ed25519-dalek` so that the rules are few and visible:
//!
//! - the algorithm is pinned by configuration ([`Algorithm`]); the token's `alg` header must equal
//!   it exactly and is never used to choose how to verify,
//! - the key is chosen by the token's `kid` among the configured public keys ([`Jwks`]),
//! - signatures are checked with `verify_strict`, which refuses small-order keys and
//!   non-canonical signatures,
//! - `exp` is enforced and `iat` may be at most [`IAT_LEEWAY_SECS`] in the future.
//!
//! The audience is returned in [`Claims`] and must be checked by the caller against what it
//! protects. Neither errors nor `Debug` output contain a token or private key.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ed25519_dalek::{Signature, Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};

use crate::key::fill_random;

/// Longest token [`TokenVerifier::verify`] decodes, in bytes. Ours are a few hundred bytes; the
/// cap bounds the work an unauthenticated client can make the gateway do per request.
pub const MAX_TOKEN_LEN: usize = 8 * 1024;

/// How far in the future `iat` may lie, in seconds, to tolerate clock skew between the control
/// plane that issues tokens and the gateway that checks them.
pub const IAT_LEEWAY_SECS: u64 = 60;

/// Length of an Ed25519 signature in base64url without padding (64 bytes).
const SIGNATURE_B64_LEN: usize = 86;

/// A JWS signature algorithm this crate implements. Configuration pins one; verification never
/// takes the algorithm from the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    /// Ed25519 signatures (RFC 8037).
    EdDSA,
}

impl Algorithm {
    /// Every supported algorithm, for error messages and documentation.
    pub const ALL: &'static [Algorithm] = &[Algorithm::EdDSA];

    /// The JOSE name, as written in a token header and a JWK's `alg`.
    pub fn as_str(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "EdDSA",
        }
    }

    /// The JWK `kty` its keys must have.
    fn key_type(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "OKP",
        }
    }

    /// The JWK `crv` its keys must have.
    fn curve(self) -> &'static str {
        match self {
            Algorithm::EdDSA => "Ed25519",
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Algorithm {
    type Err = AlgorithmError;

    /// Exact, case-sensitive match on the JOSE name: JOSE names are case-sensitive, and accepting
    /// variants here would invite accepting them in token headers too.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL.iter().copied().find(|alg| alg.as_str() == s).ok_or_else(|| AlgorithmError::Unsupported {
            name: s.to_owned(),
            supported: Algorithm::ALL.iter().map(|alg| alg.as_str()).collect::<Vec<_>>().join(", "),
        })
    }
}

impl Serialize for Algorithm {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Algorithm {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a configured algorithm name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlgorithmError {
    /// Not the name of an algorithm in [`Algorithm::ALL`].
    #[error("unsupported JWT algorithm '{name}'; supported: {supported}")]
    Unsupported {
        /// The name that was given.
        name: String,
        /// The supported names, comma separated.
        supported: String,
    },
}

/// The claims Sluice puts in and reads from a token. Other claims in a token are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer, e.g. the control plane's URL.
    pub iss: String,
    /// Subject: who the token was issued to.
    pub sub: String,
    /// Audience: what the token grants access to, e.g. `endpoint:NAME` or `service:NAME`. A single
    /// string; the array form of RFC 7519 is not accepted.
    pub aud: String,
    /// Issued at, seconds since the Unix epoch.
    pub iat: u64,
    /// Expiry, seconds since the Unix epoch; the token is refused from this second on.
    pub exp: u64,
}

/// A public key in JWK form (RFC 7517, RFC 8037). All fields are required so that a key states
/// which algorithm and use it is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Jwk {
    /// Key type; `OKP` for Ed25519.
    pub kty: String,
    /// Curve; `Ed25519`.
    pub crv: String,
    /// The 32-byte public key, base64url without padding.
    pub x: String,
    /// Key id, matched against a token's `kid` header.
    pub kid: String,
    /// The algorithm the key is for; `EdDSA`.
    pub alg: String,
    /// Intended use; `sig`.
    #[serde(rename = "use")]
    pub key_use: String,
}

/// A JWK set: the public keys a gateway accepts tokens from. Several keys allow rotation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Jwks {
    /// The keys.
    pub keys: Vec<Jwk>,
}

/// Why a signing key could not be loaded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignerError {
    /// The persisted seed is not 32 bytes.
    #[error("ed25519 signing key seed must be 32 bytes, got {0}")]
    SeedLength(usize),
}

/// The control plane's token signing key: an Ed25519 private key and its key id.
///
/// `Debug` shows only the key id. The private key is zeroed when dropped.
pub struct TokenSigner {
    key: SigningKey,
    kid: String,
}

impl TokenSigner {
    /// A new random key from the OS CSPRNG.
    ///
    /// # Panics
    ///
    /// If the operating system cannot supply random bytes (see [`crate::generate_key`]).
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        fill_random(&mut seed);
        let signer = Self::from_seed(&seed);
        // The seed is the private key; do not leave a copy on the stack.
        seed.fill(0);
        signer
    }

    /// Loads a key persisted with [`TokenSigner::seed_bytes`].
    pub fn from_seed_bytes(seed: &[u8]) -> Result<Self, SignerError> {
        let seed: &[u8; 32] = seed.try_into().map_err(|_| SignerError::SeedLength(seed.len()))?;
        Ok(Self::from_seed(seed))
    }

    fn from_seed(seed: &[u8; 32]) -> Self {
        let key = SigningKey::from_bytes(seed);
        let kid = kid_for(&key.verifying_key());
        Self { key, kid }
    }

    /// The 32-byte private key seed, to persist. Secret: the caller must store it with
    /// owner-only permissions and never log it.
    pub fn seed_bytes(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// The key id: base64url of the first 12 bytes of SHA-256 of the public key. Derived rather
    /// than random so that reloading the same key yields the same id.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The public key as a JWK, for the JWKS the gateways are configured with.
    pub fn public_jwk(&self) -> Jwk {
        let alg = Algorithm::EdDSA;
        Jwk {
            kty: alg.key_type().to_owned(),
            crv: alg.curve().to_owned(),
            x: URL_SAFE_NO_PAD.encode(self.key.verifying_key().as_bytes()),
            kid: self.kid.clone(),
            alg: alg.as_str().to_owned(),
            key_use: "sig".to_owned(),
        }
    }

    /// Signs `claims` into a compact JWS with header `{"alg":"EdDSA","typ":"JWT","kid":...}`.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = SignedHeader { alg: Algorithm::EdDSA.as_str(), typ: "JWT", kid: &self.kid };
        let mut token = String::with_capacity(512);
        URL_SAFE_NO_PAD.encode_string(to_json(&header), &mut token);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(to_json(claims), &mut token);
        let signature = self.key.sign(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(signature.to_bytes(), &mut token);
        token
    }
}

impl fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSigner").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Serializes one of our own header or claims structs. They hold only strings and integers,
/// for which serde_json cannot fail, so a failure is a bug in this crate.
fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("serializing strings and integers to JSON cannot fail")
}

fn kid_for(key: &VerifyingKey) -> String {
    let digest = Sha256::digest(key.as_bytes());
    URL_SAFE_NO_PAD.encode(&digest[..12])
}

/// The header [`TokenSigner::sign`] writes.
#[derive(Serialize)]
struct SignedHeader<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

/// The header fields verification reads. Unknown fields are ignored except `crit`, whose presence
/// means the issuer requires extensions this crate does not implement (RFC 7515, 4.1.11). A
/// duplicated field is a parse error, so a token cannot show one `alg` to us and another to
/// someone else.
#[derive(Deserialize)]
struct ReceivedHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde::de::IgnoredAny>,
}

/// Why a JWKS was refused for a pinned algorithm.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwksError {
    /// The set has no keys, so no token could ever verify.
    #[error("jwks contains no keys")]
    Empty,
    /// A key's `kty`, `crv`, `alg` or `use` does not fit the pinned algorithm.
    #[error("jwk '{kid}': {field} is '{found}', expected '{expected}'")]
    Mismatch {
        /// The key's id.
        kid: String,
        /// The JWK member that does not fit.
        field: &'static str,
        /// Its value.
        found: String,
        /// The value the pinned algorithm needs.
        expected: &'static str,
    },
    /// A key's `x` is not base64url of a 32-byte Ed25519 public key, or is a weak (small-order)
    /// point.
    #[error("jwk '{0}': x is not a valid ed25519 public key")]
    InvalidPublicKey(String),
    /// Two keys share a `kid`, so a token's key would be ambiguous.
    #[error("jwk kid '{0}' appears more than once")]
    DuplicateKid(String),
}

/// Why a token was refused. Messages never contain the token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a well-formed compact JWS with valid header and claims, or longer than
    /// [`MAX_TOKEN_LEN`].
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is not the pinned algorithm.
    #[error("token algorithm not allowed")]
    AlgorithmNotAllowed,
    /// No configured key has the token's `kid`, or the token has no `kid` and several keys are
    /// configured.
    #[error("token signed with an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("bad token signature")]
    BadSignature,
    /// `exp` is not after the current time.
    #[error("token expired")]
    Expired,
    /// `iat` is more than [`IAT_LEEWAY_SECS`] in the future.
    #[error("token not yet valid")]
    NotYetValid,
}

/// Verifies tokens against a pinned algorithm and a fixed set of public keys. Cloning is cheap
/// (the keys are shared).
#[derive(Clone)]
pub struct TokenVerifier {
    alg: Algorithm,
    keys: Arc<[(String, VerifyingKey)]>,
}

impl TokenVerifier {
    /// A verifier for tokens signed with `alg` by one of the keys in `jwks`. Refuses an empty set,
    /// keys whose `kty`, `crv`, `alg` or `use` do not fit `alg`, invalid or weak public keys, and
    /// duplicate key ids.
    pub fn new(alg: Algorithm, jwks: &Jwks) -> Result<Self, JwksError> {
        if jwks.keys.is_empty() {
            return Err(JwksError::Empty);
        }
        let mut keys: Vec<(String, VerifyingKey)> = Vec::with_capacity(jwks.keys.len());
        for jwk in &jwks.keys {
            for (field, found, expected) in [
                ("kty", &jwk.kty, alg.key_type()),
                ("crv", &jwk.crv, alg.curve()),
                ("alg", &jwk.alg, alg.as_str()),
                ("use", &jwk.key_use, "sig"),
            ] {
                if found != expected {
                    return Err(JwksError::Mismatch { kid: jwk.kid.clone(), field, found: found.clone(), expected });
                }
            }
            let key = decode_public_key(&jwk.x).ok_or_else(|| JwksError::InvalidPublicKey(jwk.kid.clone()))?;
            if keys.iter().any(|(kid, _)| *kid == jwk.kid) {
                return Err(JwksError::DuplicateKid(jwk.kid.clone()));
            }
            keys.push((jwk.kid.clone(), key));
        }
        Ok(Self { alg, keys: keys.into() })
    }

    /// The pinned algorithm.
    pub fn algorithm(&self) -> Algorithm {
        self.alg
    }

    /// Verifies `token` at time `now_unix` (seconds since the Unix epoch) and returns its claims.
    /// The caller still has to check `aud` (and `iss`, `sub` where they matter). Never panics.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Claims, TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed);
        };

        let header: ReceivedHeader = parse_object(&decode_b64(header_b64)?)?;
        // Exact comparison with the pinned algorithm before anything touches the signature:
        // "none", HMAC algorithms and case variants are refused here, whatever else the token says.
        if header.alg != self.alg.as_str() {
            return Err(TokenError::AlgorithmNotAllowed);
        }
        if header.crit.is_some() {
            return Err(TokenError::Malformed);
        }
        let key = self.key_for(header.kid.as_deref())?;

        if signature_b64.len() != SIGNATURE_B64_LEN {
            return Err(TokenError::Malformed);
        }
        let signature_bytes: [u8; 64] =
            decode_b64(signature_b64)?.as_slice().try_into().map_err(|_| TokenError::Malformed)?;
        let signature = Signature::from_bytes(&signature_bytes);
        // The signing input is the first two parts as they appear in the token, dot included.
        let signing_input = &token.as_bytes()[..header_b64.len() + 1 + payload_b64.len()];
        key.verify_strict(signing_input, &signature).map_err(|_| TokenError::BadSignature)?;

        let claims: Claims = parse_object(&decode_b64(payload_b64)?)?;
        if now_unix >= claims.exp {
            return Err(TokenError::Expired);
        }
        if claims.iat > now_unix.saturating_add(IAT_LEEWAY_SECS) {
            return Err(TokenError::NotYetValid);
        }
        Ok(claims)
    }

    fn key_for(&self, kid: Option<&str>) -> Result<&VerifyingKey, TokenError> {
        match (kid, &*self.keys) {
            (Some(kid), keys) => keys.iter().find(|(k, _)| k == kid).map(|(_, key)| key).ok_or(TokenError::UnknownKey),
            // Without a kid the key is unambiguous only if there is one.
            (None, [(_, key)]) => Ok(key),
            (None, _) => Err(TokenError::UnknownKey),
        }
    }
}

impl fmt::Debug for TokenVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kids: Vec<&str> = self.keys.iter().map(|(kid, _)| kid.as_str()).collect();
        f.debug_struct("TokenVerifier").field("alg", &self.alg).field("kids", &kids).finish()
    }
}

/// Strict base64url without padding; the engine also refuses non-zero trailing bits, so each
/// byte string has exactly one encoding and a token cannot be altered without breaking it.
fn decode_b64(s: &str) -> Result<Vec<u8>, TokenError> {
    URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Malformed)
}

/// Parses a JOSE header or claims set, which must be a JSON object (RFC 7515, 4; RFC 7519, 7.2).
/// serde would also fill a struct from a JSON array of its fields in order, which no issuer
/// writes, so that shape is refused before serde sees it.
fn parse_object<T: serde::de::DeserializeOwned>(json: &[u8]) -> Result<T, TokenError> {
    if json.trim_ascii_start().first() != Some(&b'{') {
        return Err(TokenError::Malformed);
    }
    serde_json::from_slice(json).map_err(|_| TokenError::Malformed)
}

fn decode_public_key(x: &str) -> Option<VerifyingKey> {
    let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(x).ok()?.as_slice().try_into().ok()?;
    let key = VerifyingKey::from_bytes(&bytes).ok()?;
    // verify_strict would refuse every signature under a small-order key anyway; refusing it at
    // configuration time turns a silent outage into an error.
    (!key.is_weak()).then_some(key)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    const NOW: u64 = 1_750_000_000;

    fn claims() -> Claims {
        Claims {
            iss: "https://control.example".into(),
            sub: "team-a".into(),
            aud: "endpoint:resnet".into(),
            iat: NOW - 10,
            exp: NOW + 3600,
        }
    }

    fn verifier_for(signers: &[&TokenSigner]) -> TokenVerifier {
        let jwks = Jwks { keys: signers.iter().map(|s| s.public_jwk()).collect() };
        TokenVerifier::new(Algorithm::EdDSA, &jwks).unwrap()
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    /// A token with an arbitrary header and payload, validly signed by `signer`'s key, to show
    /// that refusals are not just signature failures.
    fn sign_raw(signer: &TokenSigner, header: &str, payload: &str) -> String {
        let input = format!("{}.{}", b64(header.as_bytes()), b64(payload.as_bytes()));
        let signature = signer.key.sign(input.as_bytes());
        format!("{input}.{}", b64(&signature.to_bytes()))
    }

    fn claims_json(c: &Claims) -> String {
        serde_json::to_string(c).unwrap()
    }

    #[test]
    fn algorithm_parses_only_eddsa() {
        assert_eq!("EdDSA".parse::<Algorithm>(), Ok(Algorithm::EdDSA));
        assert_eq!(Algorithm::EdDSA.as_str(), "EdDSA");
        assert_eq!(Algorithm::EdDSA.to_string(), "EdDSA");
        for bad in ["HS256", "RS256", "none", "eddsa", "EDDSA", "", "EdDSA "] {
            assert!(bad.parse::<Algorithm>().is_err(), "{bad:?}");
        }
        assert_eq!(
            "HS256".parse::<Algorithm>().unwrap_err().to_string(),
            "unsupported JWT algorithm 'HS256'; supported: EdDSA"
        );
        assert_eq!(serde_json::from_str::<Algorithm>("\"EdDSA\"").unwrap(), Algorithm::EdDSA);
        assert!(serde_json::from_str::<Algorithm>("\"HS256\"").is_err());
        assert_eq!(serde_json::to_string(&Algorithm::EdDSA).unwrap(), "\"EdDSA\"");
    }

    #[test]
    fn sign_verify_round_trip() {
        let signer = TokenSigner::generate();
        let token = signer.sign(&claims());
        assert_eq!(verifier_for(&[&signer]).verify(&token, NOW), Ok(claims()));
    }

    #[test]
    fn signed_header_is_eddsa_jwt_with_kid() {
        let signer = TokenSigner::generate();
        let token = signer.sign(&claims());
        let header_b64 = token.split('.').next().unwrap();
        let header: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(header_b64).unwrap()).unwrap();
        assert_eq!(header, serde_json::json!({"alg": "EdDSA", "typ": "JWT", "kid": signer.kid()}));
    }

    #[test]
    fn kid_is_16_chars_derived_from_public_key() {
        let signer = TokenSigner::generate();
        assert_eq!(signer.kid().len(), 16);
        let public = URL_SAFE_NO_PAD.decode(&signer.public_jwk().x).unwrap();
        assert_eq!(signer.kid(), b64(&Sha256::digest(&public)[..12]));
        assert_ne!(signer.kid(), TokenSigner::generate().kid());
    }

    #[test]
    fn seed_round_trip_keeps_kid_and_verifiability() {
        let signer = TokenSigner::generate();
        let seed = signer.seed_bytes();
        let reloaded = TokenSigner::from_seed_bytes(&seed).unwrap();
        assert_eq!(reloaded.kid(), signer.kid());
        assert_eq!(reloaded.public_jwk(), signer.public_jwk());
        // A token from the reloaded key verifies against the original's JWKS and vice versa.
        assert_eq!(verifier_for(&[&signer]).verify(&reloaded.sign(&claims()), NOW), Ok(claims()));
        assert_eq!(verifier_for(&[&reloaded]).verify(&signer.sign(&claims()), NOW), Ok(claims()));
        assert_eq!(TokenSigner::from_seed_bytes(&seed[..31]).unwrap_err(), SignerError::SeedLength(31));
        assert_eq!(TokenSigner::from_seed_bytes(&[0u8; 33]).unwrap_err(), SignerError::SeedLength(33));
    }

    #[test]
    fn known_seed_gives_known_public_key() {
        // RFC 8037, appendix A.1/A.2: the private key "d" and its public key "x".
        let seed = URL_SAFE_NO_PAD.decode("nWGxne_9WmC6hEr0kuwsxERJxWl7MmkZcDusAxyuf2A").unwrap();
        let signer = TokenSigner::from_seed_bytes(&seed).unwrap();
        assert_eq!(signer.public_jwk().x, "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo");
    }

    #[test]
    fn signer_debug_hides_the_private_key() {
        let signer = TokenSigner::generate();
        let debug = format!("{signer:?}");
        let seed = signer.seed_bytes();
        assert!(debug.contains(signer.kid()));
        assert!(!debug.contains(&b64(&seed)));
        assert!(!debug.contains(&hex::encode(seed)));
        assert_eq!(debug, format!("TokenSigner {{ kid: {:?}, .. }}", signer.kid()));
    }

    #[test]
    fn expiry_is_enforced_at_exp() {
        let signer = TokenSigner::generate();
        let verifier = verifier_for(&[&signer]);
        let token = signer.sign(&Claims { exp: NOW + 1, ..claims() });
        assert!(verifier.verify(&token, NOW).is_ok());
        assert_eq!(verifier.verify(&token, NOW + 1), Err(TokenError::Expired));
        assert_eq!(verifier.verify(&token, NOW + 100_000), Err(TokenError::Expired));
    }

    #[test]
    fn iat_may_be_at_most_a_minute_ahead() {
        let signer = TokenSigner::generate();
        let verifier = verifier_for(&[&signer]);
        let ok = signer.sign(&Claims { iat: NOW + IAT_LEEWAY_SECS, ..claims() });
        assert!(verifier.verify(&ok, NOW).is_ok());
        let early = signer.sign(&Claims { iat: NOW + IAT_LEEWAY_SECS + 1, ..claims() });
        assert_eq!(verifier.verify(&early, NOW), Err(TokenError::NotYetValid));
        // No overflow at the top of the range.
        let far = signer.sign(&Claims { iat: u64::MAX, exp: u64::MAX, ..claims() });
        assert_eq!(verifier.verify(&far, u64::MAX - 1), Ok(Claims { iat: u64::MAX, exp: u64::MAX, ..claims() }));
    }

    #[test]
    fn alg_none_is_refused() {
        let signer = TokenSigner::generate();
        let verifier = verifier_for(&[&signer]);
        let payload = b64(claims_json(&claims()).as_bytes());
        for header in [r#"{"alg":"none"}"#, &format!(r#"{{"alg":"none","kid":"{}"}}"#, signer.kid())] {
            let token = format!("{}.{payload}.", b64(header.as_bytes()));
            assert_eq!(verifier.verify(&token, NOW), Err(TokenError::AlgorithmNotAllowed), "{header}");
        }
    }

    #[test]
    fn other_algorithms_are_refused_even_when_validly_signed() {
        let signer = TokenSigner::generate();
        let verifier = verifier_for(&[&signer]);
        let payload = claims_json(&claims());
        for alg in ["HS256", "RS256", "ES256", "eddsa", "EDDSA", "Ed25519", "none", ""] {
            let header = format!(r#"{{"alg":"{alg}","typ":"JWT","kid":"{}"}}"#, signer.kid());
            let token = sign_raw(&signer, &header, &payload);
            assert_eq!(verifier.verify(&token, NOW), Err(TokenError::AlgorithmNotAllowed), "{alg}");
        }
        // Control: the same construction with the pinned alg verifies.
        let header = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, signer.kid());
        assert_eq!(verifier.verify(&sign_raw(&signer, &header, &payload), NOW), Ok(claims()));
    }

    #[test]
    fn hs256_token_keyed_with_public_key_is_refused() {
        // The classic confusion attack: an HMAC "signature" over the input keyed with the public
        // key. The alg check refuses it before the signature is looked at.
        let signer = TokenSigner::generate();
        let header = format!(r#"{{"alg":"HS256","typ":"JWT","kid":"{}"}}"#, signer.kid());
        let input = format!("{}.{}", b64(header.as_bytes()), b64(claims_json(&claims()).as_bytes()));
        let token = format!("{input}.{}", b64(&Sha256::digest(input.as_bytes())));
        assert_eq!(verifier_for(&[&signer]).verify(&token, NOW), Err(TokenError::AlgorithmNotAllowed));
    }

    #[test]
    fn duplicate_alg_in_header_is_malformed() {
        let signer = TokenSigner::generate();
        let header = format!(r#"{{"alg":"none","alg":"EdDSA","kid":"{}"}}"#, signer.kid());
        let token = sign_raw(&signer, &header, &claims_json(&claims()));
        assert_eq!(verifier_for(&[&signer]).verify(&token, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn crit_header_is_refused() {
        let signer = TokenSigner::generate();
        let header = format!(r#"{{"alg":"EdDSA","kid":"{}","crit":["exp"]}}"#, signer.kid());
        let token = sign_raw(&signer, &header, &claims_json(&claims()));
        assert_eq!(verifier_for(&[&signer]).verify(&token, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn token_from_another_signer_is_refused() {
        let trusted = TokenSigner::generate();
        let attacker = TokenSigner::generate();
        let verifier = verifier_for(&[&trusted]);
        assert_eq!(verifier.verify(&attacker.sign(&claims()), NOW), Err(TokenError::UnknownKey));
        // Same token with the trusted kid forged into the header, signed by the attacker.
        let header = format!(r#"{{"alg":"EdDSA","typ":"JWT","kid":"{}"}}"#, trusted.kid());
        let forged = sign_raw(&attacker, &header, &claims_json(&claims()));
        assert_eq!(verifier.verify(&forged, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_payload_is_refused() {
        let signer = TokenSigner::generate();
        let verifier = verifier_for(&[&signer]);
        let token = signer.sign(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let escalated = Claims { aud: "service:admin".into(), ..claims() };
        let tampered = format!("{}.{}.{}", parts[0], b64(claims_json(&escalated).as_bytes()), parts[2]);
        assert_eq!(verifier.verify(&tampered, NOW), Err(TokenError::BadSignature));
        // Tampered header (kid kept) also breaks the signature.
        let header = format!(r#"{{"alg":"EdDSA","typ":"JWS","kid":"{}"}}"#, signer.kid());
        let tampered = format!("{}.{}.{}", b64(header.as_bytes()), parts[1], parts[2]);
        assert_eq!(verifier.verify(&tampered, NOW), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_signature_is_refused() {
        let signer = TokenSigner::generate();
        let verifier = verifier_for(&[&signer]);
        let token = signer.sign(&claims());
        let (input, signature) = token.rsplit_once('.').unwrap();
        let mut sig = URL_SAFE_NO_PAD.decode(signature).unwrap();
        sig[10] ^= 1;
        assert_eq!(verifier.verify(&format!("{input}.{}", b64(&sig)), NOW), Err(TokenError::BadSignature));
        // Non-canonical encoding of the same signature: the last character carries 2 data bits and
        // 4 trailing bits that must be zero; setting one must not yield a second valid token.
        let last = signature.as_bytes()[SIGNATURE_B64_LEN - 1];
        let alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
        let index = alphabet.iter().position(|&c| c == last).unwrap();
        let variant = alphabet[index ^ 1] as char;
        let malleated = format!("{input}.{}{variant}", &signature[..SIGNATURE_B64_LEN - 1]);
        assert_ne!(malleated, token);
        assert_eq!(verifier.verify(&malleated, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn kidless_token_needs_exactly_one_key() {
        let signer = TokenSigner::generate();
        let other = TokenSigner::generate();
        let token = sign_raw(&signer, r#"{"alg":"EdDSA","typ":"JWT"}"#, &claims_json(&claims()));
        assert_eq!(verifier_for(&[&signer]).verify(&token, NOW), Ok(claims()));
        assert_eq!(verifier_for(&[&signer, &other]).verify(&token, NOW), Err(TokenError::UnknownKey));
    }

    #[test]
    fn several_keys_allow_rotation() {
        let old = TokenSigner::generate();
        let new = TokenSigner::generate();
        let verifier = verifier_for(&[&old, &new]);
        assert_eq!(verifier.verify(&old.sign(&claims()), NOW), Ok(claims()));
        assert_eq!(verifier.verify(&new.sign(&claims()), NOW), Ok(claims()));
        let clone = verifier.clone();
        assert_eq!(clone.verify(&new.sign(&claims()), NOW), Ok(claims()));
        assert!(Arc::ptr_eq(&clone.keys, &verifier.keys));
    }

    #[test]
    fn unknown_claims_are_ignored_and_missing_ones_refused() {
        let signer = TokenSigner::generate();
        let verifier = verifier_for(&[&signer]);
        let header = format!(r#"{{"alg":"EdDSA","kid":"{}"}}"#, signer.kid());
        let mut value = serde_json::to_value(claims()).unwrap();
        value["scope"] = serde_json::json!(["a", "b"]);
        value["nonce"] = serde_json::json!(7);
        assert_eq!(verifier.verify(&sign_raw(&signer, &header, &value.to_string()), NOW), Ok(claims()));
        let mut missing = serde_json::to_value(claims()).unwrap();
        missing.as_object_mut().unwrap().remove("exp");
        assert_eq!(verifier.verify(&sign_raw(&signer, &header, &missing.to_string()), NOW), Err(TokenError::Malformed));
        let array = serde_json::json!(["https://control.example", "team-a", "endpoint:resnet", NOW - 10, NOW + 3600]);
        assert_eq!(verifier.verify(&sign_raw(&signer, &header, &array.to_string()), NOW), Err(TokenError::Malformed));
        let mut negative = serde_json::to_value(claims()).unwrap();
        negative["exp"] = serde_json::json!(-1);
        assert_eq!(
            verifier.verify(&sign_raw(&signer, &header, &negative.to_string()), NOW),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn oversized_token_is_refused_even_if_validly_signed() {
        let signer = TokenSigner::generate();
        let verifier = verifier_for(&[&signer]);
        let fits = signer.sign(&Claims { sub: "s".repeat(4000), ..claims() });
        assert!(fits.len() <= MAX_TOKEN_LEN);
        assert!(verifier.verify(&fits, NOW).is_ok());
        let huge = signer.sign(&Claims { sub: "s".repeat(MAX_TOKEN_LEN), ..claims() });
        assert!(huge.len() > MAX_TOKEN_LEN);
        assert_eq!(verifier.verify(&huge, NOW), Err(TokenError::Malformed));
    }

    #[test]
    fn garbage_is_malformed() {
        let signer = TokenSigner::generate();
        let verifier = verifier_for(&[&signer]);
        let token = signer.sign(&claims());
        let parts: Vec<&str> = token.split('.').collect();
        let cases = [
            String::new(),
            ".".into(),
            "..".into(),
            "...".into(),
            "abc".into(),
            format!("{}.{}", parts[0], parts[1]),
            format!("{token}.{}", parts[2]),
            format!("{token}."),
            format!("{}.{}.{}", "!!!!", parts[1], parts[2]),
            format!("{}=.{}.{}", parts[0], parts[1], parts[2]),
            format!("{}.{}.{}", b64(b"not json"), parts[1], parts[2]),
            format!("{}.{}.{}", b64(b"[\"EdDSA\"]"), parts[1], parts[2]),
            format!("{}.{}.{}", b64(br#"{"alg":7}"#), parts[1], parts[2]),
            format!("{}.{}.{}", parts[0], parts[1], &parts[2][..85]),
            format!("{}.{}.{}A", parts[0], parts[1], parts[2]),
            format!(" {token}"),
            "a".repeat(MAX_TOKEN_LEN + 1),
            "é".repeat(MAX_TOKEN_LEN),
        ];
        for case in &cases {
            assert_eq!(verifier.verify(case, NOW), Err(TokenError::Malformed), "{:.80}", case);
        }
        // The payload is decoded only once the signature has verified over its encoded form, so
        // garbage there is a signature failure.
        let bad_payload = format!("{}.{}!.{}", parts[0], parts[1], parts[2]);
        assert_eq!(verifier.verify(&bad_payload, NOW), Err(TokenError::BadSignature));
        // Control: the untouched token verifies, so the refusals above are about the changes.
        assert!(verifier.verify(&token, NOW).is_ok());
    }

    #[test]
    fn error_messages_never_contain_the_token() {
        let signer = TokenSigner::generate();
        let verifier = verifier_for(&[&signer]);
        let token = signer.sign(&Claims { exp: NOW, ..claims() });
        let err = verifier.verify(&token, NOW).unwrap_err();
        assert_eq!(err, TokenError::Expired);
        for part in token.split('.') {
            assert!(!err.to_string().contains(part) && !format!("{err:?}").contains(part));
        }
    }

    #[test]
    fn jwks_serde_round_trip() {
        let jwks = Jwks { keys: vec![TokenSigner::generate().public_jwk(), TokenSigner::generate().public_jwk()] };
        let json = serde_json::to_string(&jwks).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let first = &value["keys"][0];
        assert_eq!(first["kty"], "OKP");
        assert_eq!(first["crv"], "Ed25519");
        assert_eq!(first["alg"], "EdDSA");
        assert_eq!(first["use"], "sig");
        assert_eq!(first["kid"], jwks.keys[0].kid.as_str());
        assert_eq!(first["x"].as_str().unwrap().len(), 43);
        let back: Jwks = serde_json::from_str(&json).unwrap();
        assert_eq!(back, jwks);
        // Unknown members (as other issuers add) are ignored.
        let extended = json.replacen("\"kty\"", "\"x5t\":\"abc\",\"kty\"", 1);
        assert_eq!(serde_json::from_str::<Jwks>(&extended).unwrap(), jwks);
    }

    #[test]
    fn verifier_refuses_unfit_jwks() {
        let good = TokenSigner::generate().public_jwk();
        let check = |jwk: Jwk| TokenVerifier::new(Algorithm::EdDSA, &Jwks { keys: vec![jwk] }).unwrap_err();
        assert_eq!(
            check(Jwk { kty: "RSA".into(), ..good.clone() }),
            JwksError::Mismatch { kid: good.kid.clone(), field: "kty", found: "RSA".into(), expected: "OKP" }
        );
        assert!(matches!(
            check(Jwk { crv: "X25519".into(), ..good.clone() }),
            JwksError::Mismatch { field: "crv", .. }
        ));
        assert!(matches!(check(Jwk { alg: "RS256".into(), ..good.clone() }), JwksError::Mismatch { field: "alg", .. }));
        assert!(matches!(check(Jwk { alg: "eddsa".into(), ..good.clone() }), JwksError::Mismatch { field: "alg", .. }));
        assert!(matches!(
            check(Jwk { key_use: "enc".into(), ..good.clone() }),
            JwksError::Mismatch { field: "use", .. }
        ));
        for x in [
            String::new(),
            good.x[..42].to_string(),
            format!("{}A", good.x),
            format!("{}=", good.x),
            "!".repeat(43),
            // The identity point: a small-order key that would accept forged signatures under
            // non-strict verification.
            b64(&{
                let mut p = [0u8; 32];
                p[0] = 1;
                p
            }),
        ] {
            assert_eq!(
                check(Jwk { x: x.clone(), ..good.clone() }),
                JwksError::InvalidPublicKey(good.kid.clone()),
                "{x}"
            );
        }
        assert_eq!(TokenVerifier::new(Algorithm::EdDSA, &Jwks::default()).unwrap_err(), JwksError::Empty);
        let dup = Jwks { keys: vec![good.clone(), Jwk { x: TokenSigner::generate().public_jwk().x, ..good.clone() }] };
        assert_eq!(TokenVerifier::new(Algorithm::EdDSA, &dup).unwrap_err(), JwksError::DuplicateKid(good.kid.clone()));
        // Control: the unmodified key is accepted.
        assert!(TokenVerifier::new(Algorithm::EdDSA, &Jwks { keys: vec![good] }).is_ok());
    }

    #[test]
    fn verifier_debug_lists_kids_only() {
        let signer = TokenSigner::generate();
        let debug = format!("{:?}", verifier_for(&[&signer]));
        assert!(debug.contains(signer.kid()) && debug.contains("EdDSA"));
        assert!(!debug.contains(&signer.public_jwk().x));
    }
}
