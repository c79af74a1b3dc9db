//! `Idempotency-Key` (API.md "Conventions"): a repeat with the same key returns the first
//! result, the same key with a different body is 422 `idempotency_key_reused`.
//!
//! Two halves, shared by every mutating customer route:
//! - the ids a request creates (command id, payment id, ...) are derived from (route, user, key),
//!   so a repeated request is the same command, which the show's writer applies once and
//!   answers from its stored result;
//! - a Redis slot per (route, user, key) remembers a fingerprint of the first request's body,
//!   so a different request under the same key is refused before anything is queued.

use axum::http::HeaderMap;
use redis::{AsyncCommands as _, aio::ConnectionManager};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::error::ApiError;

/// How long a key (and a request id's owner) is remembered.
pub const REMEMBER_SECONDS: u64 = 24 * 3600;

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// The request's `Idempotency-Key`, if it sent one (1 to 255 visible ASCII characters).
pub fn key(headers: &HeaderMap) -> Result<Option<&str>, ApiError> {
    match headers.get("idempotency-key") {
        None => Ok(None),
        Some(value) => {
            let key = value
                .to_str()
                .ok()
                .filter(|key| !key.is_empty() && key.len() <= 255)
                .ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_idempotency_key",
                        "`Idempotency-Key` must be 1 to 255 visible ASCII characters.",
                    )
                })?;
            Ok(Some(key))
        }
    }
}

/// The request's `Idempotency-Key`, which this route requires (400 `idempotency_key_required`).
pub fn required_key(headers: &HeaderMap) -> Result<&str, ApiError> {
    key(headers)?.ok_or_else(|| {
        ApiError::bad_request(
            "idempotency_key_required",
            "This call needs an `Idempotency-Key` header, so that a retry cannot act twice.",
        )
    })
}

/// A UUID derived from `domain` and `parts`: the same inputs give the same id on every replica.
pub fn derive_uuid(domain: &str, parts: &[&[u8]]) -> uuid::Uuid {
    let mut hasher = Sha256::new();
    hasher.update(domain.as_bytes());
    hasher.update(b"\0");
    for part in parts {
        // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part);
    }
    let digest = hasher.finalize();
    let mut bytes = [0_u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// A fingerprint of what a request asks for (its body and whatever its path names).
pub fn fingerprint(request: &impl Serialize) -> String {
    hex(&Sha256::digest(serde_json::to_vec(request).unwrap_or_default()))
}

/// The Redis slot of `key` for `user` on route `scope`, under `prefix`.
pub fn slot(prefix: &str, scope: &str, user: impl std::fmt::Display, key: &str) -> String {
    let digest = hex(&Sha256::digest(key.as_bytes())[..16]);
    format!("{prefix}idem:{scope}:{user}:{digest}")
}

/// Whether a key was new.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First use of the key.
    First,
    /// A repeat of the same request.
    Repeat,
}

/// Claims `slot` for `fingerprint`: [`Claim::First`] the first time, [`Claim::Repeat`] for the
/// same fingerprint again, 422 `idempotency_key_reused` for another one.
pub async fn claim(redis: &mut ConnectionManager, slot: &str, fingerprint: &str) -> Result<Claim, ApiError> {
    let first = redis::cmd("SET")
        .arg(slot)
        .arg(fingerprint)
        .arg("NX")
        .arg("EX")
        .arg(REMEMBER_SECONDS)
        .query_async::<Option<String>>(redis)
        .await
        .map_err(redis_unavailable)?
        .is_some();
    if first {
        return Ok(Claim::First);
    }
    let stored: Option<String> = redis.get(slot).await.map_err(redis_unavailable)?;
    if stored.as_deref() == Some(fingerprint) {
        Ok(Claim::Repeat)
    } else {
        Err(ApiError::unprocessable(
            "idempotency_key_reused",
            "This Idempotency-Key was used with a different request.",
        ))
    }
}

/// Redis is needed for request bookkeeping; without it the request is a 503.
pub fn redis_unavailable(err: redis::RedisError) -> ApiError {
    tracing::warn!(error = %err, "redis unavailable for request bookkeeping");
    ApiError::Unavailable {
        code: "redis_unavailable",
        detail: "The service is temporarily unavailable; retry shortly.".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn derived_ids_depend_on_every_part_and_its_boundaries() {
        let a = derive_uuid("pay", &[b"user", b"key"]);
        assert_eq!(a, derive_uuid("pay", &[b"user", b"key"]));
        assert_ne!(a, derive_uuid("cancel", &[b"user", b"key"]));
        assert_ne!(a, derive_uuid("pay", &[b"user", b"key2"]));
        assert_ne!(derive_uuid("pay", &[b"ab", b"c"]), derive_uuid("pay", &[b"a", b"bc"]));
    }

    #[test]
    fn a_missing_key_is_refused_only_where_required() {
        let mut headers = HeaderMap::new();
        assert!(key(&headers).unwrap().is_none());
        assert_eq!(required_key(&headers).unwrap_err().code(), "idempotency_key_required");
        headers.insert("idempotency-key", "k-1".parse().unwrap());
        assert_eq!(required_key(&headers).unwrap(), "k-1");
        headers.insert("idempotency-key", "x".repeat(256).parse().unwrap());
        assert_eq!(key(&headers).unwrap_err().code(), "invalid_idempotency_key");
    }
}
