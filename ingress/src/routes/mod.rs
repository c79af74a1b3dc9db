//! The public API routes (API.md), each registered with its OpenAPI description through
//! `utoipa_axum::routes!`, so the served document and the router cannot drift apart.

pub mod accounts;
pub mod admin;
pub mod catalog;
pub mod holds;
mod pagination;
pub mod payments;
pub mod promo_codes;
pub mod queue;
pub mod tickets;
pub mod waitlist;

use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::app::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Floodgate API",
        description = "Waiting room, seat selection, holds, payments and tickets for high-demand on-sales.",
        version = "1.0.0"
    ),
    modifiers(&BearerAuth),
    tags(
        (name = "accounts", description = "Registration, login, tokens"),
        (name = "catalog", description = "Public reads: events, venues, shows, seat maps"),
        (name = "admin", description = "Organizer and admin calls"),
        (name = "waiting room", description = "Queue places, live positions, admission"),
        (name = "holds", description = "Hold requests and bookings of admitted fans"),
        (name = "payments", description = "Paying bookings, payment status, gateway webhooks"),
        (name = "tickets", description = "Tickets, their QR codes, check-in at the door"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .build(),
            ),
        );
    }
}

/// Every API route with its OpenAPI description.
pub fn api() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .routes(routes!(accounts::register))
        .routes(routes!(accounts::login))
        .routes(routes!(accounts::refresh))
        .routes(routes!(accounts::logout))
        .routes(routes!(accounts::me))
        .routes(routes!(accounts::my_bookings))
        .routes(routes!(catalog::list_events))
        .routes(routes!(catalog::get_event))
        .routes(routes!(catalog::list_venues))
        .routes(routes!(catalog::get_venue))
        .routes(routes!(catalog::get_show))
        .routes(routes!(catalog::show_seats))
        .routes(routes!(catalog::show_availability))
        .routes(routes!(admin::create_venue))
        .routes(routes!(admin::create_event))
        .routes(routes!(admin::create_show))
        .routes(routes!(admin::update_waiting_room))
        .routes(routes!(admin::show_stats))
        .routes(routes!(admin::set_user_role))
        .routes(routes!(promo_codes::create_promo_code))
        .routes(routes!(queue::join, queue::status, queue::leave))
        .routes(routes!(queue::websocket))
        .routes(routes!(holds::create_hold))
        .routes(routes!(holds::hold_request))
        .routes(routes!(holds::get_booking, holds::release_booking))
        .routes(routes!(holds::cancel_booking))
        .routes(routes!(waitlist::join_waitlist))
        .routes(routes!(payments::start_payment))
        .routes(routes!(payments::get_payment))
        .routes(routes!(payments::webhook))
        .routes(routes!(tickets::booking_tickets))
        .routes(routes!(tickets::ticket_qr))
        .routes(routes!(tickets::check_in))
}
