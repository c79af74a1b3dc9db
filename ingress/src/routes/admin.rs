//! API.md "Organizer/admin": venues with generated seats, events, shows (with their inventory
//! and queue), waiting-room settings, stats, and role management (admin only).
//!
//! Ownership: venues are shared by all organizers; an event belongs to the organizer who
//! created it, and only they (or an admin) may add shows to it or manage its shows. Someone
//! else's event or show answers 404, as if it did not exist.

use std::collections::{BTreeMap, HashSet};

use axum::{Json, extract::State, http::StatusCode};
use common::ids::{EventId, SeatId, SectionId, ShowId, UserId, VenueId};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};
use utoipa::ToSchema;

use crate::{
    app::AppState,
    auth::extract::{Admin, Organizer},
    domain::{self, Role, in_range},
    error::{ApiError, ApiJson, ApiPath, Problem},
    routes::{
        accounts::UserResponse,
        catalog::{Counts, EventResponse, ShowResponse, VenueResponse},
    },
    store::{events, shows, users, venues},
};

/// How long declaring a show's queue may take before show creation answers 503.
const DECLARE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The most seats one venue may have.
pub const MAX_VENUE_SEATS: usize = 150_000;

/// A row of seats in a new venue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RowInput {
    /// Row label, unique in its section ("A", "12").
    pub label: String,
    /// Seats in the row (1-1000), numbered from 1.
    pub seats: i32,
    /// Price tier of the row's seats.
    pub tier: String,
    /// Horizontal position of the row's first seat (default: rows are centred on the stage).
    pub x: Option<f32>,
    /// Vertical position of the row (default: one unit behind the previous row).
    pub y: Option<f32>,
}

/// A section of a new venue.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SectionInput {
    /// Name, unique in the venue.
    pub name: String,
    /// Rows, front to back.
    pub rows: Vec<RowInput>,
}

/// `POST /admin/venues` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateVenueRequest {
    /// Name.
    pub name: String,
    /// City.
    pub city: String,
    /// Street address.
    pub address: String,
    /// IANA time zone.
    pub timezone: String,
    /// Sections.
    pub sections: Vec<SectionInput>,
}

/// Vertical gap left between two sections in the default layout.
const SECTION_GAP: f32 = 2.0;

/// Turns the request's sections and rows into seat columns, checking every limit first.
fn layout(sections: &[SectionInput]) -> Result<(Vec<SectionId>, Vec<String>, venues::SeatColumns), ApiError> {
    in_range("sections", sections.len(), 1, 200)?;
    let total: i64 = sections
        .iter()
        .flat_map(|s| &s.rows)
        .map(|row| i64::from(row.seats.max(0)))
        .sum();
    if total > MAX_VENUE_SEATS as i64 {
        return Err(ApiError::bad_request(
            "too_many_seats",
            format!("A venue has at most {MAX_VENUE_SEATS} seats."),
        ));
    }
    let mut section_ids = Vec::with_capacity(sections.len());
    let mut names = Vec::with_capacity(sections.len());
    let mut seen_names = HashSet::new();
    let mut seats = venues::SeatColumns::default();
    let mut next_y = 1.0_f32;
    for section in sections {
        let name = domain::text("sections[].name", &section.name, 1, 100)?;
        if !seen_names.insert(name.to_lowercase()) {
            return Err(ApiError::bad_request(
                "duplicate_section",
                format!("Section `{name}` appears twice."),
            ));
        }
        in_range("sections[].rows", section.rows.len(), 1, 500)?;
        let section_id = SectionId::new();
        let mut seen_rows = HashSet::new();
        for row in &section.rows {
            let label = domain::text("rows[].label", &row.label, 1, 16)?;
            if !seen_rows.insert(label.clone()) {
                return Err(ApiError::bad_request(
                    "duplicate_row",
                    format!("Row `{label}` appears twice in `{name}`."),
                ));
            }
            let count = in_range("rows[].seats", row.seats, 1, 1000)?;
            let tier = domain::tier(&row.tier)?;
            for position in [row.x, row.y].into_iter().flatten() {
                if !position.is_finite() || position.abs() > 100_000.0 {
                    return Err(ApiError::bad_request(
                        "out_of_range",
                        "Row positions must be finite and within ±100000.",
                    ));
                }
            }
            let y = row.y.unwrap_or(next_y);
            // Centre the row on the stage's axis unless the organizer placed it.
            let x0 = row.x.unwrap_or(-(count as f32 - 1.0) / 2.0);
            for number in 1..=count {
                seats.seat_id.push(SeatId::new());
                seats.section_id.push(section_id);
                seats.seat_index.push(seats.seat_index.len() as i32);
                seats.row_label.push(label.clone());
                seats.number.push(number);
                seats.x.push(x0 + (number - 1) as f32);
                seats.y.push(y);
                seats.tier.push(tier.clone());
            }
            next_y = y + 1.0;
        }
        next_y += SECTION_GAP;
        section_ids.push(section_id);
        names.push(name);
    }
    Ok((section_ids, names, seats))
}

