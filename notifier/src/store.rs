//! The notifier's SQL: what it reads to write a message (the fan, the booking's show, event and
//! venue, the tickets and seats) and the `notification` ledger it alone writes. One statement per
//! function; runtime-checked queries, exercised by the integration tests.

use std::time::Duration;

use common::ids::{BookingId, EventId, ShowId, TicketId};
use sqlx::{FromRow, PgPool};
use uuid::Uuid;

/// A booking with everything a message about it names.
#[derive(Debug, Clone, FromRow)]
pub struct BookingContext {
    /// The fan's address.
    pub email: String,
    /// The fan's name.
    pub name: String,
    /// The show.
    pub show_id: ShowId,
    /// The show's event.
    pub event_id: EventId,
    /// The event's title.
    pub event_title: String,
    /// The venue's name.
    pub venue_name: String,
    /// The venue's city.
    pub city: String,
    /// The show's start in the venue's time zone, e.g. `Saturday 21 November 2026, 20:00`.
    pub starts_local: String,
    /// The venue's IANA time zone.
    pub timezone: String,
    /// The booking's currency (ISO 4217).
    pub currency: String,
    /// The booking's end of hold in the venue's time zone, e.g. `20:15 on Friday 20 November`
    /// (for offers).
    pub expires_local: String,
    /// The organizer's webhook URL, if the event has one.
    pub webhook_url: Option<String>,
    /// The secret its POSTs are signed with.
    pub webhook_secret: Option<String>,
}

/// Loads a booking's context, or `None` when the booking does not exist.
#[tracing::instrument(skip(db))]
pub async fn booking_context(db: &PgPool, booking: BookingId) -> Result<Option<BookingContext>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT u.email, u.name, s.show_id, e.event_id, e.title AS event_title, v.name AS venue_name, v.city,
                to_char(s.starts_at AT TIME ZONE v.timezone, 'FMDay DD FMMonth YYYY, HH24:MI') AS starts_local,
                v.timezone, b.currency,
                to_char(b.expires_at AT TIME ZONE v.timezone, 'HH24:MI "on" FMDay DD FMMonth') AS expires_local,
                e.webhook_url, e.webhook_secret
         FROM booking b
         JOIN app_user u ON u.app_user_id = b.app_user_id
         JOIN show s ON s.show_id = b.show_id
         JOIN event e ON e.event_id = s.event_id
         JOIN venue v ON v.venue_id = s.venue_id
         WHERE b.booking_id = $1"#,
    )
    .bind(booking)
    .fetch_optional(db)
    .await
}

/// A ticket with its seat's label.
#[derive(Debug, Clone, FromRow)]
pub struct TicketRow {
    /// The ticket.
    pub ticket_id: TicketId,
    /// The code the QR image carries.
    pub code: String,
    /// The seat's section.
    pub section: String,
    /// The seat's row.
    pub row_label: String,
    /// The seat's number in its row.
    pub number: i32,
    /// The seat's price tier.
    pub tier: String,
    /// What the seat cost.
    pub price_cents: i32,
}

/// The tickets `ids` in seat order (section, row, number).
#[tracing::instrument(skip(db, ids), fields(tickets = ids.len()))]
pub async fn tickets(db: &PgPool, ids: &[TicketId]) -> Result<Vec<TicketRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.ticket_id, t.code, sec.name AS section, st.row_label, st.number, st.tier, bs.price_cents
         FROM ticket t
         JOIN seat st ON st.seat_id = t.seat_id
         JOIN section sec ON sec.section_id = st.section_id
         JOIN booking_seat bs ON bs.booking_id = t.booking_id AND bs.seat_id = t.seat_id
         WHERE t.ticket_id = ANY($1)
         ORDER BY sec.position, st.row_label, st.number",
    )
    .bind(ids)
    .fetch_all(db)
    .await
}

/// A seat of a booking, labelled.
#[derive(Debug, Clone, FromRow)]
pub struct SeatRow {
    /// The seat's section.
    pub section: String,
    /// The seat's row.
    pub row_label: String,
    /// The seat's number in its row.
    pub number: i32,
    /// The seat's price tier.
    pub tier: String,
    /// What the seat costs.
    pub price_cents: i32,
}

