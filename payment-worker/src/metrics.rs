//! Payment-worker metrics (labels are bounded: outcomes, operations, reasons; never ids).

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec, exponential_buckets, register_histogram_vec, register_int_counter_vec};

static PAYMENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_payments_total",
        "Payments settled by this worker, by outcome (succeeded, failed) and source (charge, webhook, reconciliation).",
        &["outcome", "source"]
    )
    .expect("metric registers once")
});
static GATEWAY_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "floodgate_payment_gateway_request_seconds",
        "Latency of gateway requests, by operation and outcome.",
        &["operation", "outcome"],
        exponential_buckets(0.005, 2.0, 14).expect("valid buckets")
    )
    .expect("metric registers once")
});
static REFUNDS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_refunds_total",
        "Refunds, by reason (confirm_rejected, cancelled) and outcome (succeeded, refused).",
        &["reason", "outcome"]
    )
    .expect("metric registers once")
});
static RECONCILIATIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_payment_reconciliations_total",
        "Charges whose answer was lost and were looked up at the gateway, by result.",
        &["result"]
    )
    .expect("metric registers once")
});
static DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_payment_dead_lettered_total",
        "Payments-queue messages sent to the dead-letter exchange, by reason.",
        &["reason"]
    )
    .expect("metric registers once")
});
static WEBHOOKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_payment_webhook_events_total",
        "Gateway events handled, by type and effect (applied, no_change, ignored).",
        &["type", "effect"]
    )
    .expect("metric registers once")
});
static RETRIES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_payment_transient_failures_total",
        "Messages requeued after a transient failure, by stage.",
        &["stage"]
    )
    .expect("metric registers once")
});

/// A payment reached a final state.
pub fn payment(outcome: &str, source: &str) {
    PAYMENTS.with_label_values(&[outcome, source]).inc();
}

/// One gateway request.
pub fn gateway_request(operation: &str, outcome: &str, seconds: f64) {
    GATEWAY_SECONDS
        .with_label_values(&[operation, outcome])
        .observe(seconds);
}

/// A refund settled.
pub fn refund(reason: &str, outcome: &str) {
    REFUNDS.with_label_values(&[reason, outcome]).inc();
}

/// A reconciliation lookup.
pub fn reconciliation(result: &str) {
    RECONCILIATIONS.with_label_values(&[result]).inc();
}

/// A message dead-lettered.
pub fn dead_lettered(reason: &str) {
    DEAD_LETTERED.with_label_values(&[reason]).inc();
}

/// A gateway event handled.
pub fn webhook(kind: &str, effect: &str) {
    // Unknown event types are folded so the label stays bounded.
    let kind = match kind {
        "payment_intent.succeeded" | "payment_intent.payment_failed" | "refund.succeeded" | "refund.updated" => kind,
        _ => "other",
    };
    WEBHOOKS.with_label_values(&[kind, effect]).inc();
}

/// A message requeued.
pub fn transient(stage: &str) {
    RETRIES.with_label_values(&[stage]).inc();
}

/// Registers every metric now, and creates at zero the series of the failures known in
/// advance, so `/metrics` shows them before the first payment and an alert's `increase()` sees
/// the first failure.
pub fn register() {
    LazyLock::force(&PAYMENTS);
    LazyLock::force(&GATEWAY_SECONDS);
    LazyLock::force(&REFUNDS);
    LazyLock::force(&WEBHOOKS);
    for result in ["found", "not_found", "error"] {
        RECONCILIATIONS.with_label_values(&[result]);
    }
    for reason in ["undecodable", "database", "not_settled", "unknown_payment"] {
        DEAD_LETTERED.with_label_values(&[reason]);
        RETRIES.with_label_values(&[reason]);
    }
}
