//! API.md "Waiting room": join, status, leave, and the live WebSocket.
//!
//! Decisions: a place that was forfeited (its fan went quiet past the grace period) is gone;
//! joining again gives a place at the back. The WebSocket accepts clients without an `Origin`
//! header (non-browser clients); browsers always send one, and it must be on the allowed list.
//!
//! A socket hears its position at most once a second: the latest serving number then, later
//! moves folded in. Its turn (`admitted`) and changes of the room's state are told at once.
//! `WS_POSITION_MAX_INTERVAL_MS` (default 1,000) lets a very large room save messages: fans far
//! back then hear a move every twentieth of their ETA, up to that interval, so the ETA shown is
//! never more than 5% stale while the front of the line still hears every second. Measured with
//! `loadgen queue` (README, "Benchmarks"): 19,000 sockets on one ingress told every second cost
//! it 0.63 cores, and 0.49 with the interval at 10 s.

use std::time::{Duration, Instant};

use axum::{
    Json,
    extract::{
        Query, State, WebSocketUpgrade,
        ws::{CloseFrame, Message, WebSocket, close_code},
    },
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use common::ids::{ShowId, UserId};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use utoipa::ToSchema;
use waiting_room::{Place, room::Unavailable};

use crate::{
    app::AppState,
    auth::extract::AuthUser,
    error::{ApiError, ApiPath, Problem},
    metrics,
    room::LocalUpdate,
    store::shows,
};

/// A fan's place, as the queue endpoints and the WebSocket report it.
#[derive(Debug, Serialize, ToSchema)]
pub struct QueueStatus {
    /// prequeue, waiting, admitted, sold_out or closed.
    pub state: &'static str,
    /// Queue number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub number: Option<u64>,
    /// Place in line (1 = next).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<u64>,
    /// Fans ahead.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ahead: Option<u64>,
    /// Estimated wait.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Present once admitted: send it as `Admission-Token` on booking calls.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admission_token: Option<String>,
    /// When the admission (and its token) expires.
    #[serde(skip_serializing_if = "Option::is_none", with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub expires_at: Option<OffsetDateTime>,
}

fn unavailable(err: Unavailable) -> ApiError {
    tracing::warn!(error = %err, "waiting room unavailable");
    ApiError::Unavailable {
        code: "waiting_room_unavailable",
        detail: "The waiting room is temporarily unavailable; retry shortly.".to_owned(),
    }
}

fn status_of(state: &AppState, show: ShowId, user: UserId, place: &Place) -> Result<QueueStatus, ApiError> {
    let mut status = QueueStatus {
        state: place.state(),
        number: None,
        position: place.position(),
        ahead: place.position().map(|position| position.saturating_sub(1)),
        eta_seconds: place.eta_seconds(),
        admission_token: None,
        expires_at: None,
    };
    match place {
        Place::Waiting { number, .. } => status.number = Some(*number),
        Place::Admitted {
            number,
            session_deadline_ms,
        } => {
            let expires = session_deadline_ms / 1000;
            status.number = Some(*number);
            let token = state
                .admission_tokens
                .issue(user, show, *number, expires)
                .map_err(|err| ApiError::Unexpected(err.into()))?;
            status.admission_token = Some(token);
            status.expires_at = OffsetDateTime::from_unix_timestamp(expires as i64).ok();
        }
        _ => {}
    }
    Ok(status)
}

/// A room that reports `closed` may belong to no show at all: then the answer is 404.
async fn ensure_show(state: &AppState, show: ShowId, place: &Place) -> Result<(), ApiError> {
    if matches!(place, Place::Closed | Place::NotQueued) && shows::find(&state.db, show).await?.is_none() {
        return Err(ApiError::NotFound("show"));
    }
    Ok(())
}

/// Joins the show's waiting room (or returns the place already held).
#[utoipa::path(post, path = "/api/v1/shows/{show_id}/queue", tag = "waiting room", security(("bearer" = [])),
    params(("show_id" = String, Path, format = Uuid)),
    responses((status = 201, description = "Joined", body = QueueStatus), (status = 200, description = "Already queued: the same place", body = QueueStatus),
        (status = 401, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem)))]
pub async fn join(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(show): ApiPath<ShowId>,
) -> Result<(StatusCode, Json<QueueStatus>), ApiError> {
    let (place, new) = state.hub.rooms().join(show, user.user_id).await.map_err(unavailable)?;
    ensure_show(&state, show, &place).await?;
    if new {
        metrics::queue_join();
    }
    let status = if new { StatusCode::CREATED } else { StatusCode::OK };
    Ok((status, Json(status_of(&state, show, user.user_id, &place)?)))
}

