//! Ingress metrics, registered in the process-wide Prometheus registry that `/metrics` on the
//! admin port exposes.

use std::{sync::LazyLock, time::Duration};

use prometheus::{
    Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, register_histogram, register_histogram_vec,
    register_int_counter, register_int_counter_vec, register_int_gauge,
};

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_http_requests_total",
        "HTTP requests answered by ingress, by route template, method and status.",
        &["method", "route", "status"]
    )
    .expect("metric registers once")
});

static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "floodgate_http_request_duration_seconds",
        "Time to answer an HTTP request, by route template and method.",
        &["method", "route"],
        vec![
            0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0
        ]
    )
    .expect("metric registers once")
});

/// Records one answered request.
pub fn observe_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    REQUESTS.with_label_values(&[method, route, &status.to_string()]).inc();
    DURATION
        .with_label_values(&[method, route])
        .observe(elapsed.as_secs_f64());
}

static WS_CONNECTIONS: LazyLock<IntGauge> = LazyLock::new(|| {
    register_int_gauge!(
        "floodgate_ws_connections",
        "Open waiting-room WebSockets on this instance."
    )
    .expect("metric registers once")
});

static WS_FANOUT: LazyLock<Histogram> = LazyLock::new(|| {
    register_histogram!(
        "floodgate_ws_fanout_seconds",
        "From a serving-number update reaching this instance to a fan's socket having been told.",
        vec![0.001, 0.005, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 5.0]
    )
    .expect("metric registers once")
});

static QUEUE_JOINS: LazyLock<IntCounter> = LazyLock::new(|| {
    register_int_counter!(
        "floodgate_queue_joins_total",
        "New places given in waiting rooms by this instance."
    )
    .expect("metric registers once")
});

/// A WebSocket opened (+1) or closed (-1).
pub fn ws_connected(delta: i64) {
    WS_CONNECTIONS.add(delta);
}

/// One fan told about an update, `elapsed` after it arrived.
pub fn ws_fanout(elapsed: Duration) {
    WS_FANOUT.observe(elapsed.as_secs_f64());
}

/// A new place in a waiting room.
pub fn queue_join() {
    QUEUE_JOINS.inc();
}

static WEBHOOK_EVENTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_gateway_webhooks_total",
        "Payment gateway webhook deliveries, by outcome (queued, duplicate, invalid_signature, \
         stale_signature, invalid_event, unavailable).",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Counts one gateway webhook delivery.
pub fn webhook(outcome: &str) {
    WEBHOOK_EVENTS.with_label_values(&[outcome]).inc();
}

static CHECK_INS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_check_ins_total",
        "Ticket scans at the door, by outcome (admitted, already_checked_in, ticket_void, ticket_not_found).",
        &["outcome"]
    )
    .expect("metric registers once")
});

/// Creates at zero the series known in advance (door scans by outcome, webhooks refused), so
/// `/metrics` shows them before the first one and an alert's `increase()` sees it.
pub fn register() {
    for outcome in ["admitted", "already_checked_in", "ticket_void", "ticket_not_found"] {
        CHECK_INS.with_label_values(&[outcome]);
    }
    for outcome in ["invalid_signature", "stale_signature", "invalid_event", "unavailable"] {
        WEBHOOK_EVENTS.with_label_values(&[outcome]);
    }
}

/// Counts one ticket scan.
pub fn check_in(outcome: &str) {
    CHECK_INS.with_label_values(&[outcome]).inc();
}
