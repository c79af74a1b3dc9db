//! What the admission controller reads from PostgreSQL: the shows whose rooms are live, with
//! their settings and the seats still sellable. (The booking pipeline will publish availability
//! counts to Redis; until then they come from `show_seat`.)

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
    sellable: i64,
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
                s.waiting_room_paused,
                (SELECT count(*) FROM show_seat ss WHERE ss.show_id = s.show_id AND ss.status = 'available') AS sellable
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
            sellable: u64::try_from(row.sellable).unwrap_or(0),
        })
        .collect())
}