/// Creates a venue and generates its seats (up to 150,000, in one bulk insert).
#[utoipa::path(post, path = "/api/v1/admin/venues", tag = "admin", security(("bearer" = [])),
    request_body = CreateVenueRequest,
    responses((status = 201, body = VenueResponse), (status = 400, body = Problem), (status = 401, body = Problem),
        (status = 403, body = Problem), (status = 413, body = Problem)))]
pub async fn create_venue(
    State(state): State<AppState>,
    organizer: Organizer,
    ApiJson(body): ApiJson<CreateVenueRequest>,
) -> Result<(StatusCode, Json<VenueResponse>), ApiError> {
    let (section_ids, section_names, seats) = layout(&body.sections)?;
    let row = venues::VenueRow {
        venue_id: VenueId::new(),
        name: domain::text("name", &body.name, 1, 200)?,
        city: domain::text("city", &body.city, 1, 100)?,
        address: domain::text("address", &body.address, 1, 300)?,
        timezone: domain::timezone(&body.timezone)?,
        seat_count: seats.seat_id.len() as i32,
        created_by: Some(organizer.0.user_id),
        created_at: OffsetDateTime::now_utc(),
    };
    let mut tx = state.db.begin().await?;
    venues::insert(&mut *tx, &row).await?;
    venues::insert_sections(&mut *tx, row.venue_id, &section_ids, &section_names).await?;
    let inserted = venues::insert_seats(&mut *tx, row.venue_id, &seats).await?;
    tx.commit().await?;
    tracing::info!(venue_id = %row.venue_id, seats = inserted, "venue created");
    let sections = venues::sections(&state.db, row.venue_id).await?;
    let created = venues::find(&state.db, row.venue_id)
        .await?
        .ok_or(ApiError::NotFound("venue"))?;
    Ok((
        StatusCode::CREATED,
        Json(VenueResponse::with_sections(created, sections)),
    ))
}

/// `POST /admin/events` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateEventRequest {
    /// Title.
    pub title: String,
    /// Category (concert, sport, theatre ...).
    pub category: String,
    /// Description.
    #[serde(default)]
    pub description: String,
    /// City.
    pub city: String,
    /// An http(s) URL that receives the event's booking facts (`booking.confirmed`,
    /// `booking.cancelled`), signed with a secret returned once, in this response.
    #[serde(default)]
    pub webhook_url: Option<String>,
}

/// 201: the event, plus its webhook settings when one was asked for.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedEventResponse {
    /// The event.
    #[serde(flatten)]
    pub event: EventResponse,
    /// The organizer webhook's URL.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_url: Option<String>,
    /// The secret the webhook's `Floodgate-Signature` is made with. Shown only here: store it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub webhook_secret: Option<String>,
}

/// An organizer webhook URL: http(s), a host, at most 2000 characters, nothing unprintable.
fn webhook_url(raw: &str) -> Result<String, ApiError> {
    let url = raw.trim();
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .filter(|rest| !rest.is_empty() && !rest.starts_with('/'));
    if rest.is_none() || url.len() > 2000 || url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(ApiError::bad_request(
            "invalid_webhook_url",
            "`webhook_url` must be an http(s) URL of at most 2000 characters.",
        ));
    }
    Ok(url.to_owned())
}

/// A new webhook secret: 256 random bits.
fn webhook_secret() -> String {
    use rand::RngExt as _;
    let bytes: [u8; 32] = rand::rng().random();
    format!("whsec_{}", crate::idempotency::hex(&bytes))
}

/// Creates an event owned by the caller.
#[utoipa::path(post, path = "/api/v1/admin/events", tag = "admin", security(("bearer" = [])),
    request_body = CreateEventRequest,
    responses((status = 201, body = CreatedEventResponse), (status = 400, body = Problem), (status = 403, body = Problem)))]
