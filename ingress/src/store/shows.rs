//! `show`, `show_price` and the show's inventory as ingress reads it. Ingress creates a show's
//! `show_seat` rows (one set-based INSERT ... SELECT from the venue's seats); from then on only
//! the booking-worker changes them.

use common::ids::{EventId, SeatId, ShowId, UserId, VenueId};
use sqlx::{PgExecutor, prelude::FromRow};
use time::OffsetDateTime;

/// The columns of a show with the owner of its event, from `show s JOIN event e`. A macro so
/// that the statements stay `&'static str` (sqlx refuses SQL built at run time).
macro_rules! show_columns {
    () => {
        "s.show_id, s.event_id, s.venue_id, s.starts_at, s.on_sale_at, s.status,
    s.currency, s.max_tickets_per_user, s.hold_seconds, s.cancel_cutoff_seconds, s.admit_per_second,
    s.max_active, s.prequeue_opens_at, s.waiting_room_paused, s.capacity, s.sold_count,
    s.inventory_version, s.created_at, e.created_by AS owner"
    };
}

/// A show as stored.
#[derive(Debug, Clone, FromRow)]
pub struct ShowRow {
    /// Id.
    pub show_id: ShowId,
    /// Event.
    pub event_id: EventId,
    /// Venue.
    pub venue_id: VenueId,
    /// Start of the performance.
    pub starts_at: OffsetDateTime,
    /// Start of the sale.
    pub on_sale_at: OffsetDateTime,
    /// Sale status.
    pub status: String,
    /// ISO 4217 currency.
    pub currency: String,
    /// Tickets one fan may hold or buy.
    pub max_tickets_per_user: i32,
    /// Hold duration.
    pub hold_seconds: i32,
    /// Cancellation cut-off before the start.
    pub cancel_cutoff_seconds: i32,
    /// Waiting room: admissions per second.
    pub admit_per_second: i32,
    /// Waiting room: concurrent shopping sessions.
    pub max_active: i32,
    /// Waiting room: when the pre-queue opens.
    pub prequeue_opens_at: OffsetDateTime,
    /// Waiting room: paused by an organizer.
    pub waiting_room_paused: bool,
    /// Seats in the show.
    pub capacity: i32,
    /// Seats sold.
    pub sold_count: i32,
    /// Inventory version (seat map ETag).
    pub inventory_version: i64,
    /// Creation time.
    pub created_at: OffsetDateTime,
    /// The organizer who owns the show's event.
    pub owner: Option<UserId>,
}

/// A new show's settings.
#[derive(Debug, Clone)]
pub struct NewShow {
    /// Id.
    pub show_id: ShowId,
    /// Event.
    pub event_id: EventId,
    /// Venue.
    pub venue_id: VenueId,
    /// Start of the performance.
    pub starts_at: OffsetDateTime,
    /// Start of the sale.
    pub on_sale_at: OffsetDateTime,
    /// Currency.
    pub currency: String,
    /// Per-fan limit.
    pub max_tickets_per_user: i32,
    /// Hold duration.
    pub hold_seconds: i32,
    /// Cancellation cut-off.
    pub cancel_cutoff_seconds: i32,
    /// Admissions per second.
    pub admit_per_second: i32,
    /// Concurrent shopping sessions.
    pub max_active: i32,
    /// When the pre-queue opens.
    pub prequeue_opens_at: OffsetDateTime,
    /// Seats in the venue.
    pub capacity: i32,
}

/// One seat of a show's seat map.
#[derive(Debug, Clone, FromRow)]
pub struct SeatMapRow {
    /// Seat id.
    pub seat_id: SeatId,
    /// Bitmap index.
    pub seat_index: i32,
    /// Section name.
    pub section: String,
    /// Row label.
    pub row_label: String,
    /// Seat number.
    pub number: i32,
    /// Position.
    pub x: f32,
    /// Position.
    pub y: f32,
    /// Tier.
    pub tier: String,
    /// Wheelchair accessible.
    pub accessible: bool,
    /// available / held / sold / blocked.
    pub status: String,
    /// Price of the seat's tier.
    pub price_cents: i32,
}

