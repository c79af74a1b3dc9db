//! API.md "Holds and bookings" (paying a held booking, reading a payment) and "Payment gateway
//! callbacks".
//!
//! Paying: ingress checks the booking (the caller's, `held`, unexpired) and publishes
//! `StartPayment` to the show's queue with a publisher confirm; the show's single writer
//! re-checks it in queue order, creates the `payment` row and hands the charge to the
//! payment-workers. The payment id and the command id are derived from (fan, `Idempotency-Key`),
//! which this route requires: a retried request is the same payment, so a card is never charged
//! twice because a response was lost. Until the writer has created the row, `GET
//! /payments/{id}` answers from a Redis marker (`processing`) or from the writer's stored
//! refusal (`failed` with its code).
//!
//! Webhooks: the signature is checked in constant time over the raw body, the event id is
//! recorded in `webhook_event` and the event is published to the payments exchange inside
//! one transaction that commits only after the broker confirmed the publish. So a 200 means
//! the event is durably queued; a failed publish rolls the record back and answers 503, and
//! the gateway's retry tries again. A replay of a recorded id is 200 with no second publish.
//! (If the commit itself fails after a confirmed publish, the retry publishes a second copy:
//! the payment-workers apply gateway events idempotently per payment.)

use axum::{
    Json,
    body::Bytes,
    extract::{State, rejection::BytesRejection},
    http::{HeaderMap, StatusCode},
};
use common::{
    contracts::{Envelope, GatewayEvent, StartPayment},
    ids::{BookingId, CommandId, PaymentId, UserId},
    mq::{PAYMENTS_ROUTING_KEY, PublishError},
};
use redis::AsyncCommands as _;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;

use crate::{
    app::AppState,
    auth::extract::AuthUser,
    error::{ApiError, ApiJson, ApiPath, Problem},
    idempotency::{self, Claim, REMEMBER_SECONDS, redis_unavailable},
    metrics,
    store::{bookings, payments, webhooks},
};

/// Signatures further than this from now (either way) are refused (API.md).
pub const SIGNATURE_TOLERANCE_SECONDS: i64 = 300;

/// How a fan pays.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PaymentMethod {
    /// A card, through a token the fan's browser got from the gateway.
    Card,
}

/// `POST /bookings/{id}/payments` body.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PaymentBody {
    /// `card`.
    pub payment_method: PaymentMethod,
    /// The gateway's card token (`tok_...`); no card data ever reaches Floodgate.
    pub card_token: String,
}

/// 202: the payment is on its way.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentStarted {
    /// Poll `GET /payments/{payment_id}` (or listen on the WebSocket).
    pub payment_id: PaymentId,
    /// `processing`.
    pub status: &'static str,
}

/// A payment as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct PaymentResponse {
    /// Id.
    pub payment_id: PaymentId,
    /// The booking it pays.
    pub booking_id: BookingId,
    /// processing, succeeded, failed or refunded.
    pub status: String,
    /// Amount charged, minor units.
    pub amount_cents: i64,
    /// ISO 4217.
    pub currency: String,
    /// Why it failed (`card_declined`, `hold_expired`, ...).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_code: Option<String>,
    /// Paid back so far, minor units.
    pub refunded_cents: i64,
}

impl From<payments::PaymentRow> for PaymentResponse {
    fn from(row: payments::PaymentRow) -> Self {
        Self {
            payment_id: row.payment_id,
            booking_id: row.booking_id,
            status: row.status,
            amount_cents: row.amount_cents,
            currency: row.currency,
            failure_code: row.failure_code,
            refunded_cents: row.refunded_cents,
        }
    }
}

/// Who started a payment whose row the writer has not created yet (Redis, under `pay:`).
#[derive(Debug, Serialize, Deserialize)]
struct PendingPayment {
    user_id: UserId,
    booking_id: BookingId,
    command_id: CommandId,
}

fn pending_key(state: &AppState, payment: PaymentId) -> String {
    format!("{}pay:{payment}", state.holds.prefix())
}

fn broker_unavailable(err: PublishError) -> ApiError {
    tracing::warn!(error = %err, "message not confirmed by the broker");
    ApiError::Unavailable {
        code: "broker_unavailable",
        detail: "The request could not be queued; nothing was charged. Retry with the same Idempotency-Key.".to_owned(),
    }
}

/// The ids of the payment a fan starts with `key`: the same key, the same payment.
fn payment_ids(user: UserId, key: &str) -> (PaymentId, CommandId) {
    let user = user.as_uuid();
    let parts: [&[u8]; 2] = [user.as_bytes(), key.as_bytes()];
    (
        PaymentId(idempotency::derive_uuid("floodgate-payment", &parts)),
        CommandId(idempotency::derive_uuid("floodgate-start-payment", &parts)),
    )
}

