//! API.md "Holds and bookings": hold requests, their results, a booking, and releasing it.
//!
//! A hold request is checked here (admission token, shape, the show's per-user limit) and then
//! published to the show's queue with a publisher confirm: 202 means the broker has it, and the
//! show's single writer will answer it in queue order. `?wait=` (at most 10 s) waits for that
//! answer, delivered to this instance by [`crate::results`].
//!
//! Idempotency: with an `Idempotency-Key`, the command id is derived from (user, show, key), so
//! a repeated request is the same command, which the writer applies once and answers from its
//! stored result; the key also remembers a hash of the body, and the same key with another body
//! is 422 `idempotency_key_reused`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use common::{
    contracts::{CancelBooking, Envelope, HoldSeats, RejectionCode, ReleaseHold, SeatSelection},
    ids::{BookingId, CommandId, SeatId, ShowId, UserId},
    mq::PublishError,
};
use redis::{AsyncCommands as _, aio::ConnectionManager};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use time::OffsetDateTime;
use utoipa::{IntoParams, ToSchema};

use crate::{
    app::AppState,
    auth::{admission::Admitted, extract::AuthUser},
    error::{ApiError, ApiJson, ApiPath, ApiQuery, Problem},
    idempotency::{self, Claim, REMEMBER_SECONDS, redis_unavailable},
    results::{HoldOutcome, Results},
    routes::payments::PaymentResponse,
    store::{bookings, payments, shows},
};

/// The longest `?wait=` (API.md).
const MAX_WAIT_SECONDS: u64 = 10;
/// How long a show's terms are trusted from memory.
const TERMS_TTL: Duration = Duration::from_secs(10);

/// What hold routes share: results, a cache of show terms, Redis for request bookkeeping.
pub struct HoldsContext {
    /// Results coming back from the writers.
    pub results: Arc<Results>,
    redis: ConnectionManager,
    prefix: String,
    terms: Mutex<HashMap<ShowId, (Instant, i32)>>,
}

impl HoldsContext {
    /// A context over `redis` with keys under `prefix`.
    pub fn new(redis: ConnectionManager, prefix: String) -> Self {
        Self {
            results: Arc::new(Results::default()),
            redis,
            prefix,
            terms: Mutex::new(HashMap::new()),
        }
    }

    fn request_key(&self, command: CommandId) -> String {
        format!("{}hr:{command}", self.prefix)
    }

    /// A connection to the Redis that keeps request bookkeeping.
    pub fn redis(&self) -> ConnectionManager {
        self.redis.clone()
    }

    /// The prefix of this instance's Redis keys.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The show's per-user limit (from a 10-second cache).
    pub async fn max_per_user(&self, state: &AppState, show: ShowId) -> Result<i32, ApiError> {
        if let Some((at, max)) = self.lock_terms().get(&show).copied()
            && at.elapsed() < TERMS_TTL
        {
            return Ok(max);
        }
        let max = shows::max_tickets_per_user(&state.db, show)
            .await?
            .ok_or(ApiError::NotFound("show"))?;
        self.lock_terms().insert(show, (Instant::now(), max));
        Ok(max)
    }

    fn lock_terms(&self) -> std::sync::MutexGuard<'_, HashMap<ShowId, (Instant, i32)>> {
        self.terms.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn broker_unavailable(err: PublishError) -> ApiError {
    tracing::warn!(error = %err, "hold request not confirmed by the broker");
    ApiError::Unavailable {
        code: "broker_unavailable",
        detail: "The request could not be queued; nothing changed. Retry shortly.".to_owned(),
    }
}

/// Best-available seats.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BestAvailableBody {
    /// How many seats (1 to the show's per-user limit).
    pub quantity: u32,
    /// Only this price tier.
    #[serde(default)]
    pub tier: Option<String>,
    /// Side by side in one row, or nothing.
    #[serde(default)]
    pub adjacent: bool,
}

