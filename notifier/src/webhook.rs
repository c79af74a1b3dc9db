//! Organizer webhooks: the booking facts of an event, POSTed as JSON to the URL its organizer
//! configured (`event.webhook_url`) and signed like the payment gateway's webhooks:
//!
//! `Floodgate-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 under event.webhook_secret of "<t>.<body>">`
//!
//! The receiver recomputes the HMAC over the raw body, compares in constant time and refuses old
//! timestamps (replays). `Floodgate-Event-Id` (the fact's message id, also the body's `id`) is
//! stable across retries, so the receiver can deduplicate. Each attempt is signed afresh.
//!
//! A 2xx answer delivers; 408, 425, 429 and 5xx answers, timeouts and connection errors are
//! retried; any other answer (the endpoint refuses the event) is permanent. Redirects are not
//! followed: the organizer configures the final URL.

use std::time::{Duration, Instant};

use reqwest::StatusCode;

use crate::{delivery::Failure, metrics};

/// The signature header.
pub const SIGNATURE_HEADER: &str = "Floodgate-Signature";
/// The header carrying the fact's message id.
pub const EVENT_ID_HEADER: &str = "Floodgate-Event-Id";

/// `t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>.<body>">` (the gateway's scheme).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    common::signature::sign(secret, timestamp, body)
}

/// Posts webhooks.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
}

impl WebhookClient {
    /// A client whose requests give up after `timeout`.
    pub fn new(timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("floodgate-notifier/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self { client })
    }

    /// POSTs `body` to `url`, signed with `secret`.
    #[tracing::instrument(skip(self, secret, body))]
    pub async fn post(&self, url: &str, secret: &str, event_id: &str, body: &[u8]) -> Result<(), Failure> {
        let signature = sign(secret, time::OffsetDateTime::now_utc().unix_timestamp(), body);
        let started = Instant::now();
        let answer = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .header(EVENT_ID_HEADER, event_id)
            .body(body.to_vec())
            .send()
            .await;
        let outcome = match answer {
            Ok(response) => classify_status(response.status()),
            Err(err) if err.is_builder() => Err(Failure::Permanent(format!("invalid webhook request: {err}"))),
            Err(err) => Err(Failure::Transient(format!("webhook request failed: {err}"))),
        };
        let label = outcome.as_ref().map_or_else(Failure::label, |()| "sent");
        metrics::webhook(label, started.elapsed().as_secs_f64());
        outcome
    }
}

fn classify_status(status: StatusCode) -> Result<(), Failure> {
    if status.is_success() {
        return Ok(());
    }
    let retry = status.is_server_error() || matches!(status.as_u16(), 408 | 425 | 429);
    let message = format!("webhook endpoint answered {status}");
    Err(if retry {
        Failure::Transient(message)
    } else {
        Failure::Permanent(message)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_the_hmac_of_timestamp_dot_body() {
        // Reference value: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac whsec_test
        let signature = sign("whsec_test", 1_700_000_000, br#"{"a":1}"#);
        assert_eq!(
            signature,
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
        assert_ne!(signature, sign("whsec_other", 1_700_000_000, br#"{"a":1}"#));
        assert_ne!(signature, sign("whsec_test", 1_700_000_001, br#"{"a":1}"#));
        assert_ne!(signature, sign("whsec_test", 1_700_000_000, br#"{"a":2}"#));
    }

    #[test]
    fn server_errors_and_throttling_are_retried_other_refusals_are_not() {
        assert!(classify_status(StatusCode::NO_CONTENT).is_ok());
        for status in [500, 502, 503, 408, 429] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(classify_status(status), Err(Failure::Transient(_))),
                "{status}"
            );
        }
        for status in [400, 401, 404, 410, 301] {
            let status = StatusCode::from_u16(status).unwrap();
            assert!(
                matches!(classify_status(status), Err(Failure::Permanent(_))),
                "{status}"
            );
        }
    }
}