/// Seat counts by status.
#[derive(Debug, Clone, Copy, Default, FromRow)]
pub struct CountsRow {
    /// Available seats.
    pub available: i64,
    /// Held seats.
    pub held: i64,
    /// Sold seats.
    pub sold: i64,
    /// Blocked seats.
    pub blocked: i64,
}

/// Confirmed sales of a show.
#[derive(Debug, Clone, Copy, Default, FromRow)]
pub struct SalesRow {
    /// Confirmed bookings.
    pub bookings: i64,
    /// Revenue of confirmed bookings, in minor units.
    pub revenue_cents: i64,
}

/// Inserts a show.
#[tracing::instrument(skip_all, fields(show_id = %show.show_id))]
pub async fn insert(db: impl PgExecutor<'_>, show: &NewShow) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO show (show_id, event_id, venue_id, starts_at, on_sale_at, currency,
                           max_tickets_per_user, hold_seconds, cancel_cutoff_seconds,
                           admit_per_second, max_active, prequeue_opens_at, capacity)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
    )
    .bind(show.show_id)
    .bind(show.event_id)
    .bind(show.venue_id)
    .bind(show.starts_at)
    .bind(show.on_sale_at)
    .bind(&show.currency)
    .bind(show.max_tickets_per_user)
    .bind(show.hold_seconds)
    .bind(show.cancel_cutoff_seconds)
    .bind(show.admit_per_second)
    .bind(show.max_active)
    .bind(show.prequeue_opens_at)
    .bind(show.capacity)
    .execute(db)
    .await
    .map(|_| ())
}

/// Stores the price of each tier, in one statement.
#[tracing::instrument(skip(db))]
pub async fn insert_prices(
    db: impl PgExecutor<'_>,
    show: ShowId,
    tiers: &[String],
    prices: &[i32],
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO show_price (show_id, tier, price_cents)
         SELECT $1, tier, price FROM UNNEST($2::text[], $3::int4[]) AS p (tier, price)",
    )
    .bind(show)
    .bind(tiers)
    .bind(prices)
    .execute(db)
    .await
    .map(|_| ())
}

/// Creates one `show_seat` row per seat of the venue, all available, in one statement.
#[tracing::instrument(skip(db))]
pub async fn insert_inventory(db: impl PgExecutor<'_>, show: ShowId, venue: VenueId) -> Result<u64, sqlx::Error> {
    sqlx::query(
        "INSERT INTO show_seat (show_id, seat_id, seat_index, tier)
         SELECT $1, seat_id, seat_index, tier FROM seat WHERE venue_id = $2",
    )
    .bind(show)
    .bind(venue)
    .execute(db)
    .await
    .map(|done| done.rows_affected())
}

/// A show by id.
#[tracing::instrument(skip(db))]
pub async fn find(db: impl PgExecutor<'_>, id: ShowId) -> Result<Option<ShowRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        show_columns!(),
        " FROM show s JOIN event e ON e.event_id = s.event_id WHERE s.show_id = $1"
    ))
    .bind(id)
    .fetch_optional(db)
    .await
}

/// The shows of an event, earliest first.
#[tracing::instrument(skip(db))]
pub async fn for_event(db: impl PgExecutor<'_>, event: EventId) -> Result<Vec<ShowRow>, sqlx::Error> {
    sqlx::query_as(concat!(
        "SELECT ",
        show_columns!(),
        " FROM show s JOIN event e ON e.event_id = s.event_id
         WHERE s.event_id = $1 ORDER BY s.starts_at, s.show_id"
    ))
    .bind(event)
    .fetch_all(db)
    .await
}

