//! What each message of the `payments` queue does.
//!
//! - `ChargePayment`: charge through the gateway with the payment's idempotency key (bounded
//!   retries with backoff, always the same key); an unknown outcome is reconciled by looking
//!   the charge up; the outcome is settled in one transaction with its outbox rows.
//! - `GatewayEvent`: the same settlement from the gateway's side, in any order, any number of
//!   times: `processing` → `succeeded`/`failed` happens once and is final; a refund event
//!   completes a pending refund once. The event is marked processed in the same transaction.
//! - `booking.confirm_rejected` / `booking.cancelled`: refund (all of it / `refund_cents`),
//!   through a `refund` row whose id and idempotency key are derived from the payment and the
//!   reason, so a redelivery or a retry never refunds twice.
//!
//! Whoever settles a payment or a refund (charge answer, webhook, sweep) goes through
//! [`settle_charge`] or [`complete_refund`]: the conditional update decides who changes it,
//! and only that transaction writes the outbox rows.

use std::{sync::Arc, time::Duration};

use common::{
    contracts::{
        BookingCancelled, BookingConfirmRejected, ChargeFailed, ChargePayment, ChargeSucceeded, ConfirmBooking,
        GatewayEvent, Message as _, PaymentFailed, RecordRefund, RefundSucceeded,
    },
    ids::{MessageId, PaymentId, RefundId},
    mq::Broker,
};
use sqlx::PgPool;

use crate::{
    gateway::{ChargeOutcome, ChargeRequest, PaymentGateway, RefundOutcome, RefundRequest, http::intent_outcome},
    ids, metrics,
    outbox::{self, Outgoing},
    store::{self, PaymentRecord, RefundRecord},
};

/// Tuning of the handlers.
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Gateway attempts per charge or refund before reconciling (`PAYMENT_GATEWAY_ATTEMPTS`, 4).
    pub gateway_attempts: u32,
    /// First delay between attempts, doubling (`PAYMENT_GATEWAY_RETRY_MS`, 200).
    pub retry_min: Duration,
}

impl Default for HandlerConfig {
    fn default() -> Self {
        Self {
            gateway_attempts: 4,
            retry_min: Duration::from_millis(200),
        }
    }
}

/// What the handlers need.
pub struct Context {
    /// PostgreSQL.
    pub db: PgPool,
    /// RabbitMQ.
    pub broker: Arc<Broker>,
    /// The payment gateway.
    pub gateway: Arc<dyn PaymentGateway>,
    /// Tuning.
    pub config: HandlerConfig,
}

/// Why a message could not be handled; the variant decides between requeue and dead-letter.
#[derive(Debug, thiserror::Error)]
pub enum HandleError {
    /// PostgreSQL trouble: retry later.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// A refund was asked for a payment that is still being charged: retry later.
    #[error("payment {0} is not settled yet")]
    NotSettled(PaymentId),
    /// The message names a payment that does not exist: it never will.
    #[error("no payment {0}")]
    UnknownPayment(PaymentId),
}

impl HandleError {
    /// Whether a retry can succeed (requeue) or not (dead-letter).
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::UnknownPayment(_))
    }

    /// A bounded label for metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Database(_) => "database",
            Self::NotSettled(_) => "not_settled",
            Self::UnknownPayment(_) => "unknown_payment",
        }
    }
}

/// Who settled a payment (metrics and logs).
#[derive(Debug, Clone, Copy)]
pub enum Source {
    /// The answer to our charge.
    Charge,
    /// A gateway webhook.
    Webhook,
    /// The stuck-payment sweep.
    Reconciliation,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Self::Charge => "charge",
            Self::Webhook => "webhook",
            Self::Reconciliation => "reconciliation",
        }
    }
}

/// Delay before attempt `attempt` (1-based; the first has none): doubling from `min`, at most 5 s.
fn backoff(min: Duration, attempt: u32) -> Duration {
    if attempt <= 1 {
        return Duration::ZERO;
    }
    min.saturating_mul(1 << attempt.saturating_sub(2).min(16))
        .min(Duration::from_secs(5))
}

