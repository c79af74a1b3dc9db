//! Admission tokens: proof that a fan was admitted from a show's waiting room.
//!
//! HS256 JWTs binding the user, the show, the queue number, an expiry (the end of the shopping
//! session) and a token id; the audience keeps them apart from access tokens. Verification uses
//! the library's HMAC check, which compares in constant time. Keys rotate: `ADMISSION_TOKEN_KEYS`
//! holds `kid:secret` pairs, the first signs, all verify, and the token's `kid` selects the key.

use common::ids::{ShowId, UserId};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation, decode, decode_header, encode};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The audience of admission tokens.
pub const AUDIENCE: &str = "floodgate-admission";
/// The issuer of admission tokens.
pub const ISSUER: &str = "floodgate-waiting-room";

/// What an admission token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionClaims {
    /// The admitted fan.
    pub sub: UserId,
    /// The show.
    pub show: ShowId,
    /// The fan's queue number.
    pub num: u64,
    /// End of the shopping session (Unix seconds).
    pub exp: u64,
    /// Issued at.
    pub iat: u64,
    /// Token id.
    pub jti: Uuid,
    /// Audience.
    pub aud: String,
    /// Issuer.
    pub iss: String,
}

/// Why a token was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    /// Malformed, forged, expired, of an unknown key or another audience.
    #[error("invalid admission token: {0}")]
    Invalid(String),
    /// Valid, but for another show or another user.
    #[error("the admission token is for another show or user")]
    WrongSubject,
}

/// Why the key list could not be read.
#[derive(Debug, thiserror::Error)]
#[error("ADMISSION_TOKEN_KEYS must be `kid:secret[,kid:secret...]` with secrets of 16+ bytes: {0}")]
pub struct KeyListError(String);

struct Key {
    kid: String,
    encoding: EncodingKey,
    decoding: DecodingKey,
}

/// Signs and verifies admission tokens.
pub struct AdmissionTokens {
    keys: Vec<Key>,
    validation: Validation,
}

