//! API.md "Catalog": public reads of events, venues, shows, the seat map and availability.
//!
//! The seat map and availability come from the show's Redis snapshot plus the cached layout
//! ([`crate::seatmap`]); PostgreSQL only when no snapshot exists yet (or Redis is down).

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use base64::{Engine as _, engine::general_purpose::STANDARD};
use common::{
    availability,
    ids::{EventId, SeatId, SectionId, ShowId, VenueId},
};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::{
    app::AppState,
    error::{ApiError, ApiPath, ApiQuery, Problem},
    routes::pagination,
    store::{events, shows, venues},
};

/// An event.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventResponse {
    /// Id.
    pub event_id: EventId,
    /// Title.
    pub title: String,
    /// Category.
    pub category: String,
    /// Description.
    pub description: String,
    /// City.
    pub city: String,
    /// Creation time.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    /// Shows, earliest first (only in `GET /events/{id}`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shows: Option<Vec<ShowResponse>>,
}

impl From<events::EventRow> for EventResponse {
    fn from(row: events::EventRow) -> Self {
        Self {
            event_id: row.event_id,
            title: row.title,
            category: row.category,
            description: row.description,
            city: row.city,
            created_at: row.created_at,
            shows: None,
        }
    }
}

/// `GET /events` query.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Words to search for; misspellings are tolerated.
    pub q: Option<String>,
    /// City.
    pub city: Option<String>,
    /// Category.
    pub category: Option<String>,
    /// Only events with a show starting at or after this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub from: Option<OffsetDateTime>,
    /// Only events with a show starting before this time (RFC 3339).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[param(value_type = Option<String>, format = DateTime)]
    pub to: Option<OffsetDateTime>,
    /// Page size (1-100, default 20).
    pub limit: Option<i64>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of events.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventPage {
    /// Events, most relevant first (newest first without `q`).
    pub items: Vec<EventResponse>,
    /// Cursor of the next page, absent on the last one.
    pub next_cursor: Option<String>,
}

fn optional_filter(field: &'static str, value: Option<String>) -> Result<Option<String>, ApiError> {
    match value.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(text) => crate::domain::text(field, text, 1, 200).map(Some),
    }
}

/// Searches and lists events.
#[utoipa::path(get, path = "/api/v1/events", tag = "catalog", params(EventsQuery),
    responses((status = 200, body = EventPage), (status = 400, body = Problem)))]
pub async fn list_events(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
) -> Result<Json<EventPage>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let after = query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?
        .map(|(score, id)| (score, EventId(id)));
    if let (Some(from), Some(to)) = (query.from, query.to)
        && from >= to
    {
        return Err(ApiError::bad_request("invalid_range", "`from` must be before `to`."));
    }
    let filter = events::EventFilter {
        q: optional_filter("q", query.q)?,
        city: optional_filter("city", query.city)?,
        category: optional_filter("category", query.category)?,
        from: query.from,
        to: query.to,
        after,
        limit: limit + 1,
    };
    let rows = events::search(&state.db, &filter).await?;
    let (rows, next_cursor) = pagination::page(rows, limit, |row| {
        pagination::encode(row.score, row.event.event_id.as_uuid())
    });
    Ok(Json(EventPage {
        items: rows.into_iter().map(|row| row.event.into()).collect(),
        next_cursor,
    }))
}

/// An event with its shows.
#[utoipa::path(get, path = "/api/v1/events/{event_id}", tag = "catalog",
    params(("event_id" = String, Path, format = Uuid)),
    responses((status = 200, body = EventResponse), (status = 404, body = Problem)))]