/// Whether a booking in `status`, held until `expires_at`, can be paid now.
fn payable(status: &str, expires_at: OffsetDateTime, now: OffsetDateTime) -> Result<(), ApiError> {
    match status {
        "held" if expires_at > now => Ok(()),
        "payment_pending" => Err(ApiError::conflict(
            "payment_in_progress",
            "A payment for this booking is already being processed.",
        )),
        "confirmed" | "cancelled" | "refunded" => Err(ApiError::conflict(
            "already_paid",
            "This booking has already been paid.",
        )),
        _ => Err(ApiError::conflict(
            "hold_expired",
            "The hold on these seats has ended; hold them again to buy them.",
        )),
    }
}

/// Starts paying a held booking.
#[utoipa::path(post, path = "/api/v1/bookings/{booking_id}/payments", tag = "payments", security(("bearer" = [])),
    params(("booking_id" = String, Path, format = Uuid),
        ("Idempotency-Key" = String, Header, description = "Required: a retry with the same key is the same payment")),
    request_body = PaymentBody,
    responses((status = 202, body = PaymentStarted),
        (status = 400, description = "invalid body, or no Idempotency-Key", body = Problem),
        (status = 404, body = Problem),
        (status = 409, description = "hold_expired, payment_in_progress or already_paid", body = Problem),
        (status = 422, description = "idempotency_key_reused", body = Problem),
        (status = 503, body = Problem)))]
pub async fn start_payment(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(booking): ApiPath<BookingId>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<PaymentBody>,
) -> Result<(StatusCode, Json<PaymentStarted>), ApiError> {
    let key = idempotency::required_key(&headers)?;
    let token = body.card_token.trim();
    if token.is_empty() || token.len() > 255 || token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::bad_request(
            "invalid_card_token",
            "`card_token` must be the gateway's token (1 to 255 characters).",
        ));
    }
    let found = bookings::find(&state.db, booking, user.user_id)
        .await?
        .ok_or(ApiError::NotFound("booking"))?;
    let (payment, command) = payment_ids(user.user_id, key);
    let accepted = || {
        (
            StatusCode::ACCEPTED,
            Json(PaymentStarted {
                payment_id: payment,
                status: "processing",
            }),
        )
    };
    let mut redis = state.holds.redis();
    let slot = idempotency::slot(state.holds.prefix(), "payment", user.user_id, key);
    let claim = idempotency::claim(&mut redis, &slot, &idempotency::fingerprint(&(booking, &body))).await?;
    // A repeat the writer has already answered gets the first answer again, whatever the
    // booking's status is by now. One it has not seen yet (the first publish may have failed)
    // goes through the checks and is published again: the writer applies a command id once.
    if claim == Claim::Repeat
        && (payments::find(&state.db, payment, user.user_id).await?.is_some()
            || payments::command_result(&state.db, command).await?.is_some())
    {
        return Ok(accepted());
    }
    payable(&found.status, found.expires_at, OffsetDateTime::now_utc())?;

    let pending = PendingPayment {
        user_id: user.user_id,
        booking_id: booking,
        command_id: command,
    };
    redis
        .set_ex::<_, _, ()>(
            pending_key(&state, payment),
            serde_json::to_string(&pending).unwrap_or_default(),
            REMEMBER_SECONDS,
        )
        .await
        .map_err(redis_unavailable)?;
    let envelope = Envelope::new(
        Some(found.show_id),
        StartPayment {
            command_id: command,
            user_id: user.user_id,
            booking_id: booking,
            payment_id: payment,
            card_token: token.to_owned(),
        },
    );
    let publisher = state.broker.publisher().map_err(|err| broker_unavailable(err.into()))?;
    publisher
        .publish(
            &state.broker.topology().shows_exchange(),
            &found.show_id.to_string(),
            &envelope,
        )
        .await
        .map_err(broker_unavailable)?;
    tracing::info!(%booking, %payment, "payment started");
    Ok(accepted())
}

/// One of the caller's payments.
#[utoipa::path(get, path = "/api/v1/payments/{payment_id}", tag = "payments", security(("bearer" = [])),
    params(("payment_id" = String, Path, format = Uuid)),
    responses((status = 200, body = PaymentResponse), (status = 404, body = Problem), (status = 401, body = Problem)))]