/// The prices of a show, by tier.
#[tracing::instrument(skip(db))]
pub async fn prices(db: impl PgExecutor<'_>, show: ShowId) -> Result<Vec<(String, i32)>, sqlx::Error> {
    sqlx::query_as("SELECT tier, price_cents FROM show_price WHERE show_id = $1 ORDER BY tier")
        .bind(show)
        .fetch_all(db)
        .await
}

/// The inventory version alone: enough to answer a conditional seat-map request with 304.
#[tracing::instrument(skip(db))]
pub async fn inventory_version(db: impl PgExecutor<'_>, show: ShowId) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar("SELECT inventory_version FROM show WHERE show_id = $1")
        .bind(show)
        .fetch_optional(db)
        .await
}

/// Every seat of the show with its layout, status and price, in index order.
#[tracing::instrument(skip(db))]
pub async fn seat_map(db: impl PgExecutor<'_>, show: ShowId) -> Result<Vec<SeatMapRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT ss.seat_id, ss.seat_index, sec.name AS section, seat.row_label, seat.number,
                seat.x, seat.y, ss.tier, seat.accessible, ss.status, p.price_cents
         FROM show_seat ss
         JOIN seat ON seat.seat_id = ss.seat_id
         JOIN section sec ON sec.section_id = seat.section_id
         JOIN show_price p ON p.show_id = ss.show_id AND p.tier = ss.tier
         WHERE ss.show_id = $1
         ORDER BY ss.seat_index",
    )
    .bind(show)
    .fetch_all(db)
    .await
}

/// Indexes of the show's available seats, ascending.
#[tracing::instrument(skip(db))]
pub async fn available_indexes(db: impl PgExecutor<'_>, show: ShowId) -> Result<Vec<i32>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT seat_index FROM show_seat WHERE show_id = $1 AND status = 'available' ORDER BY seat_index",
    )
    .bind(show)
    .fetch_all(db)
    .await
}

/// Seat counts by status.
#[tracing::instrument(skip(db))]
pub async fn counts(db: impl PgExecutor<'_>, show: ShowId) -> Result<CountsRow, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) FILTER (WHERE status = 'available') AS available,
                count(*) FILTER (WHERE status = 'held') AS held,
                count(*) FILTER (WHERE status = 'sold') AS sold,
                count(*) FILTER (WHERE status = 'blocked') AS blocked
         FROM show_seat WHERE show_id = $1",
    )
    .bind(show)
    .fetch_one(db)
    .await
}

/// Confirmed bookings and revenue.
#[tracing::instrument(skip(db))]
pub async fn sales(db: impl PgExecutor<'_>, show: ShowId) -> Result<SalesRow, sqlx::Error> {
    sqlx::query_as(
        "SELECT count(*) AS bookings, coalesce(sum(total_cents), 0)::int8 AS revenue_cents
         FROM booking WHERE show_id = $1 AND status = 'confirmed'",
    )
    .bind(show)
    .fetch_one(db)
    .await
}

/// Changes waiting-room settings; `None` leaves a setting as it is.
#[tracing::instrument(skip(db))]
pub async fn update_waiting_room(
    db: impl PgExecutor<'_>,
    show: ShowId,
    admit_per_second: Option<i32>,
    max_active: Option<i32>,
    paused: Option<bool>,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE show SET admit_per_second = coalesce($2, admit_per_second),
                         max_active = coalesce($3, max_active),
                         waiting_room_paused = coalesce($4, waiting_room_paused)
         WHERE show_id = $1",
    )
    .bind(show)
    .bind(admit_per_second)
    .bind(max_active)
    .bind(paused)
    .execute(db)
    .await
    .map(|_| ())
}

/// The show's per-fan seat limit.
#[tracing::instrument(skip(db))]
pub async fn max_tickets_per_user(db: impl PgExecutor<'_>, show: ShowId) -> Result<Option<i32>, sqlx::Error> {
    sqlx::query_scalar("SELECT max_tickets_per_user FROM show WHERE show_id = $1")
        .bind(show)
        .fetch_optional(db)
        .await
}