/// `ChargePayment`: charges unless the payment is settled already (a redelivery).
#[tracing::instrument(skip_all, fields(payment_id = %message.payment_id, booking_id = %message.booking_id))]
pub async fn charge_payment(context: &Context, message: &ChargePayment) -> Result<(), HandleError> {
    charge(context, message.payment_id, Source::Charge).await
}

/// Charges `payment` with its own idempotency key and settles the outcome.
pub async fn charge(context: &Context, payment: PaymentId, source: Source) -> Result<(), HandleError> {
    let Some(record) = store::load_payment(&context.db, payment).await? else {
        return Err(HandleError::UnknownPayment(payment));
    };
    if record.status != "processing" {
        tracing::info!(status = %record.status, "payment already settled; nothing to charge");
        return Ok(());
    }
    let request = ChargeRequest {
        idempotency_key: record.idempotency_key.clone(),
        amount_cents: record.amount_cents,
        currency: record.currency.clone(),
        card_token: record.card_token.clone(),
        metadata: vec![
            ("payment_id".to_owned(), record.payment_id.to_string()),
            ("booking_id".to_owned(), record.booking_id.to_string()),
            ("show_id".to_owned(), record.show_id.to_string()),
        ],
    };
    let mut outcome = ChargeOutcome::Unknown {
        reason: "not attempted".to_owned(),
    };
    for attempt in 1..=context.config.gateway_attempts.max(1) {
        tokio::time::sleep(backoff(context.config.retry_min, attempt)).await;
        outcome = context.gateway.charge(&request).await;
        match &outcome {
            ChargeOutcome::Unknown { reason } => {
                tracing::warn!(attempt, %reason, "charge outcome unknown; retrying with the same key");
            }
            _ => break,
        }
    }
    if matches!(outcome, ChargeOutcome::Unknown { .. }) {
        outcome = reconcile(context, payment).await;
    }
    settle_charge(context, &record, &outcome, source, None).await?;
    Ok(())
}

/// Looks the charge of `payment` up at the gateway (its answer was lost).
pub async fn reconcile(context: &Context, payment: PaymentId) -> ChargeOutcome {
    match context.gateway.find_charge(&payment.to_string()).await {
        Ok(Some(outcome)) => {
            metrics::reconciliation("found");
            outcome
        }
        Ok(None) => {
            metrics::reconciliation("not_found");
            ChargeOutcome::Unknown {
                reason: "the gateway has no charge for this payment".to_owned(),
            }
        }
        Err(reason) => {
            metrics::reconciliation("error");
            ChargeOutcome::Unknown { reason }
        }
    }
}

/// Writes a charge outcome: the status change (only from `processing`) and its outbox rows in
/// one transaction, with the webhook event marked processed when one caused it; then publishes.
/// Returns whether this call changed the payment.
pub async fn settle_charge(
    context: &Context,
    payment: &PaymentRecord,
    outcome: &ChargeOutcome,
    source: Source,
    webhook_event: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let topology = context.broker.topology();
    let id = payment.payment_id;
    let mut tx = context.db.begin().await?;
    let (changed, messages, label) = match outcome {
        ChargeOutcome::Succeeded { reference } => {
            let changed = store::mark_succeeded(&mut tx, id, reference).await?;
            let messages = vec![
                outbox::command(
                    topology,
                    payment.show_id,
                    MessageId(ids::confirm_booking(id).0),
                    ConfirmBooking {
                        command_id: ids::confirm_booking(id),
                        user_id: payment.user_id,
                        booking_id: payment.booking_id,
                        payment_id: id,
                    },
                ),
                outbox::event(
                    topology,
                    payment.show_id,
                    ids::payment_message(id, ChargeSucceeded::TYPE),
                    ChargeSucceeded {
                        user_id: payment.user_id,
                        booking_id: payment.booking_id,
                        payment_id: id,
                        amount_cents: payment.amount_cents,
                        currency: payment.currency.clone(),
                    },
                ),
            ];
            (changed, messages, "succeeded")
        }
        ChargeOutcome::Declined { code, reference } => {
            let changed = store::mark_failed(&mut tx, id, code, reference.as_deref()).await?;
            let messages = vec![
                outbox::command(
                    topology,
                    payment.show_id,
                    MessageId(ids::payment_failed(id).0),
                    PaymentFailed {
                        command_id: ids::payment_failed(id),
                        booking_id: payment.booking_id,
                        payment_id: id,
                        code: code.clone(),
                    },
                ),
                outbox::event(
                    topology,
                    payment.show_id,
                    ids::payment_message(id, ChargeFailed::TYPE),
                    ChargeFailed {
                        user_id: payment.user_id,
                        booking_id: payment.booking_id,
                        payment_id: id,
                        code: code.clone(),
                    },
                ),
            ];
            (changed, messages, "failed")
        }
        ChargeOutcome::Unknown { reason } => {
            // Left in `processing`: the stuck-payment sweep looks again later.
            tracing::warn!(payment_id = %id, %reason, "charge outcome still unknown; left for reconciliation");
            (false, Vec::new(), "unknown")
        }
    };
    let rows = if changed {
        outbox::insert(&mut tx, &messages).await?
    } else {
        Vec::new()
    };
    if let Some(event) = webhook_event {
        store::mark_webhook_processed(&mut tx, event).await?;
    }
    tx.commit().await?;
    if changed {
        metrics::payment(label, source.as_str());
        tracing::info!(payment_id = %id, outcome = label, source = source.as_str(), "payment settled");
    }
    outbox::publish_committed(&context.db, &context.broker, &rows).await;
    Ok(changed)
}

