//! API.md "Holds and bookings" (a booking's tickets, their QR images) and "Organizer/admin"
//! (check-in at the door).
//!
//! Tickets are issued by the booking-worker when a booking is confirmed: an unguessable code
//! plus the server's signature over code, show and seat. Check-in trusts a row only if that
//! signature verifies (constant time) under `TICKET_SIGNING_KEY`, so a row that was not issued
//! with the key admits nobody; unknown codes and bad signatures both read as 404
//! `ticket_not_found`, so a scan tells a forger nothing. Two scans of one ticket race in one
//! conditional UPDATE: exactly one admits, the other sees `already_checked_in` with the first
//! time. An organizer checks in tickets of their own events only (admins: any).

use axum::{
    Json,
    extract::State,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use common::ids::{BookingId, SeatId, ShowId, TicketId};
use qrcode::{EcLevel, QrCode, render::svg};
use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use utoipa::ToSchema;

use crate::{
    app::AppState,
    auth::extract::{AuthUser, Organizer},
    error::{ApiError, ApiJson, ApiPath, Problem, problem_response},
    metrics,
    store::{bookings, tickets},
};

/// The longest code accepted at check-in (issued codes are 22 characters).
const MAX_CODE_LENGTH: usize = 128;

/// Where a ticket's seat is.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketSeat {
    /// Seat.
    pub seat_id: SeatId,
    /// Section name.
    pub section: String,
    /// Row label.
    pub row: String,
    /// Seat number in the row.
    pub number: i32,
}

/// A ticket as its owner sees it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TicketResponse {
    /// Id.
    pub ticket_id: TicketId,
    /// Show.
    pub show_id: ShowId,
    /// Seat.
    pub seat: TicketSeat,
    /// What the QR image carries; shown at the door.
    pub code: String,
    /// valid, checked_in, or void (the booking was cancelled: it admits nobody).
    pub status: &'static str,
    /// When it was scanned at the door.
    #[serde(with = "time::serde::rfc3339::option", skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub checked_in_at: Option<OffsetDateTime>,
}

fn seat(row: &tickets::TicketRow) -> TicketSeat {
    TicketSeat {
        seat_id: row.seat_id,
        section: row.section.clone(),
        row: row.row_label.clone(),
        number: row.number,
    }
}

impl From<tickets::TicketRow> for TicketResponse {
    fn from(row: tickets::TicketRow) -> Self {
        let status = if row.voided_at.is_some() {
            "void"
        } else if row.checked_in_at.is_some() {
            "checked_in"
        } else {
            "valid"
        };
        Self {
            ticket_id: row.ticket_id,
            show_id: row.show_id,
            seat: seat(&row),
            status,
            checked_in_at: row.checked_in_at,
            code: row.code,
        }
    }
}

/// The tickets of one of the caller's bookings (empty until it is confirmed).
#[utoipa::path(get, path = "/api/v1/bookings/{booking_id}/tickets", tag = "tickets", security(("bearer" = [])),
    params(("booking_id" = String, Path, format = Uuid)),
    responses((status = 200, body = Vec<TicketResponse>), (status = 404, body = Problem), (status = 401, body = Problem)))]
pub async fn booking_tickets(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(booking): ApiPath<BookingId>,
) -> Result<Json<Vec<TicketResponse>>, ApiError> {
    bookings::find(&state.db, booking, user.user_id)
        .await?
        .ok_or(ApiError::NotFound("booking"))?;
    let rows = tickets::for_booking(&state.db, booking).await?;
    Ok(Json(rows.into_iter().map(Into::into).collect()))
}

/// An SVG QR image of `text` (error correction M: survives a scuffed screen or printout).
pub fn qr_svg(text: &str) -> Result<String, ApiError> {
    let code = QrCode::with_error_correction_level(text.as_bytes(), EcLevel::M)
        .map_err(|err| ApiError::Unexpected(anyhow::anyhow!("cannot encode a QR code: {err}")))?;
    Ok(code
        .render::<svg::Color<'_>>()
        .min_dimensions(256, 256)
        .quiet_zone(true)
        .build())
}

/// The QR image of one of the caller's tickets.
#[utoipa::path(get, path = "/api/v1/tickets/{ticket_id}/qr.svg", tag = "tickets", security(("bearer" = [])),
    params(("ticket_id" = String, Path, format = Uuid)),
    responses((status = 200, content_type = "image/svg+xml", body = String, description = "The QR code of the ticket's code"),
        (status = 404, description = "no such ticket of the caller, or a void one", body = Problem),
        (status = 401, body = Problem)))]
