//! Webhook signatures, Stripe's scheme: `t=<unix>,v1=<hex hmac-sha256 of "<t>.<raw body>">`.
//! The card gateway signs its callbacks this way (`Gateway-Signature`, API.md "Payment gateway
//! callbacks"; the simulator signs, ingress verifies), and so does the notifier for organizers'
//! webhooks (`Floodgate-Signature`).
//!
//! The timestamp is inside the signed text, so an old delivery cannot be replayed with a fresh
//! `t`; the receiver refuses signatures older than its tolerance (300 s in ingress).

use hmac::{Hmac, KeyInit as _, Mac as _};
use sha2::Sha256;

/// The header carrying the card gateway's signature.
pub const HEADER: &str = "Gateway-Signature";

/// Why a signature header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// Not `t=<unix>,v1=<hex>`.
    #[error("malformed signature header")]
    Malformed,
    /// Signed too long ago (or too far in the future).
    #[error("signature timestamp outside the tolerance")]
    Stale,
    /// No `v1` value matches the body.
    #[error("signature does not match")]
    Mismatch,
}

fn mac(secret: &str, timestamp: i64, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

/// The `Gateway-Signature` value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let digest = mac(secret, timestamp, body).finalize().into_bytes();
    format!("t={timestamp},v1={}", hex(&digest))
}

/// Checks a signature header value against `body`, at `now` (unix seconds), accepting
/// timestamps at most `tolerance_seconds` away. Several `v1` values (a secret being rotated)
/// pass if any matches. The MAC is compared in constant time, and the age is checked only for a
/// genuine signature, so a forger learns nothing from the answer.
pub fn verify(secret: &str, header: &str, body: &[u8], now: i64, tolerance_seconds: i64) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut candidates = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", value)) => timestamp = Some(value.parse::<i64>().map_err(|_| SignatureError::Malformed)?),
            Some(("v1", value)) => candidates.push(unhex(value).ok_or(SignatureError::Malformed)?),
            Some(_) => {}
            None => return Err(SignatureError::Malformed),
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if candidates.is_empty() {
        return Err(SignatureError::Malformed);
    }
    // `verify_slice` compares in constant time.
    if !candidates
        .iter()
        .any(|candidate| mac(secret, timestamp, body).verify_slice(candidate).is_ok())
    {
        return Err(SignatureError::Mismatch);
    }
    if (now - timestamp).abs() > tolerance_seconds {
        return Err(SignatureError::Stale);
    }
    Ok(())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_is_the_hex_hmac_of_the_timestamp_and_body() {
        let header = sign("secret", 1_700_000_000, b"{\"id\":\"evt_1\"}");
        let (t, v1) = header.split_once(',').unwrap();
        assert_eq!(t, "t=1700000000");
        let v1 = v1.strip_prefix("v1=").unwrap();
        assert_eq!(v1.len(), 64);
        assert!(v1.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_eq!(
            verify("secret", &header, b"{\"id\":\"evt_1\"}", 1_700_000_010, 300),
            Ok(())
        );
    }

    #[test]
    fn a_tampered_body_an_old_timestamp_or_another_secret_is_refused() {
        let header = sign("secret", 1_700_000_000, b"body");
        assert_eq!(
            verify("secret", &header, b"bodY", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("other", &header, b"body", 1_700_000_000, 300),
            Err(SignatureError::Mismatch)
        );
        assert_eq!(
            verify("secret", &header, b"body", 1_700_000_301, 300),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify("secret", "v1=abcd", b"body", 1_700_000_000, 300),
            Err(SignatureError::Malformed)
        );
    }
}