/// The caller's place; with the admission token once admitted.
#[utoipa::path(get, path = "/api/v1/shows/{show_id}/queue", tag = "waiting room", security(("bearer" = [])),
    params(("show_id" = String, Path, format = Uuid)),
    responses((status = 200, body = QueueStatus), (status = 401, body = Problem), (status = 404, body = Problem),
        (status = 503, body = Problem)))]
pub async fn status(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(show): ApiPath<ShowId>,
) -> Result<Json<QueueStatus>, ApiError> {
    let place = state
        .hub
        .rooms()
        .status(show, user.user_id)
        .await
        .map_err(unavailable)?;
    ensure_show(&state, show, &place).await?;
    Ok(Json(status_of(&state, show, user.user_id, &place)?))
}

/// Leaves the room: frees the place, or ends the admitted session.
#[utoipa::path(delete, path = "/api/v1/shows/{show_id}/queue", tag = "waiting room", security(("bearer" = [])),
    params(("show_id" = String, Path, format = Uuid)),
    responses((status = 204, description = "Left"), (status = 401, body = Problem), (status = 503, body = Problem)))]
pub async fn leave(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(show): ApiPath<ShowId>,
) -> Result<StatusCode, ApiError> {
    state.hub.rooms().leave(show, user.user_id).await.map_err(unavailable)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `?access_token=` for clients that cannot set headers on a WebSocket handshake.
#[derive(Debug, Deserialize)]
pub struct WsQuery {
    access_token: Option<String>,
}

/// Largest frame or message a fan may send (pings are a few bytes).
const MAX_CLIENT_MESSAGE: usize = 1024;
/// Client messages allowed per second before the socket is closed.
const MAX_CLIENT_MESSAGES_PER_SECOND: u32 = 5;
/// Least time between two position messages to one fan near the front.
const POSITION_EVERY: Duration = Duration::from_secs(1);

/// Least time between two position messages to a fan with this ETA: a twentieth of it (so the
/// ETA shown is never more than 5% stale), from [`POSITION_EVERY`] up to `far` (the
/// `WS_POSITION_MAX_INTERVAL_MS` setting).
fn position_every(eta_seconds: Option<u64>, far: Duration) -> Duration {
    let twentieth = Duration::from_secs(eta_seconds.unwrap_or(0)) / 20;
    twentieth.clamp(POSITION_EVERY, far.max(POSITION_EVERY))
}
/// How often a connected fan is recorded as present.
const ALIVE_EVERY: Duration = Duration::from_secs(10);

/// Live position updates over a WebSocket (API.md "Waiting room").
#[utoipa::path(get, path = "/api/v1/shows/{show_id}/queue/ws", tag = "waiting room",
    params(("show_id" = String, Path, format = Uuid), ("access_token" = Option<String>, Query)),
    responses((status = 101, description = "Switching to the WebSocket protocol"), (status = 401, body = Problem),
        (status = 403, description = "Origin not allowed", body = Problem)))]
pub async fn websocket(
    State(state): State<AppState>,
    ApiPath(show): ApiPath<ShowId>,
    Query(query): Query<WsQuery>,
    headers: HeaderMap,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if let Some(origin) = headers.get(header::ORIGIN) {
        let allowed = origin
            .to_str()
            .is_ok_and(|origin| state.ws_allowed_origins.iter().any(|allowed| allowed == origin));
        if !allowed {
            return Err(ApiError::Forbidden {
                code: "origin_not_allowed",
                detail: "This origin may not open the waiting-room socket.".to_owned(),
            });
        }
    }
    let token = query
        .access_token
        .or_else(|| {
            headers
                .get(header::AUTHORIZATION)
                .and_then(|value| value.to_str().ok())
                .and_then(|value| value.strip_prefix("Bearer "))
                .map(str::to_owned)
        })
        .ok_or_else(|| ApiError::unauthorized("missing_token", "An access token is required."))?;
    let claims = state
        .tokens
        .verify(&token)
        .map_err(|_| ApiError::unauthorized("invalid_token", "The access token is invalid or expired."))?;
    let place = state.hub.rooms().status(show, claims.sub).await.map_err(unavailable)?;
    ensure_show(&state, show, &place).await?;
    Ok(upgrade
        .max_frame_size(MAX_CLIENT_MESSAGE)
        .max_message_size(MAX_CLIENT_MESSAGE)
        // Small buffers: the messages are tiny and tens of thousands of sockets share the memory.
        .read_buffer_size(2048)
        .write_buffer_size(0)
        .on_upgrade(move |socket| async move {
            metrics::ws_connected(1);
            fan_socket(socket, state, show, claims.sub, place).await;
            metrics::ws_connected(-1);
        })
        .into_response())
}