/// `POST /shows/{id}/holds`: either `seat_ids` or `best_available`.
#[derive(Debug, Clone, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HoldBody {
    /// These exact seats, all or nothing.
    #[serde(default)]
    pub seat_ids: Option<Vec<SeatId>>,
    /// Or the best available.
    #[serde(default)]
    pub best_available: Option<BestAvailableBody>,
    /// A promo code for the hold's total.
    #[serde(default)]
    pub promo_code: Option<String>,
}

/// `?wait=`.
#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct WaitQuery {
    /// Seconds to wait for the result (at most 10); without it the call answers 202 at once.
    #[serde(default)]
    pub wait: Option<u64>,
}

/// 202: the request is on the show's queue.
#[derive(Debug, Serialize, ToSchema)]
pub struct Queued {
    /// Poll `GET /hold-requests/{request_id}`.
    pub request_id: CommandId,
    /// `queued`.
    pub status: &'static str,
}

/// A seat of a hold or booking.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingSeat {
    /// Seat.
    pub seat_id: SeatId,
    /// Its bit in the availability bitmap.
    pub index: u32,
    /// Tier.
    pub tier: String,
    /// Price, minor units.
    pub price_cents: i64,
}

/// 201: the seats are held.
#[derive(Debug, Serialize, ToSchema)]
pub struct Held {
    /// Hold request.
    pub request_id: CommandId,
    /// The booking holding the seats.
    pub booking_id: BookingId,
    /// `held`.
    pub status: &'static str,
    /// Seats.
    pub seats: Vec<BookingSeat>,
    /// What the fan pays, minor units.
    pub total_cents: i64,
    /// ISO 4217.
    pub currency: String,
    /// When the hold lapses unless paid.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
}

fn selection(body: &HoldBody, max: i32) -> Result<SeatSelection, ApiError> {
    let max = u32::try_from(max).unwrap_or(1);
    match (&body.seat_ids, &body.best_available) {
        (Some(seat_ids), None) => {
            if seat_ids.is_empty() {
                return Err(ApiError::bad_request("invalid_seats", "`seat_ids` is empty."));
            }
            let mut unique = seat_ids.clone();
            unique.sort();
            unique.dedup();
            if unique.len() != seat_ids.len() {
                return Err(ApiError::bad_request("invalid_seats", "`seat_ids` lists a seat twice."));
            }
            if seat_ids.len() as u64 > u64::from(max) {
                return Err(ApiError::conflict(
                    "limit_exceeded",
                    format!("At most {max} seats per fan for this show."),
                ));
            }
            Ok(SeatSelection::Seats {
                seat_ids: seat_ids.clone(),
            })
        }
        (None, Some(best)) => {
            if best.quantity == 0 {
                return Err(ApiError::bad_request(
                    "invalid_quantity",
                    "`quantity` must be at least 1.",
                ));
            }
            if best.quantity > max {
                return Err(ApiError::conflict(
                    "limit_exceeded",
                    format!("At most {max} seats per fan for this show."),
                ));
            }
            Ok(SeatSelection::BestAvailable {
                quantity: best.quantity,
                tier: best.tier.clone(),
                adjacent: best.adjacent,
            })
        }
        _ => Err(ApiError::bad_request(
            "invalid_body",
            "Send exactly one of `seat_ids` and `best_available`.",
        )),
    }
}

/// The command id of a request: derived from the idempotency key when there is one, so a
/// repeat is the same command.
fn command_id(user: UserId, show: ShowId, key: Option<&str>) -> CommandId {
    match key {
        None => CommandId::new(),
        Some(key) => {
            let digest = Sha256::new()
                .chain_update(b"floodgate-hold\0")
                .chain_update(user.as_uuid().as_bytes())
                .chain_update(show.as_uuid().as_bytes())
                .chain_update(key.as_bytes())
                .finalize();
            let mut bytes = [0_u8; 16];
            bytes.copy_from_slice(&digest[..16]);
            CommandId(uuid::Builder::from_custom_bytes(bytes).into_uuid())
        }
    }
}

