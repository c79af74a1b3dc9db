//! What the admission controller reads from PostgreSQL: the shows whose rooms are live, with
//! their settings, and (only for a show whose writer has not published an availability
//! snapshot to Redis yet) the seats still sellable.

use common::ids::ShowId;
use sqlx::{PgExecutor, prelude::FromRow};
use time::OffsetDateTime;

use crate::controller::ShowSettings;

#[derive(Debug, FromRow)]
struct Row {
    show_id: ShowId,
    prequeue_opens_at: OffsetDateTime,
    on_sale_at: OffsetDateTime,
    admit_per_second: i32,
    max_active: i32,
    waiting_room_paused: bool,
}

fn unix_ms(at: OffsetDateTime) -> u64 {
    u64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(0)
}

/// Shows whose room is live or opens within the hour (so the seed commitment is published
/// well before the pre-queue opens) and that have not started yet.
#[tracing::instrument(skip(db))]
pub async fn live_shows(db: impl PgExecutor<'_>) -> Result<Vec<ShowSettings>, sqlx::Error> {
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT s.show_id, s.prequeue_opens_at, s.on_sale_at, s.admit_per_second, s.max_active,
                s.waiting_room_paused
         FROM show s
         WHERE s.status IN ('scheduled', 'on_sale', 'sold_out')
           AND s.starts_at > now()
           AND s.prequeue_opens_at <= now() + interval '1 hour'",
    )
    .fetch_all(db)
    .await?;
    Ok(rows
        .into_iter()
        .map(|row| ShowSettings {
            show_id: row.show_id,
            prequeue_opens_at_ms: unix_ms(row.prequeue_opens_at),
            on_sale_at_ms: unix_ms(row.on_sale_at),
            admit_per_second: u32::try_from(row.admit_per_second).unwrap_or(1),
            max_active: u32::try_from(row.max_active).unwrap_or(1),
            paused: row.waiting_room_paused,
            // Filled in by the caller from the availability snapshot.
            sellable: 0,
            booking_lag_ms: None,
        })
        .collect())
}

/// Seats of the show on sale, from PostgreSQL (for a show without an availability snapshot).
#[tracing::instrument(skip(db))]
pub async fn available_seats(db: impl PgExecutor<'_>, show: ShowId) -> Result<u64, sqlx::Error> {
    let count: i64 = sqlx::query_scalar("SELECT count(*) FROM show_seat WHERE show_id = $1 AND status = 'available'")
        .bind(show)
        .fetch_one(db)
        .await?;
    Ok(u64::try_from(count).unwrap_or(0))
}