pub async fn get_payment(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(payment): ApiPath<PaymentId>,
) -> Result<Json<PaymentResponse>, ApiError> {
    if let Some(row) = payments::find(&state.db, payment, user.user_id).await? {
        return Ok(Json(row.into()));
    }
    // Not created (yet): was it started by this fan?
    let mut redis = state.holds.redis();
    let marker: Option<String> = redis
        .get(pending_key(&state, payment))
        .await
        .map_err(redis_unavailable)?;
    let pending = marker
        .and_then(|marker| serde_json::from_str::<PendingPayment>(&marker).ok())
        .filter(|pending| pending.user_id == user.user_id)
        .ok_or(ApiError::NotFound("payment"))?;
    let booking = bookings::find(&state.db, pending.booking_id, user.user_id)
        .await?
        .ok_or(ApiError::NotFound("payment"))?;
    let mut response = PaymentResponse {
        payment_id: payment,
        booking_id: pending.booking_id,
        status: "processing".to_owned(),
        amount_cents: booking.total_cents,
        currency: booking.currency,
        failure_code: None,
        refunded_cents: 0,
    };
    if let Some(result) = payments::command_result(&state.db, pending.command_id).await? {
        match result["code"].as_str() {
            // The writer refused to start it (the hold had expired, ...).
            Some(code) => {
                response.status = "failed".to_owned();
                response.failure_code = Some(code.to_owned());
            }
            // Accepted: the row was written with the command, after our first read.
            None => {
                if let Some(row) = payments::find(&state.db, payment, user.user_id).await? {
                    return Ok(Json(row.into()));
                }
            }
        }
    }
    Ok(Json(response))
}

/// A gateway webhook event (the fields ingress reads; others are kept as sent).
#[derive(Debug, Deserialize, ToSchema)]
pub struct GatewayWebhook {
    /// The gateway's event id (`evt_...`), unique per event.
    pub id: String,
    /// The event type, e.g. `payment_intent.succeeded`, `charge.refunded`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The event's object.
    pub data: GatewayWebhookData,
}

/// `data` of a gateway event.
#[derive(Debug, Deserialize, ToSchema)]
pub struct GatewayWebhookData {
    /// The payment intent or refund the event is about.
    #[schema(value_type = Object)]
    pub object: serde_json::Value,
}

/// 200: the event is durably queued (or was already).
#[derive(Debug, Serialize, ToSchema)]
pub struct WebhookAck {
    /// Always true.
    pub received: bool,
    /// True when this event id had been received before (nothing was done again).
    pub duplicate: bool,
}

/// Why a `Gateway-Signature` was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignatureError {
    /// Missing, malformed, or no `v1` matches.
    Invalid,
    /// Valid, but signed more than the tolerance away from now.
    Stale,
}

/// Checks `Gateway-Signature: t=<unix>,v1=<hex hmac-sha256 of "<t>.<body>">` (several `v1`
/// values, as during a secret rotation, pass if any matches). The MAC is compared in constant
/// time; the age is checked only for a genuine signature, so forgers learn nothing from it.
pub fn verify_signature(secret: &[u8], header: &str, body: &[u8], now: i64) -> Result<(), SignatureError> {
    let secret = std::str::from_utf8(secret).map_err(|_| SignatureError::Invalid)?;
    match common::signature::verify(secret, header, body, now, SIGNATURE_TOLERANCE_SECONDS) {
        Ok(()) => Ok(()),
        Err(common::signature::SignatureError::Stale) => Err(SignatureError::Stale),
        Err(common::signature::SignatureError::Malformed | common::signature::SignatureError::Mismatch) => {
            Err(SignatureError::Invalid)
        }
    }
}

/// Receives a payment gateway event.
#[utoipa::path(post, path = "/api/v1/payments/webhook", tag = "payments",
    params(("Gateway-Signature" = String, Header, description = "t=<unix>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\">")),
    request_body = GatewayWebhook,
    responses((status = 200, body = WebhookAck),
        (status = 400, description = "invalid_signature, stale_signature or invalid_event", body = Problem),
        (status = 413, body = Problem),
        (status = 503, description = "not queued; the gateway should retry", body = Problem)))]