/// Every seat the booking held or holds (released ones included: an expiry names them).
#[tracing::instrument(skip(db))]
pub async fn booking_seats(db: &PgPool, booking: BookingId) -> Result<Vec<SeatRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT sec.name AS section, st.row_label, st.number, st.tier, bs.price_cents
         FROM booking_seat bs
         JOIN seat st ON st.seat_id = bs.seat_id
         JOIN section sec ON sec.section_id = st.section_id
         WHERE bs.booking_id = $1
         ORDER BY sec.position, st.row_label, st.number",
    )
    .bind(booking)
    .fetch_all(db)
    .await
}

/// A notification about to be delivered.
#[derive(Debug, Clone)]
pub struct NewNotification<'a> {
    /// The fact's message id, kind and channel.
    pub dedupe_key: &'a str,
    /// `booking_confirmed`, ...
    pub kind: &'a str,
    /// `email` or `webhook`.
    pub channel: &'a str,
    /// The address or URL.
    pub recipient: &'a str,
    /// The booking it is about.
    pub booking_id: BookingId,
    /// The e-mail's subject (the fact type for webhooks).
    pub subject: &'a str,
}

/// The outcome of [`claim`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// This replica may deliver it now; `attempts` counts this attempt.
    Claimed {
        /// The ledger row.
        notification_id: Uuid,
        /// Attempts so far, this one included.
        attempts: i32,
    },
    /// Already delivered or given up, or another replica holds the lease (see [`status`]).
    NotClaimed,
}

/// Records the notification (first time) or takes it again (a retry), and leases it to this
/// replica for `lease`. Nothing is claimed when it was sent or given up already, or while another
/// replica's lease runs: that is what makes a redelivered fact send nothing twice.
#[tracing::instrument(skip(db, new), fields(dedupe_key = new.dedupe_key))]
pub async fn claim(db: &PgPool, new: &NewNotification<'_>, lease: Duration) -> Result<Claim, sqlx::Error> {
    let row: Option<(Uuid, i32)> = sqlx::query_as(
        "INSERT INTO notification
             (notification_id, dedupe_key, kind, channel, recipient, booking_id, subject, attempts, locked_until)
         VALUES ($1, $2, $3, $4, $5, $6, $7, 1, now() + make_interval(secs => $8))
         ON CONFLICT (dedupe_key) DO UPDATE
             SET attempts = notification.attempts + 1, locked_until = EXCLUDED.locked_until,
                 recipient = EXCLUDED.recipient, subject = EXCLUDED.subject
             WHERE notification.status IN ('pending', 'failed')
               AND (notification.locked_until IS NULL OR notification.locked_until < now())
         RETURNING notification_id, attempts",
    )
    .bind(Uuid::now_v7())
    .bind(new.dedupe_key)
    .bind(new.kind)
    .bind(new.channel)
    .bind(new.recipient)
    .bind(new.booking_id)
    .bind(new.subject)
    .bind(lease.as_secs_f64())
    .fetch_optional(db)
    .await?;
    Ok(match row {
        Some((notification_id, attempts)) => Claim::Claimed {
            notification_id,
            attempts,
        },
        None => Claim::NotClaimed,
    })
}

/// The ledger status of a notification (`pending`, `sent`, `failed`, `dead`), if recorded.
#[tracing::instrument(skip(db))]
pub async fn status(db: &PgPool, dedupe_key: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT status FROM notification WHERE dedupe_key = $1")
        .bind(dedupe_key)
        .fetch_optional(db)
        .await
}

/// The notification was delivered.
#[tracing::instrument(skip(db))]
pub async fn mark_sent(db: &PgPool, notification: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notification SET status = 'sent', sent_at = now(), locked_until = NULL, last_error = NULL
         WHERE notification_id = $1",
    )
    .bind(notification)
    .execute(db)
    .await
    .map(|_| ())
}

/// The attempt failed and will be retried (`failed`), or the notification is given up (`dead`).
#[tracing::instrument(skip(db, error))]
pub async fn mark_failed(db: &PgPool, notification: Uuid, dead: bool, error: &str) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE notification SET status = $2, locked_until = NULL, last_error = left($3, 2000)
         WHERE notification_id = $1",
    )
    .bind(notification)
    .bind(if dead { "dead" } else { "failed" })
    .bind(error)
    .execute(db)
    .await
    .map(|_| ())
}