#[derive(Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Outgoing {
    Position {
        position: u64,
        ahead: u64,
        serving: u64,
        eta_seconds: Option<u64>,
    },
    Admitted {
        admission_token: String,
        expires_at: String,
    },
    SoldOut,
    Closed,
}

async fn send(socket: &mut WebSocket, message: &Outgoing) -> bool {
    let text = serde_json::to_string(message).unwrap_or_default();
    socket.send(Message::Text(text.into())).await.is_ok()
}

/// What the socket last told the fan, so it only speaks when something changed.
#[derive(Default)]
struct Told {
    position: Option<u64>,
    room_state: Option<String>,
    admitted: bool,
}

/// Tells the fan what `place` means, unless it was already said. Returns false to close.
async fn tell(
    socket: &mut WebSocket,
    state: &AppState,
    show: ShowId,
    user: UserId,
    place: &Place,
    told: &mut Told,
) -> bool {
    match place {
        Place::Admitted { .. } if !told.admitted => {
            told.admitted = true;
            match status_of(state, show, user, place) {
                Ok(QueueStatus {
                    admission_token: Some(token),
                    expires_at: Some(expires),
                    ..
                }) => {
                    let expires_at = expires
                        .format(&time::format_description::well_known::Rfc3339)
                        .unwrap_or_default();
                    send(
                        socket,
                        &Outgoing::Admitted {
                            admission_token: token,
                            expires_at,
                        },
                    )
                    .await
                }
                _ => false,
            }
        }
        Place::Waiting { serving, .. } => {
            let position = place.position().unwrap_or(0);
            if told.position == Some(position) {
                return true;
            }
            told.position = Some(position);
            let message = Outgoing::Position {
                position,
                ahead: position.saturating_sub(1),
                serving: *serving,
                eta_seconds: place.eta_seconds(),
            };
            send(socket, &message).await
        }
        Place::SoldOut if told.room_state.as_deref() != Some("sold_out") => {
            told.room_state = Some("sold_out".to_owned());
            send(socket, &Outgoing::SoldOut).await
        }
        Place::Closed | Place::NotQueued => {
            send(socket, &Outgoing::Closed).await;
            false
        }
        _ => true,
    }
}

/// Follows one room update: where it leaves the fan, told to the fan if that changed. False
/// when the socket is to close.
async fn follow(
    socket: &mut WebSocket,
    state: &AppState,
    show: ShowId,
    user: UserId,
    place: &mut Place,
    told: &mut Told,
    local: &LocalUpdate,
) -> bool {
    let update = &local.update;
    let next = match (&*place, update.state.as_str()) {
        (_, "sold_out") => Place::SoldOut,
        (_, "closed") => Place::Closed,
        // Our number was reached, or the sale just opened and we were in the pre-queue, or the
        // room reopened: one Redis read tells us where we stand (if Redis does not answer, the
        // next update asks again).
        (Place::Waiting { number, .. }, _) if update.serving >= *number => {
            match state.hub.rooms().status(show, user).await {
                Ok(fresh) => fresh,
                Err(_) => return true,
            }
        }
        (Place::Prequeue | Place::SoldOut, _) => match state.hub.rooms().status(show, user).await {
            Ok(fresh) => fresh,
            Err(_) => return true,
        },
        (Place::Waiting { number, .. }, _) => Place::Waiting {
            number: *number,
            serving: update.serving,
            rate_per_second: update.rate,
        },
        (other, _) => other.clone(),
    };
    *place = next;
    if !tell(socket, state, show, user, place, told).await {
        return false;
    }
    metrics::ws_fanout(local.received.elapsed());
    true
}

/// True when `update` only moves the serving number for a fan still waiting: that is told at
/// the fan's pace, whereas its turn and every change of the room's state are told at once.
fn only_moves(place: &Place, update: &LocalUpdate) -> bool {
    matches!(place, Place::Waiting { number, .. } if update.update.serving < *number)
        && !matches!(update.update.state.as_str(), "sold_out" | "closed")
}

/// A waiting fan's turn is this close (by ETA) or the room is not moving: the socket watches
/// every tick, so the turn is told at once.
const NEAR_TURN_SECONDS: u64 = 5;

fn near_turn(place: &Place) -> bool {
    place.eta_seconds().is_none_or(|eta| eta <= NEAR_TURN_SECONDS)
}