/// Asks the show's writer to hold seats.
#[utoipa::path(post, path = "/api/v1/shows/{show_id}/holds", tag = "holds", security(("bearer" = [])),
    params(("show_id" = String, Path, format = Uuid), WaitQuery,
        ("Admission-Token" = String, Header, description = "From the show's waiting room"),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeats return the first result")),
    request_body = HoldBody,
    responses((status = 202, body = Queued), (status = 201, body = Held),
        (status = 409, description = "seats_unavailable (with `unavailable_seat_ids`) or limit_exceeded", body = Problem),
        (status = 403, description = "not_admitted", body = Problem), (status = 422, body = Problem),
        (status = 503, body = Problem)))]
pub async fn create_hold(
    State(state): State<AppState>,
    admitted: Admitted,
    ApiPath(show): ApiPath<ShowId>,
    ApiQuery(query): ApiQuery<WaitQuery>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<HoldBody>,
) -> Result<Response, ApiError> {
    let user = admitted.user.user_id;
    let holds = &state.holds;
    let max = holds.max_per_user(&state, show).await?;
    let selection = selection(&body, max)?;
    if let SeatSelection::Seats { seat_ids } = &selection {
        // Seats of another show never reach the queue (the writer would refuse them too).
        let layout = state
            .seat_maps
            .layout(&state.db, show)
            .await?
            .ok_or(ApiError::NotFound("show"))?;
        if let Some(foreign) = seat_ids.iter().find(|seat| !layout.ids.contains(seat)) {
            return Err(ApiError::unprocessable(
                "invalid_seats",
                format!("Seat {foreign} is not a seat of this show."),
            ));
        }
    }
    let key = idempotency::key(&headers)?;
    let command = command_id(user, show, key);
    let mut redis = holds.redis.clone();
    let mut repeated = false;
    if let Some(key) = key {
        let slot = idempotency::slot(&holds.prefix, "hold", user, key);
        let fingerprint = idempotency::fingerprint(&(show, &body));
        repeated = idempotency::claim(&mut redis, &slot, &fingerprint).await? == Claim::Repeat;
    }
    // Remember who asked, so `GET /hold-requests/{id}` can say `queued` to its owner only.
    redis
        .set_ex::<_, _, ()>(holds.request_key(command), user.to_string(), REMEMBER_SECONDS)
        .await
        .map_err(redis_unavailable)?;

    let wait = query.wait.map(|seconds| seconds.min(MAX_WAIT_SECONDS)).unwrap_or(0);
    let waiter = (wait > 0).then(|| holds.results.register(command));
    // A repeat of an answered request is answered from the store (looked at after registering,
    // so a result published in between is not missed either way).
    if repeated && let Some(stored) = bookings::hold_request(&state.db, command, user).await? {
        return stored_response(&state, command, stored).await;
    }
    let envelope = Envelope::new(
        Some(show),
        HoldSeats {
            command_id: command,
            user_id: user,
            selection,
            promo_code: body.promo_code.clone(),
        },
    );
    let publisher = state.broker.publisher().map_err(|err| broker_unavailable(err.into()))?;
    publisher
        .publish(&state.broker.topology().shows_exchange(), &show.to_string(), &envelope)
        .await
        .map_err(broker_unavailable)?;

    if let Some(waiter) = waiter
        && let Some(outcome) = waiter.wait(Duration::from_secs(wait)).await
    {
        return Ok(outcome_response(command, outcome));
    }
    // Already answered (a repeated idempotent request)? Then say so instead of "queued".
    if key.is_some()
        && let Some(stored) = bookings::hold_request(&state.db, command, user).await?
    {
        return stored_response(&state, command, stored).await;
    }
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            request_id: command,
            status: "queued",
        }),
    )
        .into_response())
}

