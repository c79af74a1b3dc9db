//! Read-only queries on `booking` (the booking-worker writes it).

use common::ids::{BookingId, CommandId, SeatId, ShowId, UserId};
use sqlx::{PgExecutor, prelude::FromRow};
use time::OffsetDateTime;

/// A booking as listed to its owner.
#[derive(Debug, Clone, FromRow)]
pub struct BookingRow {
    /// Id.
    pub booking_id: BookingId,
    /// Show.
    pub show_id: ShowId,
    /// Status.
    pub status: String,
    /// Seats.
    pub seat_count: i32,
    /// Total.
    pub total_cents: i64,
    /// Currency.
    pub currency: String,
    /// Hold expiry.
    pub expires_at: OffsetDateTime,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// A user's bookings, newest first, before the cursor (keyset on the time-ordered id).
#[tracing::instrument(skip(db))]
pub async fn for_user(
    db: impl PgExecutor<'_>,
    user: UserId,
    before: Option<BookingId>,
    limit: i64,
) -> Result<Vec<BookingRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT booking_id, show_id, status, seat_count, total_cents, currency, expires_at, created_at
         FROM booking WHERE app_user_id = $1 AND ($2::uuid IS NULL OR booking_id < $2)
         ORDER BY booking_id DESC LIMIT $3",
    )
    .bind(user)
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// A hold request's stored outcome.
#[derive(Debug, Clone, FromRow)]
pub struct HoldRequestRow {
    /// The fan.
    pub app_user_id: UserId,
    /// The booking, when held.
    pub booking_id: Option<BookingId>,
    /// The rejection code, when rejected.
    pub code: Option<String>,
    /// Rejection details (`unavailable_seat_ids`).
    pub detail: Option<serde_json::Value>,
}

/// The outcome of the caller's hold request, once its show's writer has answered it.
#[tracing::instrument(skip(db))]
pub async fn hold_request(
    db: impl PgExecutor<'_>,
    request: CommandId,
    user: UserId,
) -> Result<Option<HoldRequestRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT app_user_id, booking_id, code, detail FROM hold_request
         WHERE hold_request_id = $1 AND app_user_id = $2",
    )
    .bind(request)
    .bind(user)
    .fetch_optional(db)
    .await
}

/// A booking with its totals, as its owner sees it.
#[derive(Debug, Clone, FromRow)]
pub struct BookingDetailRow {
    /// Id.
    pub booking_id: BookingId,
    /// Show.
    pub show_id: ShowId,
    /// Status.
    pub status: String,
    /// Before discounts.
    pub subtotal_cents: i64,
    /// Discount.
    pub discount_cents: i64,
    /// Total.
    pub total_cents: i64,
    /// Currency.
    pub currency: String,
    /// Hold expiry.
    pub expires_at: OffsetDateTime,
}

/// The caller's booking (another user's is `None`, so it reads as 404).
#[tracing::instrument(skip(db))]
pub async fn find(
    db: impl PgExecutor<'_>,
    booking: BookingId,
    user: UserId,
) -> Result<Option<BookingDetailRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT booking_id, show_id, status, subtotal_cents, discount_cents, total_cents, currency, expires_at
         FROM booking WHERE booking_id = $1 AND app_user_id = $2",
    )
    .bind(booking)
    .bind(user)
    .fetch_optional(db)
    .await
}

/// A seat of a booking.
#[derive(Debug, Clone, FromRow)]
pub struct BookingSeatRow {
    /// Seat.
    pub seat_id: SeatId,
    /// Its index in the show.
    pub seat_index: i32,
    /// Tier.
    pub tier: String,
    /// Price paid or to pay.
    pub price_cents: i32,
}

/// A booking's seats, by index.
#[tracing::instrument(skip(db))]
pub async fn seats(db: impl PgExecutor<'_>, booking: BookingId) -> Result<Vec<BookingSeatRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT bs.seat_id, ss.seat_index, ss.tier, bs.price_cents
         FROM booking_seat bs JOIN show_seat ss ON ss.show_id = bs.show_id AND ss.seat_id = bs.seat_id
         WHERE bs.booking_id = $1
         ORDER BY ss.seat_index",
    )
    .bind(booking)
    .fetch_all(db)
    .await
}

/// What decides whether a booking may be cancelled.
#[derive(Debug, Clone, FromRow)]
pub struct CancelTermsRow {
    /// Show.
    pub show_id: ShowId,
    /// Status.
    pub status: String,
    /// The show's start minus its cancellation cut-off.
    pub cancellable_until: OffsetDateTime,
}

/// The caller's booking with its show's cancellation deadline (another user's is `None`).
#[tracing::instrument(skip(db))]
pub async fn cancel_terms(
    db: impl PgExecutor<'_>,
    booking: BookingId,
    user: UserId,
) -> Result<Option<CancelTermsRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT b.show_id, b.status, s.starts_at - s.cancel_cutoff_seconds * interval '1 second' AS cancellable_until
         FROM booking b JOIN show s ON s.show_id = b.show_id
         WHERE b.booking_id = $1 AND b.app_user_id = $2",
    )
    .bind(booking)
    .bind(user)
    .fetch_optional(db)
    .await
}
