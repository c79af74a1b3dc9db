//! Admission-controller metrics (per show: show ids are bounded and useful; never user ids).

use std::sync::LazyLock;

use common::ids::ShowId;
use prometheus::{
    GaugeVec, IntCounterVec, IntGaugeVec, register_gauge_vec, register_int_counter_vec, register_int_gauge_vec,
};

static QUEUE_LENGTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "floodgate_waiting_room_queue_length",
        "Fans in line, by show.",
        &["show_id"]
    )
    .expect("metric registers once")
});
static SERVING: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "floodgate_waiting_room_serving_number",
        "Highest queue number passed, by show.",
        &["show_id"]
    )
    .expect("metric registers once")
});
static ACTIVE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "floodgate_waiting_room_active_sessions",
        "Admitted shopping sessions, by show.",
        &["show_id"]
    )
    .expect("metric registers once")
});
static ADMISSIONS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_waiting_room_admissions_total",
        "Fans admitted, by show.",
        &["show_id"]
    )
    .expect("metric registers once")
});
static FORFEITED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_waiting_room_forfeited_total",
        "Places skipped because their fan went quiet past the grace period, by show.",
        &["show_id"]
    )
    .expect("metric registers once")
});
static LEASE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    register_int_gauge_vec!(
        "floodgate_waiting_room_lease_held",
        "1 when this replica admits for the show, by show.",
        &["show_id"]
    )
    .expect("metric registers once")
});

static ADMISSION_SHARE: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "floodgate_waiting_room_admission_share_ratio",
        "Share of the configured admission rate admitted now (1: all of it; less while the show's \
         booking pipeline lags), by show.",
        &["show_id"]
    )
    .expect("metric registers once")
});
static BOOKING_LAG: LazyLock<GaugeVec> = LazyLock::new(|| {
    register_gauge_vec!(
        "floodgate_waiting_room_booking_lag_seconds",
        "How long the show's writer's latest batch's oldest command had waited, as the controller \
         last read it (0 when none is recent), by show.",
        &["show_id"]
    )
    .expect("metric registers once")
});

/// Records the share of the admission rate in use and the booking lag it answers to.
pub fn admission_share(show: ShowId, share: f64, booking_lag_ms: Option<u64>) {
    let label = show.to_string();
    ADMISSION_SHARE.with_label_values(&[&label]).set(share);
    BOOKING_LAG
        .with_label_values(&[&label])
        .set(booking_lag_ms.unwrap_or(0) as f64 / 1000.0);
}

/// Records one tick's outcome.
pub fn observe_tick(show: ShowId, admitted: u64, skipped: u64, serving: u64, active: u64, waiting: u64) {
    let label = show.to_string();
    ADMISSIONS.with_label_values(&[&label]).inc_by(admitted);
    FORFEITED.with_label_values(&[&label]).inc_by(skipped);
    SERVING.with_label_values(&[&label]).set(serving as i64);
    ACTIVE.with_label_values(&[&label]).set(active as i64);
    QUEUE_LENGTH.with_label_values(&[&label]).set(waiting as i64);
}

/// Records whether this replica holds the show's lease.
pub fn lease_held(show: ShowId, held: bool) {
    LEASE.with_label_values(&[&show.to_string()]).set(i64::from(held));
}