fn outcome_response(command: CommandId, outcome: HoldOutcome) -> Response {
    match outcome {
        HoldOutcome::Placed(placed) => (
            StatusCode::CREATED,
            Json(Held {
                request_id: command,
                booking_id: placed.booking_id,
                status: "held",
                seats: placed
                    .seats
                    .into_iter()
                    .map(|seat| BookingSeat {
                        seat_id: seat.seat_id,
                        index: seat.index,
                        tier: seat.tier,
                        price_cents: seat.price_cents,
                    })
                    .collect(),
                total_cents: placed.total_cents,
                currency: placed.currency,
                expires_at: placed.expires_at,
            }),
        )
            .into_response(),
        HoldOutcome::Rejected(rejected) => rejection(rejected.code, rejected.unavailable_seat_ids),
    }
}

fn rejection(code: RejectionCode, unavailable: Vec<SeatId>) -> Response {
    let detail = match code {
        RejectionCode::SeatsUnavailable if unavailable.is_empty() => "Not enough seats are available.",
        RejectionCode::SeatsUnavailable => "Some of the requested seats are taken.",
        RejectionCode::LimitExceeded => "This would exceed the show's per-fan limit.",
        RejectionCode::InvalidSeats => "A seat or tier does not belong to this show.",
        RejectionCode::InvalidPromoCode => "The promo code cannot be applied.",
    };
    let status = match code {
        RejectionCode::SeatsUnavailable | RejectionCode::LimitExceeded => StatusCode::CONFLICT,
        RejectionCode::InvalidSeats | RejectionCode::InvalidPromoCode => StatusCode::UNPROCESSABLE_ENTITY,
    };
    crate::error::problem_response(status, code.as_str(), detail, |problem| {
        if !unavailable.is_empty() {
            problem.insert("unavailable_seat_ids".into(), serde_json::json!(unavailable));
        }
    })
}

async fn stored_response(
    state: &AppState,
    command: CommandId,
    stored: bookings::HoldRequestRow,
) -> Result<Response, ApiError> {
    match stored.booking_id {
        Some(booking) => {
            let Some(found) = bookings::find(&state.db, booking, stored.app_user_id).await? else {
                return Err(ApiError::NotFound("booking"));
            };
            let seats = bookings::seats(&state.db, booking).await?;
            Ok((
                StatusCode::CREATED,
                Json(Held {
                    request_id: command,
                    booking_id: booking,
                    status: "held",
                    seats: seats.into_iter().map(Into::into).collect(),
                    total_cents: found.total_cents,
                    currency: found.currency,
                    expires_at: found.expires_at,
                }),
            )
                .into_response())
        }
        None => {
            let code = stored
                .code
                .as_deref()
                .and_then(parse_code)
                .unwrap_or(RejectionCode::SeatsUnavailable);
            let unavailable = stored
                .detail
                .as_ref()
                .and_then(|detail| serde_json::from_value(detail["unavailable_seat_ids"].clone()).ok())
                .unwrap_or_default();
            Ok(rejection(code, unavailable))
        }
    }
}

fn parse_code(code: &str) -> Option<RejectionCode> {
    serde_json::from_value(serde_json::Value::String(code.to_owned())).ok()
}

/// A hold request's state.
#[derive(Debug, Serialize, ToSchema)]
pub struct HoldRequestStatus {
    /// The request.
    pub request_id: CommandId,
    /// queued, held or rejected.
    pub status: &'static str,
    /// The booking, once held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub booking_id: Option<BookingId>,
    /// Why not, once rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
}

/// Where a hold request stands.
#[utoipa::path(get, path = "/api/v1/hold-requests/{request_id}", tag = "holds", security(("bearer" = [])),
    params(("request_id" = String, Path, format = Uuid)),
    responses((status = 200, body = HoldRequestStatus), (status = 404, body = Problem), (status = 401, body = Problem)))]