pub async fn get_event(
    State(state): State<AppState>,
    ApiPath(event_id): ApiPath<EventId>,
) -> Result<Json<EventResponse>, ApiError> {
    let event = events::find(&state.db, event_id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    let mut shows_out = Vec::new();
    for show in shows::for_event(&state.db, event_id).await? {
        let prices = shows::prices(&state.db, show.show_id).await?;
        shows_out.push(ShowResponse::new(show, prices));
    }
    let mut response = EventResponse::from(event);
    response.shows = Some(shows_out);
    Ok(Json(response))
}

/// A section of a venue.
#[derive(Debug, Serialize, ToSchema)]
pub struct SectionResponse {
    /// Id.
    pub section_id: SectionId,
    /// Name.
    pub name: String,
    /// Rows.
    pub rows: i64,
    /// Seats.
    pub seats: i64,
    /// Tiers used.
    pub tiers: Vec<String>,
}

/// A venue.
#[derive(Debug, Serialize, ToSchema)]
pub struct VenueResponse {
    /// Id.
    pub venue_id: VenueId,
    /// Name.
    pub name: String,
    /// City.
    pub city: String,
    /// Address.
    pub address: String,
    /// IANA time zone.
    pub timezone: String,
    /// Seats.
    pub seat_count: i32,
    /// Sections (only in single-venue answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sections: Option<Vec<SectionResponse>>,
}

impl From<venues::VenueRow> for VenueResponse {
    fn from(row: venues::VenueRow) -> Self {
        Self {
            venue_id: row.venue_id,
            name: row.name,
            city: row.city,
            address: row.address,
            timezone: row.timezone,
            seat_count: row.seat_count,
            sections: None,
        }
    }
}

impl VenueResponse {
    /// The venue with its sections.
    pub fn with_sections(row: venues::VenueRow, sections: Vec<venues::SectionSummaryRow>) -> Self {
        let mut response = Self::from(row);
        response.sections = Some(
            sections
                .into_iter()
                .map(|section| SectionResponse {
                    section_id: section.section_id,
                    name: section.name,
                    rows: section.row_count,
                    seats: section.seat_count,
                    tiers: section.tiers,
                })
                .collect(),
        );
        response
    }
}

/// A page of venues.
#[derive(Debug, Serialize, ToSchema)]
pub struct VenuePage {
    /// Venues, newest first.
    pub items: Vec<VenueResponse>,
    /// Cursor of the next page, absent on the last one.
    pub next_cursor: Option<String>,
}

/// Lists venues, newest first.
#[utoipa::path(get, path = "/api/v1/venues", tag = "catalog", params(pagination::PageQuery),
    responses((status = 200, body = VenuePage), (status = 400, body = Problem)))]
pub async fn list_venues(
    State(state): State<AppState>,
    ApiQuery(query): ApiQuery<pagination::PageQuery>,
) -> Result<Json<VenuePage>, ApiError> {
    let limit = pagination::limit(query.limit)?;
    let before = query
        .cursor
        .as_deref()
        .map(pagination::decode)
        .transpose()?
        .map(|(_, id)| VenueId(id));
    let rows = venues::list(&state.db, before, limit + 1).await?;
    let (rows, next_cursor) = pagination::page(rows, limit, |row| pagination::encode(0.0, row.venue_id.as_uuid()));
    Ok(Json(VenuePage {
        items: rows.into_iter().map(Into::into).collect(),
        next_cursor,
    }))
}

/// A venue with its sections.
#[utoipa::path(get, path = "/api/v1/venues/{venue_id}", tag = "catalog",
    params(("venue_id" = String, Path, format = Uuid)),
    responses((status = 200, body = VenueResponse), (status = 404, body = Problem)))]
pub async fn get_venue(
    State(state): State<AppState>,
    ApiPath(venue_id): ApiPath<VenueId>,
) -> Result<Json<VenueResponse>, ApiError> {
    let venue = venues::find(&state.db, venue_id)
        .await?
        .ok_or(ApiError::NotFound("venue"))?;
    let sections = venues::sections(&state.db, venue_id).await?;
    Ok(Json(VenueResponse::with_sections(venue, sections)))
}

/// The price of a tier.
#[derive(Debug, Serialize, ToSchema)]
pub struct TierPrice {
    /// Tier.
    pub tier: String,
    /// Price, minor units.
    pub price_cents: i32,
}

/// Waiting-room settings and state of a show.
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitingRoomResponse {
    /// scheduled, prequeue, open, paused or sold_out.
    pub state: &'static str,
    /// Admissions per second.
    pub admit_per_second: i32,
    /// Concurrent shopping sessions.
    pub max_active: i32,
    /// When the pre-queue opens.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub prequeue_opens_at: OffsetDateTime,
}

