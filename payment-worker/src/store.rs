//! The SQL of the tables the payment-worker writes: `payment` (status), `refund`,
//! `webhook_event.processed_at` and (for its messages) `outbox`. One statement per function.
//!
//! Every state change is conditioned on the state it leaves (`WHERE status = 'processing'`,
//! `WHERE status = 'pending'`): of a charge answer, a webhook and a reconciliation racing to
//! settle one payment, exactly one changes it; the others change nothing and say so.

use std::time::Duration;

use common::ids::{BookingId, PaymentId, RefundId, ShowId, UserId};
use sqlx::{PgConnection, PgExecutor, prelude::FromRow};

/// A payment with what its messages need from its booking.
#[derive(Debug, Clone, FromRow)]
pub struct PaymentRecord {
    /// The payment.
    pub payment_id: PaymentId,
    /// The booking it pays.
    pub booking_id: BookingId,
    /// The booking's show.
    pub show_id: ShowId,
    /// The fan.
    pub user_id: UserId,
    /// Minor units.
    pub amount_cents: i64,
    /// ISO 4217.
    pub currency: String,
    /// `processing`, `succeeded`, `failed` or `refunded`.
    pub status: String,
    /// The gateway `Idempotency-Key` of the charge.
    pub idempotency_key: String,
    /// The card token.
    pub card_token: String,
    /// The gateway's intent id, once known.
    pub gateway_reference: Option<String>,
    /// Refunded so far.
    pub refunded_cents: i64,
}

const PAYMENT_COLUMNS: &str = "p.payment_id, p.booking_id, b.show_id, b.app_user_id AS user_id, p.amount_cents,
     p.currency, p.status, p.idempotency_key, p.card_token, p.gateway_reference, p.refunded_cents";

/// The payment, with its booking's show and fan.
#[tracing::instrument(skip(db))]
pub async fn load_payment(db: impl PgExecutor<'_>, payment: PaymentId) -> Result<Option<PaymentRecord>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {PAYMENT_COLUMNS} FROM payment p JOIN booking b USING (booking_id) WHERE p.payment_id = $1"
    )))
    .bind(payment)
    .fetch_optional(db)
    .await
}

/// The payment a gateway intent belongs to.
#[tracing::instrument(skip(db))]
pub async fn payment_by_reference(db: impl PgExecutor<'_>, reference: &str) -> Result<Option<PaymentId>, sqlx::Error> {
    sqlx::query_scalar("SELECT payment_id FROM payment WHERE gateway_reference = $1")
        .bind(reference)
        .fetch_optional(db)
        .await
}

/// `processing` → `succeeded`; false when the payment was settled already.
#[tracing::instrument(skip(db))]
pub async fn mark_succeeded(db: &mut PgConnection, payment: PaymentId, reference: &str) -> Result<bool, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE payment SET status = 'succeeded', gateway_reference = $2, failure_code = NULL, updated_at = now()
         WHERE payment_id = $1 AND status = 'processing'",
    )
    .bind(payment)
    .bind(reference)
    .execute(db)
    .await?
    .rows_affected();
    Ok(rows == 1)
}

/// `processing` → `failed` with the gateway's code; false when the payment was settled already.
#[tracing::instrument(skip(db))]
pub async fn mark_failed(
    db: &mut PgConnection,
    payment: PaymentId,
    code: &str,
    reference: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE payment SET status = 'failed', failure_code = $2, gateway_reference = coalesce($3, gateway_reference),
                            updated_at = now()
         WHERE payment_id = $1 AND status = 'processing'",
    )
    .bind(payment)
    .bind(code)
    .bind(reference)
    .execute(db)
    .await?
    .rows_affected();
    Ok(rows == 1)
}