/// `GatewayEvent`: applies a verified gateway event idempotently.
#[tracing::instrument(skip_all, fields(event_id = %event.event_id, event_type = %event.event_type))]
pub async fn gateway_event(context: &Context, event: &GatewayEvent) -> Result<(), HandleError> {
    let object = &event.object;
    let effect = match event.event_type.as_str() {
        "payment_intent.succeeded" | "payment_intent.payment_failed" => {
            let outcome = intent_outcome(object);
            match (locate_payment(context, object).await?, &outcome) {
                (Some(payment), ChargeOutcome::Succeeded { .. } | ChargeOutcome::Declined { .. }) => {
                    let changed =
                        settle_charge(context, &payment, &outcome, Source::Webhook, Some(&event.event_id)).await?;
                    if changed { "applied" } else { "no_change" }
                }
                _ => "ignored",
            }
        }
        "refund.succeeded" | "refund.updated" if object["status"] == "succeeded" => {
            match (locate_refund(context, object).await?, object["id"].as_str()) {
                (Some(refund), Some(reference)) => {
                    let changed = complete_refund(context, refund, reference, Some(&event.event_id)).await?;
                    if changed { "applied" } else { "no_change" }
                }
                _ => "ignored",
            }
        }
        _ => "ignored",
    };
    if effect == "ignored" {
        tracing::info!("gateway event not about a known payment or refund; ignored");
        let mut connection = context.db.acquire().await?;
        store::mark_webhook_processed(&mut connection, &event.event_id).await?;
    }
    metrics::webhook(&event.event_type, effect);
    Ok(())
}

/// The payment an intent object is about: by its `metadata.payment_id`, else by the intent id.
async fn locate_payment(context: &Context, intent: &serde_json::Value) -> Result<Option<PaymentRecord>, sqlx::Error> {
    let by_metadata = intent["metadata"]["payment_id"]
        .as_str()
        .and_then(|id| id.parse::<PaymentId>().ok());
    let id = match by_metadata {
        Some(id) => Some(id),
        None => match intent["id"].as_str() {
            Some(reference) => store::payment_by_reference(&context.db, reference).await?,
            None => None,
        },
    };
    match id {
        Some(id) => store::load_payment(&context.db, id).await,
        None => Ok(None),
    }
}

/// The refund a refund object is about: by its `metadata.refund_id`, else by the refund id.
async fn locate_refund(context: &Context, refund: &serde_json::Value) -> Result<Option<RefundId>, sqlx::Error> {
    if let Some(id) = refund["metadata"]["refund_id"]
        .as_str()
        .and_then(|id| id.parse::<RefundId>().ok())
    {
        return Ok(Some(id));
    }
    match refund["id"].as_str() {
        Some(reference) => store::refund_by_reference(&context.db, reference).await,
        None => Ok(None),
    }
}