/// A show.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShowResponse {
    /// Id.
    pub show_id: ShowId,
    /// Event.
    pub event_id: EventId,
    /// Venue.
    pub venue_id: VenueId,
    /// Start of the performance.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub starts_at: OffsetDateTime,
    /// Start of the sale.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub on_sale_at: OffsetDateTime,
    /// scheduled, on_sale, sold_out, ended, cancelled.
    pub status: String,
    /// Currency of every price.
    pub currency: String,
    /// Price per tier.
    pub prices: Vec<TierPrice>,
    /// Tickets one fan may buy.
    pub max_tickets_per_user: i32,
    /// How long a hold lasts.
    pub hold_seconds: i32,
    /// Seats in the show.
    pub capacity: i32,
    /// Waiting room.
    pub waiting_room: WaitingRoomResponse,
}

impl ShowResponse {
    /// Reads a show and its prices; 404 when there is no such show.
    pub async fn load(db: &sqlx::PgPool, show_id: ShowId) -> Result<Self, ApiError> {
        let show = shows::find(db, show_id).await?.ok_or(ApiError::NotFound("show"))?;
        Ok(Self::new(show, shows::prices(db, show_id).await?))
    }

    /// The show and its prices as the API shows them.
    pub fn new(row: shows::ShowRow, prices: Vec<(String, i32)>) -> Self {
        let state = waiting_room_state(&row, OffsetDateTime::now_utc());
        Self {
            show_id: row.show_id,
            event_id: row.event_id,
            venue_id: row.venue_id,
            starts_at: row.starts_at,
            on_sale_at: row.on_sale_at,
            status: row.status,
            currency: row.currency,
            prices: prices
                .into_iter()
                .map(|(tier, price_cents)| TierPrice { tier, price_cents })
                .collect(),
            max_tickets_per_user: row.max_tickets_per_user,
            hold_seconds: row.hold_seconds,
            capacity: row.capacity,
            waiting_room: WaitingRoomResponse {
                state,
                admit_per_second: row.admit_per_second,
                max_active: row.max_active,
                prequeue_opens_at: row.prequeue_opens_at,
            },
        }
    }
}

/// The waiting-room state as the schedule and sales imply it. (The admission controller keeps
/// the live state in Redis once it runs; this is its PostgreSQL-derived equivalent.)
fn waiting_room_state(show: &shows::ShowRow, now: OffsetDateTime) -> &'static str {
    if matches!(show.status.as_str(), "ended" | "cancelled") {
        "closed"
    } else if show.status == "sold_out" {
        "sold_out"
    } else if now < show.prequeue_opens_at {
        "scheduled"
    } else if show.waiting_room_paused {
        "paused"
    } else if now < show.on_sale_at {
        "prequeue"
    } else {
        "open"
    }
}

/// A show.
#[utoipa::path(get, path = "/api/v1/shows/{show_id}", tag = "catalog",
    params(("show_id" = String, Path, format = Uuid)),
    responses((status = 200, body = ShowResponse), (status = 404, body = Problem)))]
pub async fn get_show(
    State(state): State<AppState>,
    ApiPath(show_id): ApiPath<ShowId>,
) -> Result<Json<ShowResponse>, ApiError> {
    Ok(Json(ShowResponse::load(&state.db, show_id).await?))
}

/// Seat counts by status.
#[derive(Debug, Serialize, ToSchema)]
pub struct Counts {
    /// Available.
    pub available: i64,
    /// Held.
    pub held: i64,
    /// Sold.
    pub sold: i64,
    /// Blocked.
    pub blocked: i64,
}

impl From<shows::CountsRow> for Counts {
    fn from(row: shows::CountsRow) -> Self {
        Self {
            available: row.available,
            held: row.held,
            sold: row.sold,
            blocked: row.blocked,
        }
    }
}