pub async fn create_event(
    State(state): State<AppState>,
    organizer: Organizer,
    ApiJson(body): ApiJson<CreateEventRequest>,
) -> Result<(StatusCode, Json<CreatedEventResponse>), ApiError> {
    let webhook = body
        .webhook_url
        .as_deref()
        .map(webhook_url)
        .transpose()?
        .map(|url| events::EventWebhook {
            url,
            secret: webhook_secret(),
        });
    let row = events::EventRow {
        event_id: EventId::new(),
        title: domain::text("title", &body.title, 1, 200)?,
        category: domain::text("category", &body.category, 1, 50)?.to_lowercase(),
        description: domain::text("description", &body.description, 0, 10_000)?,
        city: domain::text("city", &body.city, 1, 100)?,
        created_by: Some(organizer.0.user_id),
        created_at: OffsetDateTime::now_utc(),
    };
    events::insert(&state.db, &row, webhook.as_ref()).await?;
    let created = events::find(&state.db, row.event_id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    Ok((
        StatusCode::CREATED,
        Json(CreatedEventResponse {
            event: created.into(),
            webhook_url: webhook.as_ref().map(|webhook| webhook.url.clone()),
            webhook_secret: webhook.map(|webhook| webhook.secret),
        }),
    ))
}

/// Waiting-room settings of a new show.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoomInput {
    /// Fans admitted per second (1-100000).
    pub admit_per_second: i32,
    /// Fans shopping at once (1-1000000).
    pub max_active: i32,
    /// When fans may start joining the pre-queue (default: 30 minutes before the sale).
    #[serde(default, with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub prequeue_opens_at: Option<OffsetDateTime>,
}

/// `POST /admin/shows` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateShowRequest {
    /// Event (owned by the caller).
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
    /// ISO 4217 currency.
    pub currency: String,
    /// Price of every tier of the venue, minor units.
    pub prices: BTreeMap<String, i64>,
    /// Tickets one fan may buy (1-50).
    pub max_tickets_per_user: i32,
    /// How long a hold lasts (30-3600 s).
    pub hold_seconds: i32,
    /// Cancellations are accepted until this long before the start (default one day).
    pub cancel_cutoff_seconds: Option<i32>,
    /// Waiting room.
    pub waiting_room: WaitingRoomInput,
}

/// Creates a show: its prices, one inventory row per seat, and its RabbitMQ queue.
#[utoipa::path(post, path = "/api/v1/admin/shows", tag = "admin", security(("bearer" = [])),
    request_body = CreateShowRequest,
    responses((status = 201, body = ShowResponse), (status = 400, body = Problem), (status = 403, body = Problem),
        (status = 404, description = "No such event (or not yours) or venue", body = Problem),
        (status = 422, description = "Prices do not match the venue's tiers", body = Problem),
        (status = 503, description = "The broker is unavailable", body = Problem)))]