pub async fn hold_request(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(request): ApiPath<CommandId>,
) -> Result<Json<HoldRequestStatus>, ApiError> {
    if let Some(stored) = bookings::hold_request(&state.db, request, user.user_id).await? {
        return Ok(Json(HoldRequestStatus {
            request_id: request,
            status: if stored.booking_id.is_some() {
                "held"
            } else {
                "rejected"
            },
            booking_id: stored.booking_id,
            code: stored.code,
        }));
    }
    let mut redis = state.holds.redis.clone();
    let owner: Option<String> = redis
        .get(state.holds.request_key(request))
        .await
        .map_err(redis_unavailable)?;
    if owner.as_deref() == Some(user.user_id.to_string().as_str()) {
        return Ok(Json(HoldRequestStatus {
            request_id: request,
            status: "queued",
            booking_id: None,
            code: None,
        }));
    }
    Err(ApiError::NotFound("hold request"))
}

/// A booking as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct BookingResponse {
    /// Id.
    pub booking_id: BookingId,
    /// Show.
    pub show_id: ShowId,
    /// held, payment_pending, confirmed, cancelled, refunded, expired or released.
    pub status: String,
    /// Seats (the ones it holds or bought; all of them once it ended).
    pub seats: Vec<BookingSeat>,
    /// Before discounts.
    pub subtotal_cents: i64,
    /// Discount.
    pub discount_cents: i64,
    /// What the fan pays.
    pub total_cents: i64,
    /// ISO 4217.
    pub currency: String,
    /// When a hold lapses.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: OffsetDateTime,
    /// The latest payment attempt, once one is started.
    pub payment: Option<PaymentResponse>,
}

/// One of the caller's bookings.
#[utoipa::path(get, path = "/api/v1/bookings/{booking_id}", tag = "holds", security(("bearer" = [])),
    params(("booking_id" = String, Path, format = Uuid)),
    responses((status = 200, body = BookingResponse), (status = 404, body = Problem), (status = 401, body = Problem)))]
pub async fn get_booking(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(booking): ApiPath<BookingId>,
) -> Result<Json<BookingResponse>, ApiError> {
    let found = bookings::find(&state.db, booking, user.user_id)
        .await?
        .ok_or(ApiError::NotFound("booking"))?;
    let seats = bookings::seats(&state.db, booking).await?;
    let payment = payments::latest_for_booking(&state.db, booking).await?;
    Ok(Json(BookingResponse {
        booking_id: found.booking_id,
        show_id: found.show_id,
        status: found.status,
        seats: seats.into_iter().map(Into::into).collect(),
        subtotal_cents: found.subtotal_cents,
        discount_cents: found.discount_cents,
        total_cents: found.total_cents,
        currency: found.currency,
        expires_at: found.expires_at,
        payment: payment.map(Into::into),
    }))
}

impl From<bookings::BookingSeatRow> for BookingSeat {
    fn from(row: bookings::BookingSeatRow) -> Self {
        Self {
            seat_id: row.seat_id,
            index: u32::try_from(row.seat_index).unwrap_or_default(),
            tier: row.tier,
            price_cents: i64::from(row.price_cents),
        }
    }
}

/// Releases a held booking (its seats go back on sale once the show's writer applies it).
#[utoipa::path(delete, path = "/api/v1/bookings/{booking_id}", tag = "holds", security(("bearer" = [])),
    params(("booking_id" = String, Path, format = Uuid)),
    responses((status = 202, body = Queued), (status = 404, body = Problem), (status = 409, body = Problem),
        (status = 503, body = Problem)))]
pub async fn release_booking(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(booking): ApiPath<BookingId>,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let found = bookings::find(&state.db, booking, user.user_id)
        .await?
        .ok_or(ApiError::NotFound("booking"))?;
    if found.status != "held" {
        return Err(ApiError::conflict(
            "not_releasable",
            format!("The booking is {}; only a held booking can be released.", found.status),
        ));
    }
    let command = CommandId::new();
    let envelope = Envelope::new(
        Some(found.show_id),
        ReleaseHold {
            command_id: command,
            user_id: user.user_id,
            booking_id: booking,
        },
    );
    let publisher = state.broker.publisher().map_err(|err| broker_unavailable(err.into()))?;
    publisher
        .publish(
            &state.broker.topology().shows_exchange(),
            &found.show_id.to_string(),
            &envelope,
        )
        .await
        .map_err(broker_unavailable)?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Queued {
            request_id: command,
            status: "queued",
        }),
    ))
}