pub async fn ticket_qr(
    State(state): State<AppState>,
    user: AuthUser,
    ApiPath(ticket): ApiPath<TicketId>,
) -> Result<Response, ApiError> {
    let row = tickets::find_for_user(&state.db, ticket, user.user_id)
        .await?
        .filter(|row| row.voided_at.is_none())
        .ok_or(ApiError::NotFound("ticket"))?;
    let svg = qr_svg(&row.code)?;
    let mut response = svg.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("image/svg+xml"));
    // The image is the ticket: no shared cache may keep it.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    Ok(response)
}

/// `POST /checkin` body.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CheckInBody {
    /// The code read from the ticket's QR image.
    pub code: String,
}

/// 200: admitted.
#[derive(Debug, Serialize, ToSchema)]
pub struct CheckedIn {
    /// Ticket.
    pub ticket_id: TicketId,
    /// Seat.
    pub seat: TicketSeat,
    /// Show.
    pub show_id: ShowId,
    /// Now.
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub checked_in_at: OffsetDateTime,
}

fn ticket_not_found() -> Response {
    metrics::check_in("ticket_not_found");
    problem_response(
        StatusCode::NOT_FOUND,
        "ticket_not_found",
        "No valid ticket has this code.",
        |_| {},
    )
}

fn already_checked_in(ticket: TicketId, first: OffsetDateTime) -> Response {
    metrics::check_in("already_checked_in");
    problem_response(
        StatusCode::CONFLICT,
        "already_checked_in",
        "This ticket has already been checked in.",
        |problem| {
            problem.insert("ticket_id".into(), ticket.to_string().into());
            problem.insert(
                "checked_in_at".into(),
                first.format(&Rfc3339).unwrap_or_default().into(),
            );
        },
    )
}

fn ticket_void() -> Response {
    metrics::check_in("ticket_void");
    problem_response(
        StatusCode::CONFLICT,
        "ticket_void",
        "This ticket was voided (its booking was cancelled) and admits nobody.",
        |_| {},
    )
}

/// Checks a ticket in at the door.
#[utoipa::path(post, path = "/api/v1/checkin", tag = "tickets", security(("bearer" = [])),
    request_body = CheckInBody,
    responses((status = 200, body = CheckedIn),
        (status = 404, description = "ticket_not_found: unknown code, bad signature, or another organizer's show", body = Problem),
        (status = 409, description = "already_checked_in (with the first `checked_in_at`) or ticket_void", body = Problem),
        (status = 403, body = Problem), (status = 401, body = Problem)))]
pub async fn check_in(
    State(state): State<AppState>,
    organizer: Organizer,
    ApiJson(body): ApiJson<CheckInBody>,
) -> Result<Response, ApiError> {
    let code = body.code.trim();
    if code.is_empty() || code.len() > MAX_CODE_LENGTH {
        return Ok(ticket_not_found());
    }
    let Some(ticket) = tickets::find_by_code(&state.db, code)
        .await?
        .filter(|ticket| organizer.may_manage(ticket.owner))
    else {
        return Ok(ticket_not_found());
    };
    if !state
        .ticket_signer
        .verify(&ticket.code, ticket.show_id, ticket.seat_id, &ticket.signature)
    {
        tracing::warn!(ticket_id = %ticket.ticket_id, "ticket signature does not verify; refused at the door");
        return Ok(ticket_not_found());
    }
    if ticket.voided_at.is_some() {
        return Ok(ticket_void());
    }
    if let Some(first) = ticket.checked_in_at {
        return Ok(already_checked_in(ticket.ticket_id, first));
    }
    match tickets::check_in(&state.db, ticket.ticket_id, organizer.0.user_id).await? {
        Some(checked_in_at) => {
            metrics::check_in("admitted");
            tracing::info!(ticket_id = %ticket.ticket_id, show_id = %ticket.show_id, "ticket checked in");
            Ok(Json(CheckedIn {
                ticket_id: ticket.ticket_id,
                seat: seat(&ticket),
                show_id: ticket.show_id,
                checked_in_at,
            })
            .into_response())
        }
        // Another scan (or a cancellation) got there between our read and our update.
        None => match tickets::door_state(&state.db, ticket.ticket_id).await? {
            Some(tickets::DoorStateRow { voided_at: Some(_), .. }) => Ok(ticket_void()),
            Some(tickets::DoorStateRow {
                checked_in_at: Some(first),
                ..
            }) => Ok(already_checked_in(ticket.ticket_id, first)),
            _ => Ok(ticket_not_found()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_qr_image_is_an_svg_document() {
        let svg = qr_svg("q0rK3xVhQ4mB8yTz1cN2aw").unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg") && svg.trim_end().ends_with("</svg>"));
    }
}