pub async fn webhook(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<WebhookAck>, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::bad_request("invalid_body", rejection.body_text())
        }
    })?;
    let header = headers
        .get("gateway-signature")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    let now = OffsetDateTime::now_utc().unix_timestamp();
    match verify_signature(state.gateway_webhook_secret.expose().as_bytes(), header, &body, now) {
        Ok(()) => {}
        Err(SignatureError::Invalid) => {
            metrics::webhook("invalid_signature");
            return Err(ApiError::bad_request(
                "invalid_signature",
                "The Gateway-Signature header is missing or does not match the body.",
            ));
        }
        Err(SignatureError::Stale) => {
            metrics::webhook("stale_signature");
            return Err(ApiError::bad_request(
                "stale_signature",
                "The Gateway-Signature timestamp is too far from now.",
            ));
        }
    }
    let invalid_event = || {
        metrics::webhook("invalid_event");
        ApiError::bad_request(
            "invalid_event",
            "The body is not a gateway event `{id, type, data: {object}}`.",
        )
    };
    let payload: serde_json::Value = serde_json::from_slice(&body).map_err(|_| invalid_event())?;
    let event: GatewayWebhook = serde_json::from_value(payload.clone()).map_err(|_| invalid_event())?;
    if event.id.is_empty() || event.id.len() > 255 || event.kind.is_empty() || event.kind.len() > 255 {
        return Err(invalid_event());
    }

    // Record and publish as one unit: the record commits only once the broker has the event.
    let mut tx = state.db.begin().await?;
    if !webhooks::insert(&mut *tx, &event.id, &event.kind, &payload).await? {
        tx.rollback().await?;
        metrics::webhook("duplicate");
        tracing::info!(event_id = %event.id, "gateway event replayed; already queued");
        return Ok(Json(WebhookAck {
            received: true,
            duplicate: true,
        }));
    }
    let envelope = Envelope::new(
        None,
        GatewayEvent {
            event_id: event.id.clone(),
            event_type: event.kind.clone(),
            object: event.data.object,
        },
    );
    let published = match state.broker.publisher() {
        Ok(publisher) => {
            publisher
                .publish(
                    &state.broker.topology().payments_exchange(),
                    PAYMENTS_ROUTING_KEY,
                    &envelope,
                )
                .await
        }
        Err(err) => Err(err.into()),
    };
    if let Err(err) = published {
        // Dropping the transaction rolls the record back, so the gateway's retry is not a replay.
        drop(tx);
        metrics::webhook("unavailable");
        tracing::warn!(event_id = %event.id, error = %err, "gateway event not queued");
        return Err(ApiError::Unavailable {
            code: "broker_unavailable",
            detail: "The event could not be queued; retry later.".to_owned(),
        });
    }
    tx.commit().await?;
    metrics::webhook("queued");
    tracing::info!(event_id = %event.id, event_type = %event.kind, "gateway event queued");
    Ok(Json(WebhookAck {
        received: true,
        duplicate: false,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sign(secret: &[u8], timestamp: i64, body: &[u8]) -> String {
        common::signature::sign(std::str::from_utf8(secret).unwrap(), timestamp, body)
    }

    #[test]
    fn a_genuine_recent_signature_passes_and_everything_else_is_refused() {
        let (secret, body, now) = (b"whsec", br#"{"id":"evt_1"}"#.as_slice(), 1_900_000_000);
        assert_eq!(
            verify_signature(secret, &sign(secret, now - 10, body), body, now),
            Ok(())
        );
        assert_eq!(
            verify_signature(secret, &sign(secret, now + 299, body), body, now),
            Ok(())
        );
        assert_eq!(
            verify_signature(secret, &sign(secret, now - 301, body), body, now),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(secret, &sign(secret, now + 301, body), body, now),
            Err(SignatureError::Stale)
        );
        assert_eq!(
            verify_signature(b"other", &sign(secret, now, body), body, now),
            Err(SignatureError::Invalid)
        );
        assert_eq!(
            verify_signature(secret, &sign(secret, now, body), b"{}", now),
            Err(SignatureError::Invalid)
        );
        // A forged old signature says "invalid", not "stale".
        assert_eq!(
            verify_signature(b"other", &sign(secret, now - 1000, body), body, now),
            Err(SignatureError::Invalid)
        );
        for header in [
            "",
            "t=abc,v1=00",
            "v1=00",
            &format!("t={now}"),
            &format!("t={now},v1=zz"),
        ] {
            assert_eq!(
                verify_signature(secret, header, body, now),
                Err(SignatureError::Invalid),
                "{header}"
            );
        }
        // A rotated secret: any matching v1 passes.
        let header = format!("{},v1=abcd", sign(secret, now, body));
        assert_eq!(verify_signature(secret, &header, body, now), Ok(()));
    }

    #[test]
    fn only_a_live_unexpired_hold_is_payable() {
        let now = OffsetDateTime::now_utc();
        let later = now + time::Duration::minutes(5);
        assert!(payable("held", later, now).is_ok());
        for (status, expires, code) in [
            ("held", now, "hold_expired"),
            ("expired", later, "hold_expired"),
            ("released", later, "hold_expired"),
            ("payment_pending", later, "payment_in_progress"),
            ("confirmed", later, "already_paid"),
            ("refunded", later, "already_paid"),
        ] {
            assert_eq!(payable(status, expires, now).unwrap_err().code(), code, "{status}");
        }
    }

    #[test]
    fn the_same_fan_and_key_give_the_same_payment() {
        let user = UserId::new();
        assert_eq!(payment_ids(user, "k"), payment_ids(user, "k"));
        assert_ne!(payment_ids(user, "k").0, payment_ids(user, "j").0);
        assert_ne!(payment_ids(user, "k").0, payment_ids(UserId::new(), "k").0);
        assert_ne!(payment_ids(user, "k").0.as_uuid(), payment_ids(user, "k").1.as_uuid());
    }
}