/// `booking.confirm_rejected`: the whole payment goes back.
#[tracing::instrument(skip_all, fields(payment_id = %fact.payment_id, booking_id = %fact.booking_id))]
pub async fn confirm_rejected(context: &Context, fact: &BookingConfirmRejected) -> Result<(), HandleError> {
    refund(context, fact.payment_id, "confirm_rejected", "", None).await
}

/// `booking.cancelled`: `refund_cents` go back.
#[tracing::instrument(skip_all, fields(payment_id = %fact.payment_id, booking_id = %fact.booking_id))]
pub async fn cancelled(context: &Context, fact: &BookingCancelled) -> Result<(), HandleError> {
    if fact.refund_cents <= 0 {
        tracing::info!("cancelled without a refund (refund_cents = 0)");
        return Ok(());
    }
    refund(
        context,
        fact.payment_id,
        "cancelled",
        &fact.command_id.to_string(),
        Some(fact.refund_cents),
    )
    .await
}

/// Records (once) and makes the refund of `payment` for `reason`.
async fn refund(
    context: &Context,
    payment: PaymentId,
    reason: &str,
    discriminator: &str,
    requested: Option<i64>,
) -> Result<(), HandleError> {
    let Some(record) = store::load_payment(&context.db, payment).await? else {
        return Err(HandleError::UnknownPayment(payment));
    };
    match record.status.as_str() {
        "processing" => return Err(HandleError::NotSettled(payment)),
        "failed" => {
            tracing::warn!("refund asked for a failed payment: nothing was charged");
            return Ok(());
        }
        _ => {}
    }
    let refund_id = ids::refund(payment, reason, discriminator);
    let existing = store::load_refund(&context.db, refund_id).await?;
    let refund = match existing {
        Some(refund) => refund,
        None => {
            let remaining = record.amount_cents - record.refunded_cents;
            let amount = requested.map_or(remaining, |asked| asked.min(remaining));
            if amount <= 0 {
                tracing::info!(remaining, "nothing left to refund");
                return Ok(());
            }
            let key = ids::refund_idempotency_key(refund_id);
            store::insert_refund(&context.db, refund_id, payment, amount, reason, &key).await?;
            store::load_refund(&context.db, refund_id)
                .await?
                .ok_or(HandleError::NotSettled(payment))?
        }
    };
    if refund.status != "pending" {
        tracing::info!(status = %refund.status, "refund already settled");
        return Ok(());
    }
    execute_refund(context, &record, &refund).await?;
    Ok(())
}

/// Asks the gateway for a pending refund (bounded retries, same key) and settles the answer.
/// An unknown outcome leaves the refund pending for the sweep.
pub async fn execute_refund(
    context: &Context,
    payment: &PaymentRecord,
    refund: &RefundRecord,
) -> Result<(), sqlx::Error> {
    let Some(reference) = payment.gateway_reference.clone() else {
        tracing::error!(payment_id = %payment.payment_id, "a settled payment has no gateway reference; cannot refund");
        return Ok(());
    };
    let request = RefundRequest {
        idempotency_key: refund.idempotency_key.clone(),
        charge_reference: reference,
        amount_cents: refund.amount_cents,
        metadata: vec![
            ("refund_id".to_owned(), refund.refund_id.to_string()),
            ("payment_id".to_owned(), payment.payment_id.to_string()),
        ],
    };
    let mut outcome = RefundOutcome::Unknown {
        reason: "not attempted".to_owned(),
    };
    for attempt in 1..=context.config.gateway_attempts.max(1) {
        tokio::time::sleep(backoff(context.config.retry_min, attempt)).await;
        outcome = context.gateway.refund(&request).await;
        match &outcome {
            RefundOutcome::Unknown { reason } => {
                tracing::warn!(attempt, %reason, "refund outcome unknown; retrying with the same key");
            }
            _ => break,
        }
    }
    match outcome {
        RefundOutcome::Succeeded { reference } => {
            complete_refund(context, refund.refund_id, &reference, None).await?;
        }
        RefundOutcome::Refused { code } => {
            if store::mark_refund_failed(&context.db, refund.refund_id).await? {
                metrics::refund(&refund.reason, "refused");
                tracing::error!(refund_id = %refund.refund_id, %code, "the gateway refused the refund");
            }
        }
        RefundOutcome::Unknown { reason } => {
            tracing::warn!(refund_id = %refund.refund_id, %reason, "refund outcome unknown; left for the sweep");
        }
    }
    Ok(())
}

