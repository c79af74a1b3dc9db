//! `ticket` as ingress uses it: reads for the fan, and the check-in columns, which only ingress
//! writes (the booking-worker issues and voids tickets).

use common::ids::{BookingId, SeatId, ShowId, TicketId, UserId};
use sqlx::{PgExecutor, prelude::FromRow};
use time::OffsetDateTime;

/// A ticket with the label of its seat.
#[derive(Debug, Clone, FromRow)]
pub struct TicketRow {
    /// Id.
    pub ticket_id: TicketId,
    /// The booking that bought it.
    pub booking_id: BookingId,
    /// Show.
    pub show_id: ShowId,
    /// Seat.
    pub seat_id: SeatId,
    /// Section name.
    pub section: String,
    /// Row label.
    pub row_label: String,
    /// Seat number.
    pub number: i32,
    /// The code the QR image carries.
    pub code: String,
    /// The server's signature over code, show and seat.
    pub signature: String,
    /// First scan at the door.
    pub checked_in_at: Option<OffsetDateTime>,
    /// Set when the booking was cancelled.
    pub voided_at: Option<OffsetDateTime>,
    /// The organizer who owns the show's event.
    pub owner: Option<UserId>,
}

/// The columns of [`TicketRow`] over `ticket t` joined to its seat, section, show and event.
macro_rules! ticket_from {
    () => {
        "SELECT t.ticket_id, t.booking_id, t.show_id, t.seat_id, sec.name AS section, seat.row_label,
                seat.number, t.code, t.signature, t.checked_in_at, t.voided_at, e.created_by AS owner
         FROM ticket t
         JOIN seat ON seat.seat_id = t.seat_id
         JOIN section sec ON sec.section_id = seat.section_id
         JOIN show s ON s.show_id = t.show_id
         JOIN event e ON e.event_id = s.event_id"
    };
}

/// The tickets of a booking, in seat order.
#[tracing::instrument(skip(db))]
pub async fn for_booking(db: impl PgExecutor<'_>, booking: BookingId) -> Result<Vec<TicketRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        ticket_from!(),
        " WHERE t.booking_id = $1 ORDER BY seat.seat_index, t.issued_at"
    ))
    .bind(booking)
    .fetch_all(db)
    .await
}

/// The caller's ticket (another user's is `None`, so it reads as 404).
#[tracing::instrument(skip(db))]
pub async fn find_for_user(
    db: impl PgExecutor<'_>,
    ticket: TicketId,
    user: UserId,
) -> Result<Option<TicketRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        ticket_from!(),
        " JOIN booking b ON b.booking_id = t.booking_id WHERE t.ticket_id = $1 AND b.app_user_id = $2"
    ))
    .bind(ticket)
    .bind(user)
    .fetch_optional(db)
    .await
}

/// The ticket carrying `code` (served by the unique index on `code`).
#[tracing::instrument(skip_all)]
pub async fn find_by_code(db: impl PgExecutor<'_>, code: &str) -> Result<Option<TicketRow>, sqlx::Error> {
    sqlx::query_as(concat!(ticket_from!(), " WHERE t.code = $1"))
        .bind(code)
        .fetch_optional(db)
        .await
}

/// Checks a valid ticket in, unless it already is (or was voided meanwhile): the condition in
/// the UPDATE makes two simultaneous scans admit exactly one person. Returns the check-in
/// time when this call did it.
#[tracing::instrument(skip(db))]
pub async fn check_in(
    db: impl PgExecutor<'_>,
    ticket: TicketId,
    by: UserId,
) -> Result<Option<OffsetDateTime>, sqlx::Error> {
    sqlx::query_scalar(
        "UPDATE ticket SET checked_in_at = now(), checked_in_by = $2
         WHERE ticket_id = $1 AND checked_in_at IS NULL AND voided_at IS NULL
         RETURNING checked_in_at",
    )
    .bind(ticket)
    .bind(by)
    .fetch_optional(db)
    .await
}

/// A ticket's door state as it is now.
#[derive(Debug, Clone, Copy, FromRow)]
pub struct DoorStateRow {
    /// First scan at the door.
    pub checked_in_at: Option<OffsetDateTime>,
    /// Set when the booking was cancelled.
    pub voided_at: Option<OffsetDateTime>,
}

/// A ticket's check-in and void times as they are now.
#[tracing::instrument(skip(db))]
pub async fn door_state(db: impl PgExecutor<'_>, ticket: TicketId) -> Result<Option<DoorStateRow>, sqlx::Error> {
    sqlx::query_as("SELECT checked_in_at, voided_at FROM ticket WHERE ticket_id = $1")
        .bind(ticket)
        .fetch_optional(db)
        .await
}