pub async fn create_show(
    State(state): State<AppState>,
    organizer: Organizer,
    ApiJson(body): ApiJson<CreateShowRequest>,
) -> Result<(StatusCode, Json<ShowResponse>), ApiError> {
    let event = events::find(&state.db, body.event_id)
        .await?
        .ok_or(ApiError::NotFound("event"))?;
    if !organizer.may_manage(event.created_by) {
        return Err(ApiError::NotFound("event"));
    }
    let venue = venues::find(&state.db, body.venue_id)
        .await?
        .ok_or(ApiError::NotFound("venue"))?;
    let currency = domain::currency(&body.currency)?;
    let max_tickets = in_range("max_tickets_per_user", body.max_tickets_per_user, 1, 50)?;
    let hold_seconds = in_range("hold_seconds", body.hold_seconds, 30, 3600)?;
    let cancel_cutoff = in_range(
        "cancel_cutoff_seconds",
        body.cancel_cutoff_seconds.unwrap_or(86_400),
        0,
        365 * 86_400,
    )?;
    let admit = in_range(
        "waiting_room.admit_per_second",
        body.waiting_room.admit_per_second,
        1,
        100_000,
    )?;
    let max_active = in_range("waiting_room.max_active", body.waiting_room.max_active, 1, 1_000_000)?;
    let prequeue = body
        .waiting_room
        .prequeue_opens_at
        .unwrap_or(body.on_sale_at - Duration::minutes(30));
    if body.on_sale_at >= body.starts_at {
        return Err(ApiError::bad_request(
            "invalid_schedule",
            "`on_sale_at` must be before `starts_at`.",
        ));
    }
    if prequeue > body.on_sale_at {
        return Err(ApiError::bad_request(
            "invalid_schedule",
            "`prequeue_opens_at` must not be after `on_sale_at`.",
        ));
    }
    let far_future = OffsetDateTime::now_utc() + Duration::days(5 * 365);
    if body.starts_at > far_future {
        return Err(ApiError::bad_request(
            "invalid_schedule",
            "`starts_at` is more than five years away.",
        ));
    }
    let venue_tiers = venues::tiers(&state.db, venue.venue_id).await?;
    let mut tiers = Vec::with_capacity(body.prices.len());
    let mut prices = Vec::with_capacity(body.prices.len());
    for (tier, price) in &body.prices {
        let tier = domain::tier(tier)?;
        if !venue_tiers.contains(&tier) {
            return Err(ApiError::unprocessable(
                "unknown_tier",
                format!("The venue has no tier `{tier}`."),
            ));
        }
        prices.push(in_range("prices", *price, 0, 10_000_000)? as i32);
        tiers.push(tier);
    }
    if let Some(missing) = venue_tiers.iter().find(|tier| !body.prices.contains_key(*tier)) {
        return Err(ApiError::unprocessable(
            "missing_price",
            format!("Tier `{missing}` has no price."),
        ));
    }

    let new = shows::NewShow {
        show_id: ShowId::new(),
        event_id: event.event_id,
        venue_id: venue.venue_id,
        starts_at: body.starts_at,
        on_sale_at: body.on_sale_at,
        currency,
        max_tickets_per_user: max_tickets,
        hold_seconds,
        cancel_cutoff_seconds: cancel_cutoff,
        admit_per_second: admit,
        max_active,
        prequeue_opens_at: prequeue,
        capacity: venue.seat_count,
    };
    let mut tx = state.db.begin().await?;
    shows::insert(&mut *tx, &new).await?;
    shows::insert_prices(&mut *tx, new.show_id, &tiers, &prices).await?;
    let seats = shows::insert_inventory(&mut *tx, new.show_id, venue.venue_id).await?;
    // The queue exists before the show does: a show nobody can send commands to must not be
    // visible. Declaring is idempotent, so a rollback after it leaves only an empty queue.
    let broker_unavailable = || ApiError::Unavailable {
        code: "broker_unavailable",
        detail: "The message broker is unavailable; retry shortly.".to_owned(),
    };
    let publisher = state.broker.publisher().map_err(|_| broker_unavailable())?;
    // Bounded: a stalled broker must not pin this transaction (and its connection) for long.
    let declared = tokio::time::timeout(
        DECLARE_TIMEOUT,
        state
            .broker
            .topology()
            .declare_show_queue(publisher.channel(), new.show_id),
    )
    .await;
    match declared {
        Ok(Ok(())) => {}
        Ok(Err(err)) => {
            tracing::warn!(error = %err, show_id = %new.show_id, "cannot declare show queue");
            return Err(broker_unavailable());
        }
        Err(_) => {
            tracing::warn!(show_id = %new.show_id, "show queue declaration timed out");
            return Err(broker_unavailable());
        }
    }
    tx.commit().await?;
    tracing::info!(show_id = %new.show_id, seats, "show created");
    Ok((
        StatusCode::CREATED,
        Json(ShowResponse::load(&state.db, new.show_id).await?),
    ))
}

/// `PATCH /admin/shows/{id}/waiting-room` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitingRoomPatch {
    /// Fans admitted per second.
    pub admit_per_second: Option<i32>,
    /// Fans shopping at once.
    pub max_active: Option<i32>,
    /// Stop (true) or resume (false) admissions.
    pub paused: Option<bool>,
}

async fn managed_show(state: &AppState, organizer: &Organizer, show_id: ShowId) -> Result<shows::ShowRow, ApiError> {
    let show = shows::find(&state.db, show_id)
        .await?
        .ok_or(ApiError::NotFound("show"))?;
    if !organizer.may_manage(show.owner) {
        return Err(ApiError::NotFound("show"));
    }
    Ok(show)
}

/// Changes the admission rate, the active cap, or pauses admissions.
#[utoipa::path(patch, path = "/api/v1/admin/shows/{show_id}/waiting-room", tag = "admin", security(("bearer" = [])),
    params(("show_id" = String, Path, format = Uuid)), request_body = WaitingRoomPatch,
    responses((status = 200, body = ShowResponse), (status = 400, body = Problem), (status = 404, body = Problem)))]
pub async fn update_waiting_room(
    State(state): State<AppState>,
    organizer: Organizer,
    ApiPath(show_id): ApiPath<ShowId>,
    ApiJson(body): ApiJson<WaitingRoomPatch>,
) -> Result<Json<ShowResponse>, ApiError> {
    managed_show(&state, &organizer, show_id).await?;
    let admit = body
        .admit_per_second
        .map(|v| in_range("admit_per_second", v, 1, 100_000))
        .transpose()?;
    let max_active = body
        .max_active
        .map(|v| in_range("max_active", v, 1, 1_000_000))
        .transpose()?;
    shows::update_waiting_room(&state.db, show_id, admit, max_active, body.paused).await?;
    Ok(Json(ShowResponse::load(&state.db, show_id).await?))
}

