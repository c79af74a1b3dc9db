//! `venue`, `section`, `seat`: the immutable layouts. Seats are written in one set-based
//! statement per venue (arrays + UNNEST), so a 50,000-seat stadium is one round trip.

use common::ids::{SeatId, SectionId, UserId, VenueId};
use sqlx::{PgExecutor, prelude::FromRow};
use time::OffsetDateTime;

/// A venue as stored.
#[derive(Debug, Clone, FromRow)]
pub struct VenueRow {
    /// Id.
    pub venue_id: VenueId,
    /// Name.
    pub name: String,
    /// City.
    pub city: String,
    /// Street address.
    pub address: String,
    /// IANA time zone.
    pub timezone: String,
    /// Seats in the layout.
    pub seat_count: i32,
    /// Creator.
    pub created_by: Option<UserId>,
    /// Creation time.
    pub created_at: OffsetDateTime,
}

/// Seats of a section, summarised.
#[derive(Debug, Clone, FromRow)]
pub struct SectionSummaryRow {
    /// Id.
    pub section_id: SectionId,
    /// Name.
    pub name: String,
    /// Rows in the section.
    pub row_count: i64,
    /// Seats in the section.
    pub seat_count: i64,
    /// Tiers used in the section.
    pub tiers: Vec<String>,
}

/// Seats to insert, column by column (the shape UNNEST wants).
#[derive(Debug, Default)]
pub struct SeatColumns {
    /// Seat ids.
    pub seat_id: Vec<SeatId>,
    /// Section of each seat.
    pub section_id: Vec<SectionId>,
    /// Dense index of each seat.
    pub seat_index: Vec<i32>,
    /// Row labels.
    pub row_label: Vec<String>,
    /// Seat numbers within the row.
    pub number: Vec<i32>,
    /// Horizontal positions.
    pub x: Vec<f32>,
    /// Vertical positions.
    pub y: Vec<f32>,
    /// Tiers.
    pub tier: Vec<String>,
}

/// Inserts a venue.
#[tracing::instrument(skip_all, fields(venue_id = %row.venue_id))]
pub async fn insert(db: impl PgExecutor<'_>, row: &VenueRow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO venue (venue_id, name, city, address, timezone, seat_count, created_by)
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(row.venue_id)
    .bind(&row.name)
    .bind(&row.city)
    .bind(&row.address)
    .bind(&row.timezone)
    .bind(row.seat_count)
    .bind(row.created_by)
    .execute(db)
    .await
    .map(|_| ())
}

/// Inserts a venue's sections in one statement.
#[tracing::instrument(skip_all, fields(venue_id = %venue, sections = ids.len()))]
pub async fn insert_sections(
    db: impl PgExecutor<'_>,
    venue: VenueId,
    ids: &[SectionId],
    names: &[String],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO section (section_id, venue_id, name, position)
         SELECT id, $1, name, position::integer - 1
         FROM UNNEST($2::uuid[], $3::text[]) WITH ORDINALITY AS s (id, name, position)",
    )
    .bind(venue)
    .bind(ids)
    .bind(names)
    .execute(db)
    .await
    .map(|_| ())
}

/// Inserts every seat of a venue in one statement.
#[tracing::instrument(skip_all, fields(venue_id = %venue, seats = seats.seat_id.len()))]
pub async fn insert_seats(db: impl PgExecutor<'_>, venue: VenueId, seats: &SeatColumns) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO seat (seat_id, venue_id, section_id, seat_index, row_label, number, x, y, tier)
         SELECT seat_id, $1, section_id, seat_index, row_label, number, x, y, tier
         FROM UNNEST($2::uuid[], $3::uuid[], $4::int4[], $5::text[], $6::int4[], $7::float4[], $8::float4[], $9::text[])
              AS s (seat_id, section_id, seat_index, row_label, number, x, y, tier)",
    )
    .bind(venue)
    .bind(&seats.seat_id)
    .bind(&seats.section_id)
    .bind(&seats.seat_index)
    .bind(&seats.row_label)
    .bind(&seats.number)
    .bind(&seats.x)
    .bind(&seats.y)
    .bind(&seats.tier)
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// A venue by id.
#[tracing::instrument(skip(db))]
pub async fn find(db: impl PgExecutor<'_>, id: VenueId) -> Result<Option<VenueRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT venue_id, name, city, address, timezone, seat_count, created_by, created_at
         FROM venue WHERE venue_id = $1",
    )
    .bind(id)
    .fetch_optional(db)
    .await
}

/// Venues, newest first, after the cursor `before` (keyset pagination on the time-ordered id).
#[tracing::instrument(skip(db))]
pub async fn list(db: impl PgExecutor<'_>, before: Option<VenueId>, limit: i64) -> Result<Vec<VenueRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT venue_id, name, city, address, timezone, seat_count, created_by, created_at
         FROM venue WHERE ($1::uuid IS NULL OR venue_id < $1)
         ORDER BY venue_id DESC LIMIT $2",
    )
    .bind(before)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// Sections of a venue with their row and seat counts, in definition order.
#[tracing::instrument(skip(db))]
pub async fn sections(db: impl PgExecutor<'_>, venue: VenueId) -> Result<Vec<SectionSummaryRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT s.section_id, s.name,
                count(DISTINCT seat.row_label) AS row_count,
                count(seat.seat_id) AS seat_count,
                coalesce(array_agg(DISTINCT seat.tier) FILTER (WHERE seat.tier IS NOT NULL), '{}') AS tiers
         FROM section s LEFT JOIN seat ON seat.section_id = s.section_id
         WHERE s.venue_id = $1
         GROUP BY s.section_id, s.name, s.position
         ORDER BY s.position",
    )
    .bind(venue)
    .fetch_all(db)
    .await
}

/// The distinct tiers of a venue's seats.
#[tracing::instrument(skip(db))]
pub async fn tiers(db: impl PgExecutor<'_>, venue: VenueId) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT DISTINCT tier FROM seat WHERE venue_id = $1 ORDER BY tier")
        .bind(venue)
        .fetch_all(db)
        .await
}
