//! Read-only queries on `booking` (the booking-worker writes it).

use common::ids::{BookingId, ShowId, UserId};
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