/// One seat of the map.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeatResponse {
    /// Id.
    pub seat_id: SeatId,
    /// Bit in the availability bitmap.
    pub index: i32,
    /// Section name.
    pub section: String,
    /// Row label.
    pub row: String,
    /// Seat number in the row.
    pub number: i32,
    /// Position (stage at the top centre, y grows away from it).
    pub x: f32,
    /// Position.
    pub y: f32,
    /// Price tier.
    pub tier: String,
    /// Wheelchair accessible.
    pub accessible: bool,
    /// available, held, sold or blocked.
    pub status: String,
    /// Price, minor units.
    pub price_cents: i32,
}

/// The seat map.
#[derive(Debug, Serialize, ToSchema)]
pub struct SeatMapResponse {
    /// Show.
    pub show_id: ShowId,
    /// Inventory version.
    pub version: i64,
    /// Counts by status.
    pub counts: Counts,
    /// Every seat, by index.
    pub seats: Vec<SeatResponse>,
}

fn etag(show: ShowId, version: i64) -> String {
    format!("W/\"{show}-{version}\"")
}

fn matches_etag(headers: &HeaderMap, tag: &str) -> bool {
    headers
        .get(header::IF_NONE_MATCH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value
                .split(',')
                .any(|candidate| candidate.trim() == tag || candidate.trim() == "*")
        })
}

/// The whole seat map with status and prices. Supports `If-None-Match` (304) and gzip.
#[utoipa::path(get, path = "/api/v1/shows/{show_id}/seats", tag = "catalog",
    params(("show_id" = String, Path, format = Uuid)),
    responses((status = 200, body = SeatMapResponse), (status = 304, description = "Unchanged since the ETag"),
        (status = 404, body = Problem)))]
pub async fn show_seats(
    State(state): State<AppState>,
    ApiPath(show_id): ApiPath<ShowId>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let Some(snapshot) = state.seat_maps.snapshot(show_id).await else {
        return seats_from_database(&state, show_id, &headers).await;
    };
    let version = i64::try_from(snapshot.version).unwrap_or(i64::MAX);
    if let Some(not_modified) = not_modified(&headers, show_id, version)? {
        return Ok(not_modified);
    }
    let layout = state
        .seat_maps
        .layout(&state.db, show_id)
        .await?
        .ok_or(ApiError::NotFound("show"))?;
    let seats = layout
        .seats
        .iter()
        .map(|seat| {
            let status = usize::try_from(seat.seat_index)
                .ok()
                .and_then(|index| snapshot.statuses.get(index))
                .map_or("unknown", |byte| availability::status_name(*byte));
            seat_response(seat, status.to_owned())
        })
        .collect();
    let counts = Counts {
        available: i64::from(snapshot.counts.available),
        held: i64::from(snapshot.counts.held),
        sold: i64::from(snapshot.counts.sold),
        blocked: i64::from(snapshot.counts.blocked),
    };
    seat_map_response(show_id, version, counts, seats)
}

fn not_modified(headers: &HeaderMap, show_id: ShowId, version: i64) -> Result<Option<Response>, ApiError> {
    let tag = etag(show_id, version);
    if !matches_etag(headers, &tag) {
        return Ok(None);
    }
    let tag = HeaderValue::from_str(&tag).map_err(|err| ApiError::Unexpected(err.into()))?;
    Ok(Some((StatusCode::NOT_MODIFIED, [(header::ETAG, tag)]).into_response()))
}

fn seat_response(seat: &shows::SeatMapRow, status: String) -> SeatResponse {
    SeatResponse {
        seat_id: seat.seat_id,
        index: seat.seat_index,
        section: seat.section.clone(),
        row: seat.row_label.clone(),
        number: seat.number,
        x: seat.x,
        y: seat.y,
        tier: seat.tier.clone(),
        accessible: seat.accessible,
        status,
        price_cents: seat.price_cents,
    }
}

