//! The payment gateway as the worker sees it: charge, find a charge again, refund, each with a
//! typed outcome. [`http::HttpGateway`] speaks the Stripe-shaped API of the simulator.
//!
//! An outcome is `Unknown` whenever the gateway may or may not have acted (timeout, connection
//! lost, 5xx, 409 while another request with the key is in flight): the caller retries with the
//! same idempotency key or reconciles, and never concludes that the card was not charged.

pub mod http;

use futures::future::BoxFuture;

/// One charge to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChargeRequest {
    /// Sent as `Idempotency-Key` on every attempt.
    pub idempotency_key: String,
    /// Minor units.
    pub amount_cents: i64,
    /// ISO 4217.
    pub currency: String,
    /// The card token.
    pub card_token: String,
    /// Stored on the intent (`payment_id`, `booking_id`, `show_id`): how it is found again.
    pub metadata: Vec<(String, String)>,
}

/// What became of a charge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChargeOutcome {
    /// The card was charged; `reference` is the gateway's intent id.
    Succeeded {
        /// The intent id.
        reference: String,
    },
    /// The charge was refused for good (card declined, invalid request).
    Declined {
        /// The gateway's code, e.g. `card_declined`.
        code: String,
        /// The intent id, when the gateway created one.
        reference: Option<String>,
    },
    /// Not known: retry with the same key, or reconcile.
    Unknown {
        /// Why, for the logs.
        reason: String,
    },
}

/// One refund to make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundRequest {
    /// Sent as `Idempotency-Key` on every attempt.
    pub idempotency_key: String,
    /// The charge's intent id.
    pub charge_reference: String,
    /// Minor units.
    pub amount_cents: i64,
    /// Stored on the refund (`refund_id`, `payment_id`).
    pub metadata: Vec<(String, String)>,
}

/// What became of a refund.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RefundOutcome {
    /// Money went back; `reference` is the gateway's refund id.
    Succeeded {
        /// The refund id.
        reference: String,
    },
    /// Refused for good (already refunded, more than charged...).
    Refused {
        /// The gateway's code.
        code: String,
    },
    /// Not known: retry with the same key.
    Unknown {
        /// Why, for the logs.
        reason: String,
    },
}

/// A payment gateway.
pub trait PaymentGateway: Send + Sync {
    /// Creates and confirms a charge (one attempt).
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> BoxFuture<'a, ChargeOutcome>;

    /// Finds the charge made for `payment_id` (its metadata), when the answer to the charge was
    /// lost. `Ok(None)`: the gateway has no such charge (it never received the request).
    fn find_charge<'a>(&'a self, payment_id: &'a str) -> BoxFuture<'a, Result<Option<ChargeOutcome>, String>>;

    /// Refunds (part of) a charge (one attempt).
    fn refund<'a>(&'a self, request: &'a RefundRequest) -> BoxFuture<'a, RefundOutcome>;

    /// Whether the gateway answers at all (readiness).
    fn ping(&self) -> BoxFuture<'_, Result<(), String>>;
}