impl AdmissionTokens {
    /// Parses `kid:secret[,kid:secret...]`; the first key signs.
    pub fn from_key_list(list: &str) -> Result<Self, KeyListError> {
        let mut keys = Vec::new();
        for entry in list.split(',').map(str::trim).filter(|entry| !entry.is_empty()) {
            let (kid, secret) = entry.split_once(':').ok_or_else(|| {
                KeyListError(format!(
                    "`{kid}` has no secret",
                    kid = entry.split(':').next().unwrap_or("")
                ))
            })?;
            if kid.is_empty() || secret.len() < 16 {
                return Err(KeyListError(format!(
                    "key `{kid}` is empty or its secret is shorter than 16 bytes"
                )));
            }
            keys.push(Key {
                kid: kid.to_owned(),
                encoding: EncodingKey::from_secret(secret.as_bytes()),
                decoding: DecodingKey::from_secret(secret.as_bytes()),
            });
        }
        if keys.is_empty() {
            return Err(KeyListError("no key".to_owned()));
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_audience(&[AUDIENCE]);
        validation.set_issuer(&[ISSUER]);
        validation.set_required_spec_claims(&["exp", "aud", "iss", "sub"]);
        // A session ends at its deadline; no grace beyond a little clock skew.
        validation.leeway = 5;
        Ok(Self { keys, validation })
    }

    /// Issues a token for `user`'s admission to `show` with queue `number`, valid until
    /// `expires_at` (Unix seconds).
    pub fn issue(
        &self,
        user: UserId,
        show: ShowId,
        number: u64,
        expires_at: u64,
    ) -> Result<String, jsonwebtoken::errors::Error> {
        let signer = &self.keys[0];
        let mut header = Header::new(Algorithm::HS256);
        header.kid = Some(signer.kid.clone());
        let claims = AdmissionClaims {
            sub: user,
            show,
            num: number,
            exp: expires_at,
            iat: jsonwebtoken::get_current_timestamp(),
            jti: Uuid::new_v4(),
            aud: AUDIENCE.to_owned(),
            iss: ISSUER.to_owned(),
        };
        encode(&header, &claims, &signer.encoding)
    }

    /// Verifies a token and that it admits `user` to `show`.
    pub fn verify(&self, token: &str, user: UserId, show: ShowId) -> Result<AdmissionClaims, TokenError> {
        let header = decode_header(token).map_err(|err| TokenError::Invalid(err.to_string()))?;
        let key = header
            .kid
            .as_deref()
            .and_then(|kid| self.keys.iter().find(|key| key.kid == kid))
            .ok_or_else(|| TokenError::Invalid("unknown key id".to_owned()))?;
        let claims = decode::<AdmissionClaims>(token, &key.decoding, &self.validation)
            .map_err(|err| TokenError::Invalid(err.to_string()))?
            .claims;
        if claims.sub != user || claims.show != show {
            return Err(TokenError::WrongSubject);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEYS: &str = "k2:second-secret-0123456789,k1:first-secret-0123456789";

    fn later() -> u64 {
        jsonwebtoken::get_current_timestamp() + 600
    }

    #[test]
    fn a_valid_token_is_accepted_and_binds_user_show_and_number() {
        let tokens = AdmissionTokens::from_key_list(KEYS).unwrap();
        let (user, show) = (UserId::new(), ShowId::new());
        let claims = tokens
            .verify(&tokens.issue(user, show, 42, later()).unwrap(), user, show)
            .unwrap();
        assert_eq!((claims.sub, claims.show, claims.num), (user, show, 42));
    }

    #[test]
    fn forged_foreign_expired_unknown_key_and_truncated_tokens_are_refused() {
        let tokens = AdmissionTokens::from_key_list(KEYS).unwrap();
        let (user, show) = (UserId::new(), ShowId::new());
        let valid = tokens.issue(user, show, 1, later()).unwrap();

        let forger = AdmissionTokens::from_key_list("k2:not-the-real-secret-at-all").unwrap();
        let forged = forger.issue(user, show, 1, later()).unwrap();
        assert!(matches!(
            tokens.verify(&forged, user, show),
            Err(TokenError::Invalid(_))
        ));

        assert_eq!(
            tokens.verify(&valid, user, ShowId::new()),
            Err(TokenError::WrongSubject)
        );
        assert_eq!(
            tokens.verify(&valid, UserId::new(), show),
            Err(TokenError::WrongSubject)
        );

        let expired = tokens
            .issue(user, show, 1, jsonwebtoken::get_current_timestamp() - 60)
            .unwrap();
        assert!(matches!(
            tokens.verify(&expired, user, show),
            Err(TokenError::Invalid(_))
        ));

        let stranger = AdmissionTokens::from_key_list("k9:some-other-secret-0123456").unwrap();
        let unknown_kid = stranger.issue(user, show, 1, later()).unwrap();
        assert!(matches!(
            tokens.verify(&unknown_kid, user, show),
            Err(TokenError::Invalid(_))
        ));

        let truncated = &valid[..valid.len() - 5];
        assert!(matches!(
            tokens.verify(truncated, user, show),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(tokens.verify("", user, show), Err(TokenError::Invalid(_))));
    }

    #[test]
    fn a_token_signed_with_a_retired_but_listed_key_still_verifies() {
        let old = AdmissionTokens::from_key_list("k1:first-secret-0123456789").unwrap();
        let (user, show) = (UserId::new(), ShowId::new());
        let token = old.issue(user, show, 3, later()).unwrap();
        assert!(
            AdmissionTokens::from_key_list(KEYS)
                .unwrap()
                .verify(&token, user, show)
                .is_ok()
        );
    }

    #[test]
    fn key_lists_without_keys_or_with_short_secrets_are_refused() {
        assert!(AdmissionTokens::from_key_list("").is_err());
        assert!(AdmissionTokens::from_key_list("k1:short").is_err());
        assert!(AdmissionTokens::from_key_list("nosecret").is_err());
    }
}