/// Claims up to `limit` payments left in `processing` for longer than `older_than` and pushes
/// their `updated_at` forward, so that concurrent sweeps (other replicas) take other payments
/// and the next look at these waits another `older_than`.
#[tracing::instrument(skip(db))]
pub async fn claim_stuck_payments(
    db: impl PgExecutor<'_>,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<PaymentId>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE payment SET updated_at = now() WHERE payment_id IN (
             SELECT payment_id FROM payment
             WHERE status = 'processing' AND updated_at < now() - make_interval(secs => $1)
             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING payment_id",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A refund of a payment.
#[derive(Debug, Clone, FromRow)]
pub struct RefundRecord {
    /// The refund.
    pub refund_id: RefundId,
    /// The refunded payment.
    pub payment_id: PaymentId,
    /// Minor units.
    pub amount_cents: i64,
    /// `confirm_rejected` or `cancelled`.
    pub reason: String,
    /// `pending`, `succeeded` or `failed`.
    pub status: String,
    /// The gateway `Idempotency-Key`.
    pub idempotency_key: String,
}

const REFUND_COLUMNS: &str = "refund_id, payment_id, amount_cents, reason, status, idempotency_key";

/// Records a refund about to be asked for; an existing row with the id is left as it is (a
/// redelivery of the message that asked for it).
#[tracing::instrument(skip(db))]
pub async fn insert_refund(
    db: impl PgExecutor<'_>,
    refund: RefundId,
    payment: PaymentId,
    amount_cents: i64,
    reason: &str,
    idempotency_key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO refund (refund_id, payment_id, amount_cents, reason, idempotency_key)
         VALUES ($1, $2, $3, $4, $5) ON CONFLICT (refund_id) DO NOTHING",
    )
    .bind(refund)
    .bind(payment)
    .bind(amount_cents)
    .bind(reason)
    .bind(idempotency_key)
    .execute(db)
    .await?;
    Ok(())
}

/// A refund by id.
#[tracing::instrument(skip(db))]
pub async fn load_refund(db: impl PgExecutor<'_>, refund: RefundId) -> Result<Option<RefundRecord>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT {REFUND_COLUMNS} FROM refund WHERE refund_id = $1"
    )))
    .bind(refund)
    .fetch_optional(db)
    .await
}

/// The refund a gateway refund id belongs to.
#[tracing::instrument(skip(db))]
pub async fn refund_by_reference(db: impl PgExecutor<'_>, reference: &str) -> Result<Option<RefundId>, sqlx::Error> {
    sqlx::query_scalar("SELECT refund_id FROM refund WHERE gateway_reference = $1")
        .bind(reference)
        .fetch_optional(db)
        .await
}

/// `pending` → `succeeded`; the refund when this call changed it, `None` when it was settled.
#[tracing::instrument(skip(db))]
pub async fn mark_refund_succeeded(
    db: &mut PgConnection,
    refund: RefundId,
    reference: &str,
) -> Result<Option<RefundRecord>, sqlx::Error> {
    sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "UPDATE refund SET status = 'succeeded', gateway_reference = $2, updated_at = now()
         WHERE refund_id = $1 AND status = 'pending'
         RETURNING {REFUND_COLUMNS}"
    )))
    .bind(refund)
    .bind(reference)
    .fetch_optional(db)
    .await
}

/// `pending` → `failed` (the gateway refused it for good).
#[tracing::instrument(skip(db))]
pub async fn mark_refund_failed(db: impl PgExecutor<'_>, refund: RefundId) -> Result<bool, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE refund SET status = 'failed', updated_at = now() WHERE refund_id = $1 AND status = 'pending'",
    )
    .bind(refund)
    .execute(db)
    .await?
    .rows_affected();
    Ok(rows == 1)
}

/// Adds a succeeded refund to its payment; fully refunded, the payment becomes `refunded`.
/// The table's check keeps the total within the amount charged.
#[tracing::instrument(skip(db))]
pub async fn add_refunded(db: &mut PgConnection, payment: PaymentId, amount_cents: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE payment SET refunded_cents = refunded_cents + $2,
                            status = CASE WHEN refunded_cents + $2 >= amount_cents THEN 'refunded' ELSE status END,
                            updated_at = now()
         WHERE payment_id = $1",
    )
    .bind(payment)
    .bind(amount_cents)
    .execute(db)
    .await?;
    Ok(())
}

/// Claims up to `limit` refunds left `pending` for longer than `older_than` (their answer was
/// lost), like [`claim_stuck_payments`].
#[tracing::instrument(skip(db))]
pub async fn claim_pending_refunds(
    db: impl PgExecutor<'_>,
    older_than: Duration,
    limit: i64,
) -> Result<Vec<RefundId>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE refund SET updated_at = now() WHERE refund_id IN (
             SELECT refund_id FROM refund
             WHERE status = 'pending' AND updated_at < now() - make_interval(secs => $1)
             ORDER BY updated_at LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING refund_id",
    )
    .bind(older_than.as_secs_f64())
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Records that a gateway event was handled (the first time only).
#[tracing::instrument(skip(db))]
pub async fn mark_webhook_processed(db: &mut PgConnection, event_id: &str) -> Result<bool, sqlx::Error> {
    let rows = sqlx::query(
        "UPDATE webhook_event SET processed_at = now() WHERE gateway_event_id = $1 AND processed_at IS NULL",
    )
    .bind(event_id)
    .execute(db)
    .await?
    .rows_affected();
    Ok(rows == 1)
}
