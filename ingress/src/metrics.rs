//! Ingress metrics, registered in the process-wide Prometheus registry that `/metrics` on the
//! admin port exposes.

use std::{sync::LazyLock, time::Duration};

use prometheus::{HistogramVec, IntCounterVec, register_histogram_vec, register_int_counter_vec};

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