/// Sales figures of a show.
#[derive(Debug, Serialize, ToSchema)]
pub struct ShowStats {
    /// Show.
    pub show_id: ShowId,
    /// Seats in the show.
    pub capacity: i32,
    /// Seats by status.
    pub counts: Counts,
    /// Confirmed bookings.
    pub confirmed_bookings: i64,
    /// Revenue of confirmed bookings, minor units.
    pub revenue_cents: i64,
    /// Currency of the revenue.
    pub currency: String,
}

/// Seat counts and sales of a show. (Queue length, serving number and active sessions join
/// these figures when the waiting room runs.)
#[utoipa::path(get, path = "/api/v1/admin/shows/{show_id}/stats", tag = "admin", security(("bearer" = [])),
    params(("show_id" = String, Path, format = Uuid)),
    responses((status = 200, body = ShowStats), (status = 404, body = Problem)))]
pub async fn show_stats(
    State(state): State<AppState>,
    organizer: Organizer,
    ApiPath(show_id): ApiPath<ShowId>,
) -> Result<Json<ShowStats>, ApiError> {
    let show = managed_show(&state, &organizer, show_id).await?;
    let counts = shows::counts(&state.db, show_id).await?;
    let sales = shows::sales(&state.db, show_id).await?;
    Ok(Json(ShowStats {
        show_id,
        capacity: show.capacity,
        counts: counts.into(),
        confirmed_bookings: sales.bookings,
        revenue_cents: sales.revenue_cents,
        currency: show.currency,
    }))
}

/// `PUT /admin/users/{id}/role` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetRoleRequest {
    /// The new role.
    pub role: Role,
}

/// Grants a role (admin only): how organizers come to exist. The user's current access token
/// keeps its old role until it expires (at most `ACCESS_TOKEN_TTL_SECONDS`).
#[utoipa::path(put, path = "/api/v1/admin/users/{user_id}/role", tag = "admin", security(("bearer" = [])),
    params(("user_id" = String, Path, format = Uuid)), request_body = SetRoleRequest,
    responses((status = 200, body = UserResponse), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn set_user_role(
    State(state): State<AppState>,
    _admin: Admin,
    ApiPath(user_id): ApiPath<UserId>,
    ApiJson(body): ApiJson<SetRoleRequest>,
) -> Result<Json<UserResponse>, ApiError> {
    let row = users::set_role(&state.db, user_id, body.role.as_str())
        .await?
        .ok_or(ApiError::NotFound("user"))?;
    Ok(Json(row.try_into()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(label: &str, seats: i32, tier: &str) -> RowInput {
        RowInput {
            label: label.into(),
            seats,
            tier: tier.into(),
            x: None,
            y: None,
        }
    }

    #[test]
    fn a_layout_numbers_seats_densely_and_centres_rows() {
        let sections = vec![
            SectionInput {
                name: "Floor".into(),
                rows: vec![row("A", 3, "floor"), row("B", 2, "floor")],
            },
            SectionInput {
                name: "Balcony".into(),
                rows: vec![row("A", 1, "balcony")],
            },
        ];
        let (ids, names, seats) = layout(&sections).unwrap();
        assert_eq!(ids.len(), 2);
        assert_eq!(names, ["Floor", "Balcony"]);
        assert_eq!(seats.seat_index, [0, 1, 2, 3, 4, 5]);
        assert_eq!(seats.x[..3], [-1.0, 0.0, 1.0]);
        assert!(seats.y[5] > seats.y[3], "the balcony is behind the floor");
    }

    #[test]
    fn layouts_with_duplicates_or_absurd_sizes_are_refused() {
        let twice = vec![SectionInput {
            name: "A".into(),
            rows: vec![row("1", 5, "x"), row("1", 5, "x")],
        }];
        assert!(layout(&twice).is_err());
        let huge = vec![SectionInput {
            name: "A".into(),
            rows: vec![row("1", 1001, "x")],
        }];
        assert!(layout(&huge).is_err());
        let negative = vec![SectionInput {
            name: "A".into(),
            rows: vec![row("1", -5, "x")],
        }];
        assert!(layout(&negative).is_err());
        assert!(layout(&[]).is_err());
    }
}