/// Cancels a confirmed booking before the show's cut-off; the show's writer re-checks it in
/// queue order, frees the seats and voids the tickets, and the payment-worker refunds the
/// payment (the booking then reads `refunded`). With an `Idempotency-Key` the command id is
/// derived from it, so a retry is the same cancellation.
#[utoipa::path(post, path = "/api/v1/bookings/{booking_id}/cancel", tag = "holds", security(("bearer" = [])),
    params(("booking_id" = String, Path, format = Uuid),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeats return the first result")),
    responses((status = 202, body = Queued), (status = 404, body = Problem),
        (status = 409, description = "not_cancellable: not confirmed, or past the show's cut-off", body = Problem),
        (status = 422, description = "idempotency_key_reused", body = Problem),
        (status = 503, body = Problem)))]
pub async fn cancel_booking(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(booking): ApiPath<BookingId>,
    headers: HeaderMap,
) -> Result<(StatusCode, Json<Queued>), ApiError> {
    let terms = bookings::cancel_terms(&state.db, booking, user.user_id)
        .await?
        .ok_or(ApiError::NotFound("booking"))?;
    let key = idempotency::key(&headers)?;
    let command = match key {
        Some(key) => CommandId(idempotency::derive_uuid(
            "floodgate-cancel",
            &[
                user.user_id.as_uuid().as_bytes(),
                booking.as_uuid().as_bytes(),
                key.as_bytes(),
            ],
        )),
        None => CommandId::new(),
    };
    let accepted = (
        StatusCode::ACCEPTED,
        Json(Queued {
            request_id: command,
            status: "queued",
        }),
    );
    if let Some(key) = key {
        let slot = idempotency::slot(&state.holds.prefix, "cancel", user.user_id, key);
        let mut redis = state.holds.redis();
        let claim = idempotency::claim(&mut redis, &slot, &idempotency::fingerprint(&booking)).await?;
        // A repeat of a cancellation that took effect (or was answered) gets the first answer.
        if claim == Claim::Repeat
            && (matches!(terms.status.as_str(), "cancelled" | "refunded")
                || payments::command_result(&state.db, command).await?.is_some())
        {
            return Ok(accepted);
        }
    }
    cancellable(&terms.status, terms.cancellable_until, OffsetDateTime::now_utc())?;
    let envelope = Envelope::new(
        Some(terms.show_id),
        CancelBooking {
            command_id: command,
            user_id: user.user_id,
            booking_id: booking,
        },
    );
    let publisher = state.broker.publisher().map_err(|err| broker_unavailable(err.into()))?;
    publisher
        .publish(
            &state.broker.topology().shows_exchange(),
            &terms.show_id.to_string(),
            &envelope,
        )
        .await
        .map_err(broker_unavailable)?;
    tracing::info!(%booking, "cancellation queued");
    Ok(accepted)
}

/// Whether a booking in `status` may be cancelled at `now`.
fn cancellable(status: &str, until: OffsetDateTime, now: OffsetDateTime) -> Result<(), ApiError> {
    if status != "confirmed" {
        return Err(ApiError::conflict(
            "not_cancellable",
            format!("The booking is {status}; only a confirmed booking can be cancelled."),
        ));
    }
    if now >= until {
        return Err(ApiError::conflict(
            "not_cancellable",
            "The show's cancellation cut-off has passed.",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_confirmed_booking_before_the_cut_off_is_cancellable() {
        let now = OffsetDateTime::now_utc();
        let later = now + time::Duration::hours(1);
        assert!(cancellable("confirmed", later, now).is_ok());
        assert!(cancellable("confirmed", now, now).is_err());
        for status in ["held", "payment_pending", "cancelled", "refunded", "expired"] {
            assert_eq!(cancellable(status, later, now).unwrap_err().code(), "not_cancellable");
        }
    }
}
