//! API.md "Holds and bookings": joining a sold-out show's waitlist.
//!
//! Ingress checks the request (the show exists and is sold out right now, the quantity is
//! within the show's per-fan limit, the fan is not already waiting) and publishes
//! `JoinWaitlist` to the show's queue with a publisher confirm; the show's single writer creates
//! the entry in queue order and, when seats come back, offers them to entries first come first
//! served as time-limited holds (`waitlist.offered`, pushed to the fan's WebSocket). "Sold out"
//! is read from the writer's availability snapshot (PostgreSQL when there is none), the same
//! numbers the seat map shows.

use axum::{
    Json,
    extract::State,
    http::{HeaderMap, StatusCode},
};
use common::{
    contracts::{Envelope, JoinWaitlist},
    ids::{CommandId, ShowId, WaitlistEntryId},
    mq::PublishError,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::{
    app::AppState,
    auth::extract::AuthUser,
    error::{ApiError, ApiJson, ApiPath, Problem},
    idempotency,
    store::{shows, waitlist},
};

/// `POST /shows/{id}/waitlist` body.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WaitlistBody {
    /// Seats wanted (1 to the show's per-fan limit), best available in one tier.
    pub quantity: u32,
}

/// The fan's place on the waitlist.
#[derive(Debug, Serialize, ToSchema)]
pub struct WaitlistPlace {
    /// Id.
    pub waitlist_entry_id: WaitlistEntryId,
    /// `waiting` (or `offered`, when seats are being offered to the fan right now).
    pub status: String,
    /// Seats wanted.
    pub quantity: u32,
}

/// Whether nothing of the show can be bought right now.
async fn sold_out(state: &AppState, show: ShowId) -> Result<bool, ApiError> {
    if let Some(snapshot) = state.seat_maps.snapshot(show).await {
        return Ok(snapshot.counts.available == 0);
    }
    Ok(shows::counts(&state.db, show).await?.available == 0)
}

/// Joins a sold-out show's waitlist.
#[utoipa::path(post, path = "/api/v1/shows/{show_id}/waitlist", tag = "holds", security(("bearer" = [])),
    params(("show_id" = String, Path, format = Uuid),
        ("Idempotency-Key" = Option<String>, Header, description = "Repeats return the first result")),
    request_body = WaitlistBody,
    responses((status = 201, body = WaitlistPlace),
        (status = 200, description = "already on the waitlist: the same place", body = WaitlistPlace),
        (status = 400, body = Problem), (status = 404, body = Problem),
        (status = 409, description = "not_sold_out or limit_exceeded", body = Problem),
        (status = 422, description = "idempotency_key_reused", body = Problem),
        (status = 503, body = Problem)))]
pub async fn join_waitlist(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(show): ApiPath<ShowId>,
    headers: HeaderMap,
    ApiJson(body): ApiJson<WaitlistBody>,
) -> Result<(StatusCode, Json<WaitlistPlace>), ApiError> {
    if body.quantity == 0 {
        return Err(ApiError::bad_request(
            "invalid_quantity",
            "`quantity` must be at least 1.",
        ));
    }
    let max = state.holds.max_per_user(&state, show).await?;
    if u64::from(body.quantity) > u64::try_from(max).unwrap_or(0) {
        return Err(ApiError::conflict(
            "limit_exceeded",
            format!("At most {max} seats per fan for this show."),
        ));
    }
    let key = idempotency::key(&headers)?;
    if let Some(key) = key {
        let slot = idempotency::slot(state.holds.prefix(), "waitlist", user.user_id, key);
        let mut redis = state.holds.redis();
        idempotency::claim(&mut redis, &slot, &idempotency::fingerprint(&(show, &body))).await?;
    }
    // One open place per fan and show: asking again returns it.
    if let Some(entry) = waitlist::open_entry(&state.db, show, user.user_id).await? {
        return Ok((
            StatusCode::OK,
            Json(WaitlistPlace {
                waitlist_entry_id: entry.waitlist_entry_id,
                status: entry.status,
                quantity: u32::try_from(entry.quantity).unwrap_or_default(),
            }),
        ));
    }
    if !sold_out(&state, show).await? {
        return Err(ApiError::conflict(
            "not_sold_out",
            "Seats are still available: join the queue and hold them instead.",
        ));
    }
    let (entry, command) = match key {
        Some(key) => {
            let (user_id, show_id) = (user.user_id.as_uuid(), show.as_uuid());
            let parts: [&[u8]; 3] = [user_id.as_bytes(), show_id.as_bytes(), key.as_bytes()];
            (
                WaitlistEntryId(idempotency::derive_uuid("floodgate-waitlist-entry", &parts)),
                CommandId(idempotency::derive_uuid("floodgate-join-waitlist", &parts)),
            )
        }
        None => (WaitlistEntryId::new(), CommandId::new()),
    };
    let envelope = Envelope::new(
        Some(show),
        JoinWaitlist {
            command_id: command,
            user_id: user.user_id,
            waitlist_entry_id: entry,
            quantity: body.quantity,
        },
    );
    let unavailable = |err: PublishError| {
        tracing::warn!(error = %err, "waitlist request not confirmed by the broker");
        ApiError::Unavailable {
            code: "broker_unavailable",
            detail: "The request could not be queued. Retry shortly.".to_owned(),
        }
    };
    let publisher = state.broker.publisher().map_err(|err| unavailable(err.into()))?;
    publisher
        .publish(&state.broker.topology().shows_exchange(), &show.to_string(), &envelope)
        .await
        .map_err(unavailable)?;
    tracing::info!(%show, waitlist_entry_id = %entry, "waitlist joined");
    Ok((
        StatusCode::CREATED,
        Json(WaitlistPlace {
            waitlist_entry_id: entry,
            status: "waiting".to_owned(),
            quantity: body.quantity,
        }),
    ))
}
