//! Notifier metrics. Labels are the notification kind, the channel and a reason: bounded sets,
//! never user ids or addresses.

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec, exponential_buckets, register_histogram_vec, register_int_counter_vec};

use crate::events::{Channel, Kind};

static SENT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_notifications_sent_total",
        "Notifications delivered (SMTP accepted the e-mail, the webhook answered 2xx), by kind and channel.",
        &["kind", "channel"]
    )
    .expect("metric registers once")
});
static RETRIED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_notifications_retried_total",
        "Deliveries that failed transiently and were sent to a retry queue, by kind and channel.",
        &["kind", "channel"]
    )
    .expect("metric registers once")
});
static DEAD_LETTERED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_notifications_dead_lettered_total",
        "Notifications given up and sent to the dead-letter exchange, by kind, channel and reason \
         (permanent, exhausted, undecodable).",
        &["kind", "channel", "reason"]
    )
    .expect("metric registers once")
});
static DUPLICATES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register_int_counter_vec!(
        "floodgate_notifications_duplicates_total",
        "Redelivered facts whose notification had been delivered or given up already (nothing sent).",
        &["kind", "channel"]
    )
    .expect("metric registers once")
});
static SMTP_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "floodgate_notifier_smtp_seconds",
        "Time to hand one e-mail to the SMTP server, by outcome (sent, transient, permanent).",
        &["outcome"],
        exponential_buckets(0.002, 2.0, 14).expect("valid buckets")
    )
    .expect("metric registers once")
});
static WEBHOOK_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register_histogram_vec!(
        "floodgate_notifier_webhook_seconds",
        "Time of one organizer webhook POST, by outcome (sent, transient, permanent).",
        &["outcome"],
        exponential_buckets(0.002, 2.0, 14).expect("valid buckets")
    )
    .expect("metric registers once")
});

/// Creates at zero the series of every kind and channel (and of webhook POSTs by outcome), so
/// `/metrics` shows them before the first notification and an alert's `increase()` sees the
/// first failure.
pub fn register() {
    for kind in Kind::ALL {
        for channel in [Channel::Email, Channel::Webhook] {
            let labels = [kind.as_str(), channel.as_str()];
            SENT.with_label_values(&labels);
            RETRIED.with_label_values(&labels);
            DUPLICATES.with_label_values(&labels);
            for reason in ["permanent", "exhausted"] {
                DEAD_LETTERED.with_label_values(&[labels[0], labels[1], reason]);
            }
        }
    }
    DEAD_LETTERED.with_label_values(&["none", "none", "undecodable"]);
    for outcome in ["sent", "transient", "permanent"] {
        WEBHOOK_SECONDS.with_label_values(&[outcome]);
    }
}

/// A notification delivered.
pub fn sent(kind: Kind, channel: Channel) {
    SENT.with_label_values(&[kind.as_str(), channel.as_str()]).inc();
}

/// A delivery sent to a retry queue.
pub fn retried(kind: Kind, channel: Channel) {
    RETRIED.with_label_values(&[kind.as_str(), channel.as_str()]).inc();
}

/// A notification (or an unreadable message: kind and channel `none`) dead-lettered.
pub fn dead_lettered(kind: &str, channel: &str, reason: &str) {
    DEAD_LETTERED.with_label_values(&[kind, channel, reason]).inc();
}

/// A duplicate recognised.
pub fn duplicate(kind: Kind, channel: Channel) {
    DUPLICATES.with_label_values(&[kind.as_str(), channel.as_str()]).inc();
}

/// One SMTP send.
pub fn smtp(outcome: &str, seconds: f64) {
    SMTP_SECONDS.with_label_values(&[outcome]).observe(seconds);
}

/// One webhook POST.
pub fn webhook(outcome: &str, seconds: f64) {
    WEBHOOK_SECONDS.with_label_values(&[outcome]).observe(seconds);
}
