//! Access tokens (JWT HS256 with issuer, audience, expiry and a key id) and refresh tokens
//! (opaque random strings, stored only as SHA-256 hashes).
//!
//! Keys rotate without logging anyone out: the current key signs, and `JWT_PREVIOUS_SECRET`
//! stays valid for verification; the `kid` header picks the key.

use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use rand::RngExt as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use common::{config::Secret, ids::UserId};

use crate::domain::Role;

/// The `iss` claim of every access token.
pub const ISSUER: &str = "floodgate";
/// The `aud` claim of every access token.
pub const AUDIENCE: &str = "floodgate-api";

/// The claims of an access token.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: UserId,
    /// The user's role when the token was issued.
    pub role: Role,
    /// Issuer.
    pub iss: String,
    /// Audience.
    pub aud: String,
    /// Issued at (Unix seconds).
    pub iat: u64,
    /// Expiry (Unix seconds).
    pub exp: u64,
    /// Token id.
    pub jti: Uuid,
}

/// Why an access token was refused.
#[derive(Debug, thiserror::Error)]
#[error("invalid access token: {0}")]
pub struct InvalidToken(String);

struct Key {
    kid: String,
    decoding: DecodingKey,
}

/// Signs and verifies access tokens.
pub struct TokenKeys {
    current_kid: String,
    encoding: EncodingKey,
    verifying: Vec<Key>,
    validation: Validation,
    access_ttl: Duration,
}

/// The key id of a secret: the first 8 bytes of its SHA-256, so the id reveals nothing.
fn kid_of(secret: &Secret) -> String {
    let digest = Sha256::digest(secret.expose().as_bytes());
    digest[..8].iter().map(|byte| format!("{byte:02x}")).collect()
}

impl TokenKeys {
    /// Keys from the current and, during a rotation, the previous secret.
    pub fn new(current: &Secret, previous: Option<&Secret>, access_ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.set_audience(&[AUDIENCE]);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let verifying = std::iter::once(current)
            .chain(previous)
            .map(|secret| Key {
                kid: kid_of(secret),
                decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            })
            .collect();
        Self {
            current_kid: kid_of(current),
            encoding: EncodingKey::from_secret(current.expose().as_bytes()),
            verifying,
            validation,
            access_ttl,
        }
    }

    /// The lifetime of a new access token.
    pub fn access_ttl(&self) -> Duration {
        self.access_ttl
    }

    /// Issues an access token for `user`.
    pub fn issue(&self, user: UserId, role: Role) -> anyhow::Result<String> {
        let now = jsonwebtoken::get_current_timestamp();
        let claims = Claims {
            sub: user,
            role,
            iss: ISSUER.to_owned(),
            aud: AUDIENCE.to_owned(),
            iat: now,
            exp: now + self.access_ttl.as_secs(),
            jti: Uuid::new_v4(),
        };
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(self.current_kid.clone());
        Ok(encode(&header, &claims, &self.encoding)?)
    }

    /// Verifies signature, algorithm (HS256 only: `none` and others are refused), issuer,
    /// audience and expiry (with the library's default leeway of 60 s).
    pub fn verify(&self, token: &str) -> Result<Claims, InvalidToken> {
        let header = decode_header(token).map_err(|err| InvalidToken(err.to_string()))?;
        let key = match header.kid.as_deref() {
            Some(kid) => self.verifying.iter().find(|key| key.kid == kid),
            None => None,
        }
        .ok_or_else(|| InvalidToken("unknown key id".to_owned()))?;
        decode::<Claims>(token, &key.decoding, &self.validation)
            .map(|data| data.claims)
            .map_err(|err| InvalidToken(err.to_string()))
    }
}

/// A new refresh token: 32 random bytes, base64url. Returned to the client once; only its
/// hash is stored.
pub fn new_refresh_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// The stored form of a refresh token.
pub fn hash_refresh_token(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(secret: &str) -> TokenKeys {
        TokenKeys::new(&Secret::new(secret), None, Duration::from_secs(900))
    }

    #[test]
    fn an_issued_token_verifies_with_its_claims() {
        let keys = keys("k1");
        let user = UserId::new();
        let claims = keys.verify(&keys.issue(user, Role::Organizer).unwrap()).unwrap();
        assert_eq!(claims.sub, user);
        assert_eq!(claims.role, Role::Organizer);
    }

    #[test]
    fn a_token_signed_with_another_key_is_refused() {
        let token = keys("k1").issue(UserId::new(), Role::Admin).unwrap();
        assert!(keys("k2").verify(&token).is_err());
    }

    #[test]
    fn the_previous_key_still_verifies_during_a_rotation() {
        let old = Secret::new("old");
        let token = TokenKeys::new(&old, None, Duration::from_secs(60))
            .issue(UserId::new(), Role::Customer)
            .unwrap();
        let rotated = TokenKeys::new(&Secret::new("new"), Some(&old), Duration::from_secs(60));
        assert!(rotated.verify(&token).is_ok());
    }

    #[test]
    fn refresh_tokens_are_random_and_hash_to_32_bytes() {
        let a = new_refresh_token();
        assert_ne!(a, new_refresh_token());
        assert_eq!(hash_refresh_token(&a).len(), 32);
    }
}