fn seat_map_response(
    show_id: ShowId,
    version: i64,
    counts: Counts,
    seats: Vec<SeatResponse>,
) -> Result<Response, ApiError> {
    let tag = HeaderValue::from_str(&etag(show_id, version)).map_err(|err| ApiError::Unexpected(err.into()))?;
    Ok((
        [
            (header::ETAG, tag),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        Json(SeatMapResponse {
            show_id,
            version,
            counts,
            seats,
        }),
    )
        .into_response())
}

/// The seat map from PostgreSQL, for a show without a snapshot yet.
async fn seats_from_database(state: &AppState, show_id: ShowId, headers: &HeaderMap) -> Result<Response, ApiError> {
    let version = shows::inventory_version(&state.db, show_id)
        .await?
        .ok_or(ApiError::NotFound("show"))?;
    if let Some(not_modified) = not_modified(headers, show_id, version)? {
        return Ok(not_modified);
    }
    // Read in one snapshot so the counts agree with the seats.
    let mut tx = state.db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let version = shows::inventory_version(&mut *tx, show_id)
        .await?
        .ok_or(ApiError::NotFound("show"))?;
    let counts = shows::counts(&mut *tx, show_id).await?;
    let seats = shows::seat_map(&mut *tx, show_id).await?;
    tx.commit().await?;
    let seats = seats
        .iter()
        .map(|seat| seat_response(seat, seat.status.clone()))
        .collect();
    seat_map_response(show_id, version, counts.into(), seats)
}

/// Availability as a bitmap.
#[derive(Debug, Serialize, ToSchema)]
pub struct AvailabilityResponse {
    /// Show.
    pub show_id: ShowId,
    /// Inventory version.
    pub version: i64,
    /// Counts by status.
    pub counts: Counts,
    /// Base64 of one bit per seat index, most significant bit first within each byte (the
    /// layout of Redis bitmaps): bit set = available.
    pub bitmap: String,
}

/// Sets bit `index` of `bitmap`, most significant bit first (as Redis `SETBIT` does).
fn set_bit(bitmap: &mut [u8], index: usize) {
    bitmap[index / 8] |= 0x80 >> (index % 8);
}

/// Which seats are available, as a bitmap of a few KiB even for 50,000 seats.
#[utoipa::path(get, path = "/api/v1/shows/{show_id}/availability", tag = "catalog",
    params(("show_id" = String, Path, format = Uuid)),
    responses((status = 200, body = AvailabilityResponse), (status = 404, body = Problem)))]
pub async fn show_availability(
    State(state): State<AppState>,
    ApiPath(show_id): ApiPath<ShowId>,
) -> Result<Json<AvailabilityResponse>, ApiError> {
    if let Some(snapshot) = state.seat_maps.snapshot(show_id).await {
        return Ok(Json(AvailabilityResponse {
            show_id,
            version: i64::try_from(snapshot.version).unwrap_or(i64::MAX),
            counts: Counts {
                available: i64::from(snapshot.counts.available),
                held: i64::from(snapshot.counts.held),
                sold: i64::from(snapshot.counts.sold),
                blocked: i64::from(snapshot.counts.blocked),
            },
            bitmap: STANDARD.encode(snapshot.bitmap),
        }));
    }
    let mut tx = state.db.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .execute(&mut *tx)
        .await?;
    let show = shows::find(&mut *tx, show_id)
        .await?
        .ok_or(ApiError::NotFound("show"))?;
    let counts = shows::counts(&mut *tx, show_id).await?;
    let available = shows::available_indexes(&mut *tx, show_id).await?;
    tx.commit().await?;
    let mut bitmap = vec![0_u8; (show.capacity as usize).div_ceil(8)];
    for index in available {
        set_bit(&mut bitmap, index as usize);
    }
    Ok(Json(AvailabilityResponse {
        show_id,
        version: show.inventory_version,
        counts: counts.into(),
        bitmap: STANDARD.encode(bitmap),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bits_are_laid_out_most_significant_first_like_redis() {
        let mut bitmap = vec![0_u8; 2];
        set_bit(&mut bitmap, 0);
        set_bit(&mut bitmap, 9);
        assert_eq!(bitmap, vec![0b1000_0000, 0b0100_0000]);
    }

    #[test]
    fn an_etag_matches_itself_and_a_wildcard_only() {
        let show = ShowId::new();
        let tag = etag(show, 3);
        let mut headers = HeaderMap::new();
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_str(&tag).unwrap());
        assert!(matches_etag(&headers, &tag));
        assert!(!matches_etag(&headers, &etag(show, 4)));
        headers.insert(header::IF_NONE_MATCH, HeaderValue::from_static("*"));
        assert!(matches_etag(&headers, &tag));
    }
}