/// Completes a pending refund (once): the refund and payment rows, `RefundSucceeded` and, for a
/// cancellation, the `RecordRefund` command, in one transaction; then publishes. Returns whether
/// this call completed it.
pub async fn complete_refund(
    context: &Context,
    refund: RefundId,
    reference: &str,
    webhook_event: Option<&str>,
) -> Result<bool, sqlx::Error> {
    let topology = context.broker.topology();
    let mut tx = context.db.begin().await?;
    let completed = store::mark_refund_succeeded(&mut tx, refund, reference).await?;
    let mut rows = Vec::new();
    if let Some(refund) = &completed {
        store::add_refunded(&mut tx, refund.payment_id, refund.amount_cents).await?;
        if let Some(payment) = store::load_payment(&mut *tx, refund.payment_id).await? {
            let mut messages: Vec<Outgoing> = Vec::new();
            if refund.reason == "cancelled" {
                messages.push(outbox::command(
                    topology,
                    payment.show_id,
                    MessageId(ids::record_refund(refund.refund_id).0),
                    RecordRefund {
                        command_id: ids::record_refund(refund.refund_id),
                        booking_id: payment.booking_id,
                        payment_id: payment.payment_id,
                        refund_id: refund.refund_id,
                    },
                ));
            }
            messages.push(outbox::event(
                topology,
                payment.show_id,
                ids::refund_message(refund.refund_id, RefundSucceeded::TYPE),
                RefundSucceeded {
                    user_id: payment.user_id,
                    booking_id: payment.booking_id,
                    payment_id: payment.payment_id,
                    refund_id: refund.refund_id,
                    amount_cents: refund.amount_cents,
                    currency: payment.currency.clone(),
                    reason: refund.reason.clone(),
                },
            ));
            rows = outbox::insert(&mut tx, &messages).await?;
        }
    }
    if let Some(event) = webhook_event {
        store::mark_webhook_processed(&mut tx, event).await?;
    }
    tx.commit().await?;
    if let Some(refund) = &completed {
        metrics::refund(&refund.reason, "succeeded");
        tracing::info!(refund_id = %refund.refund_id, amount_cents = refund.amount_cents, "refund succeeded");
    }
    outbox::publish_committed(&context.db, &context.broker, &rows).await;
    Ok(completed.is_some())
}

/// The sweep's look at a payment stuck in `processing`: the charge is looked up; when the
/// gateway never got it, it is made now (same key, so never twice).
pub async fn reconcile_stuck(context: &Context, payment: PaymentId) -> Result<(), HandleError> {
    let Some(record) = store::load_payment(&context.db, payment).await? else {
        return Ok(());
    };
    if record.status != "processing" {
        return Ok(());
    }
    match reconcile(context, payment).await {
        outcome @ (ChargeOutcome::Succeeded { .. } | ChargeOutcome::Declined { .. }) => {
            settle_charge(context, &record, &outcome, Source::Reconciliation, None).await?;
            Ok(())
        }
        ChargeOutcome::Unknown { .. } => charge(context, payment, Source::Reconciliation).await,
    }
}

/// The sweep's look at a refund left pending: asked again with its key.
pub async fn retry_refund(context: &Context, refund: RefundId) -> Result<(), HandleError> {
    let Some(record) = store::load_refund(&context.db, refund).await? else {
        return Ok(());
    };
    if record.status != "pending" {
        return Ok(());
    }
    let Some(payment) = store::load_payment(&context.db, record.payment_id).await? else {
        return Err(HandleError::UnknownPayment(record.payment_id));
    };
    execute_refund(context, &payment, &record).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_from_the_second_attempt() {
        let min = Duration::from_millis(100);
        assert_eq!(backoff(min, 1), Duration::ZERO);
        assert_eq!(backoff(min, 2), Duration::from_millis(100));
        assert_eq!(backoff(min, 3), Duration::from_millis(200));
        assert_eq!(backoff(min, 30), Duration::from_secs(5));
    }
}
