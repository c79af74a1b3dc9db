//! Read-only queries on `payment` (the booking-worker creates rows, the payment-worker settles
//! them) and on the writer's `processed_command` outcomes.

use common::ids::{BookingId, CommandId, PaymentId, UserId};
use sqlx::{PgExecutor, prelude::FromRow};

/// A payment as its owner sees it.
#[derive(Debug, Clone, FromRow)]
pub struct PaymentRow {
    /// Id.
    pub payment_id: PaymentId,
    /// The booking it pays.
    pub booking_id: BookingId,
    /// processing, succeeded, failed or refunded.
    pub status: String,
    /// Charged amount, minor units.
    pub amount_cents: i64,
    /// ISO 4217.
    pub currency: String,
    /// The gateway's decline code, when failed.
    pub failure_code: Option<String>,
    /// Refunded so far, minor units.
    pub refunded_cents: i64,
}

/// The caller's payment (another user's is `None`, so it reads as 404).
#[tracing::instrument(skip(db))]
pub async fn find(
    db: impl PgExecutor<'_>,
    payment: PaymentId,
    user: UserId,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.payment_id, p.booking_id, p.status, p.amount_cents, p.currency, p.failure_code, p.refunded_cents
         FROM payment p JOIN booking b ON b.booking_id = p.booking_id
         WHERE p.payment_id = $1 AND b.app_user_id = $2",
    )
    .bind(payment)
    .bind(user)
    .fetch_optional(db)
    .await
}

/// The booking's latest payment attempt.
#[tracing::instrument(skip(db))]
pub async fn latest_for_booking(
    db: impl PgExecutor<'_>,
    booking: BookingId,
) -> Result<Option<PaymentRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT payment_id, booking_id, status, amount_cents, currency, failure_code, refunded_cents
         FROM payment WHERE booking_id = $1
         ORDER BY created_at DESC, payment_id DESC LIMIT 1",
    )
    .bind(booking)
    .fetch_optional(db)
    .await
}

/// The stored outcome of a show command other than a hold request: `None` while the writer
/// has not applied it, else its `result` (`{"code": ...}` when it was refused).
#[tracing::instrument(skip(db))]
pub async fn command_result(
    db: impl PgExecutor<'_>,
    command: CommandId,
) -> Result<Option<serde_json::Value>, sqlx::Error> {
    sqlx::query_scalar("SELECT result FROM processed_command WHERE command_id = $1")
        .bind(command)
        .fetch_optional(db)
        .await
}