/// One fan's socket: position messages as the serving number moves (at most one a second,
/// less often far back: `position_every`), `admitted` with the token at once, `sold_out` /
/// `closed` as the room changes, the fan's `hold_result` and `booking` changes as the show's
/// writer answers; pings keep the place. Pacing never blocks the socket: a move waiting to be
/// told is a deadline in the same `select!` as everything else.
async fn fan_socket(mut socket: WebSocket, state: AppState, show: ShowId, user: UserId, mut place: Place) {
    let mut updates = state.hub.watch(show);
    let mut results = state.holds.results.subscribe(user);
    let mut told = Told::default();
    state.hub.mark_alive(show, user);
    if !tell(&mut socket, &state, show, user, &place, &mut told).await {
        let _ = socket.send(Message::Close(None)).await;
        return;
    }
    let mut alive = tokio::time::interval(ALIVE_EVERY);
    let mut last_position = Instant::now() - POSITION_EVERY;
    // When the latest serving move is due to be told, while one waits.
    let mut due: Option<Instant> = None;
    let mut window_start = Instant::now();
    let mut window_messages = 0_u32;
    loop {
        tokio::select! {
            // A fan whose next position is already due later, and whose turn cannot come
            // before, sleeps until then instead of waking at every tick with the rest of the
            // room (the cost of a large room was those wake-ups); the latest update is read
            // when it wakes, and a sold-out or closed room is heard then.
            changed = updates.changed(), if due.is_none() || near_turn(&place) => {
                if changed.is_err() {
                    break;
                }
                // Most wake-ups here only schedule the next message: look before copying.
                let moves = match &*updates.borrow_and_update() {
                    Some(local) => only_moves(&place, local),
                    None => continue,
                };
                if moves {
                    // Later moves fold into this one: the latest is told when it is due.
                    due.get_or_insert(last_position + position_every(place.eta_seconds(), state.ws_position_max_interval));
                    continue;
                }
                due = None;
                let Some(local) = updates.borrow().clone() else { continue };
                if !follow(&mut socket, &state, show, user, &mut place, &mut told, &local).await {
                    break;
                }
                if matches!(place, Place::Waiting { .. }) {
                    last_position = Instant::now();
                }
            }
            () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now).into()), if due.is_some() => {
                due = None;
                let Some(local) = updates.borrow_and_update().clone() else { continue };
                if !follow(&mut socket, &state, show, user, &mut place, &mut told, &local).await {
                    break;
                }
                last_position = Instant::now();
            }
            Some(result) = results.messages.recv() => {
                let text = serde_json::to_string(&result).unwrap_or_default();
                if socket.send(Message::Text(text.into())).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => {
                match incoming {
                    Some(Ok(Message::Close(_)) | Err(_)) | None => break,
                    Some(Ok(_)) => {
                        if window_start.elapsed() >= Duration::from_secs(1) {
                            window_start = Instant::now();
                            window_messages = 0;
                        }
                        window_messages += 1;
                        if window_messages > MAX_CLIENT_MESSAGES_PER_SECOND {
                            let frame = CloseFrame { code: close_code::POLICY, reason: "too many messages".into() };
                            let _ = socket.send(Message::Close(Some(frame))).await;
                            break;
                        }
                        state.hub.mark_alive(show, user);
                    }
                }
            }
            _ = alive.tick() => state.hub.mark_alive(show, user),
            () = state.shutdown.cancelled() => {
                // Tell the client to reconnect (to another instance) rather than just dropping.
                let frame = CloseFrame { code: close_code::RESTART, reason: "server restarting".into() };
                let _ = socket.send(Message::Close(Some(frame))).await;
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fans_far_back_hear_their_position_less_often() {
        let far = Duration::from_secs(10);
        // Near the front (and without an ETA: a paused room, the pre-queue): every second.
        assert_eq!(position_every(None, far), POSITION_EVERY);
        assert_eq!(position_every(Some(0), far), POSITION_EVERY);
        assert_eq!(position_every(Some(20), far), POSITION_EVERY);
        // A twentieth of the ETA in between.
        assert_eq!(position_every(Some(60), far), Duration::from_secs(3));
        // Never less often than the configured longest interval.
        assert_eq!(position_every(Some(200), far), far);
        assert_eq!(position_every(Some(100_000), far), far);
        assert_eq!(
            position_every(Some(100_000), Duration::from_secs(2)),
            Duration::from_secs(2)
        );
        // Which cannot go below a second.
        assert_eq!(position_every(Some(100_000), Duration::ZERO), POSITION_EVERY);
    }
}
