//! E-mail contents: a subject, an HTML body and a plain-text body rendered from the templates in
//! `notifier/templates/` (minijinja, compiled into the binary; HTML templates auto-escape), plus
//! the inline QR images of the tickets.
//!
//! Amounts read `EUR 50.00` and times are the venue's local time, as PostgreSQL formats them.

use common::ids::BookingId;
use minijinja::{
    Environment, UndefinedBehavior,
    value::{Serde, Value},
};
use serde::Serialize;

use crate::{
    events::Kind,
    qr,
    store::{BookingContext, SeatRow, TicketRow},
};

/// A rendered e-mail.
#[derive(Debug, Clone)]
pub struct Rendered {
    /// The subject line.
    pub subject: String,
    /// The HTML body (images referenced as `cid:<content id>`).
    pub html: String,
    /// The plain-text body.
    pub text: String,
    /// Images shown inline in the HTML body.
    pub images: Vec<InlineImage>,
}

/// A PNG image referenced by the HTML body.
#[derive(Debug, Clone)]
pub struct InlineImage {
    /// Its `Content-ID`, e.g. `ticket-1@floodgate`.
    pub content_id: String,
    /// The PNG file.
    pub png: Vec<u8>,
}

/// Why an e-mail could not be rendered (a bug: retrying cannot help).
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// A template failed (an unknown variable, a syntax error).
    #[error("template error: {0}")]
    Template(#[from] minijinja::Error),
    /// A QR image could not be made.
    #[error(transparent)]
    Qr(#[from] qr::QrError),
}

/// What every message names.
#[derive(Debug, Serialize)]
struct Common<'a> {
    name: &'a str,
    event_title: &'a str,
    venue_name: &'a str,
    city: &'a str,
    starts_local: &'a str,
    booking_id: String,
    manage_url: String,
}

#[derive(Debug, Serialize)]
struct TicketView {
    seat: String,
    tier: String,
    price: String,
    code: String,
    content_id: String,
}

#[derive(Debug, Serialize)]
struct SeatView {
    label: String,
    price: String,
}

/// Renders the e-mails.
pub struct Renderer {
    env: Environment<'static>,
    public_url: String,
}

const TEMPLATES: [(&str, &str); 11] = [
    ("base.html", include_str!("../templates/base.html")),
    (
        "booking_confirmed.html",
        include_str!("../templates/booking_confirmed.html"),
    ),
    (
        "booking_confirmed.txt",
        include_str!("../templates/booking_confirmed.txt"),
    ),
    (
        "booking_cancelled.html",
        include_str!("../templates/booking_cancelled.html"),
    ),
    (
        "booking_cancelled.txt",
        include_str!("../templates/booking_cancelled.txt"),
    ),
    (
        "refund_succeeded.html",
        include_str!("../templates/refund_succeeded.html"),
    ),
    (
        "refund_succeeded.txt",
        include_str!("../templates/refund_succeeded.txt"),
    ),
    ("hold_expired.html", include_str!("../templates/hold_expired.html")),
    ("hold_expired.txt", include_str!("../templates/hold_expired.txt")),
    (
        "waitlist_offered.html",
        include_str!("../templates/waitlist_offered.html"),
    ),
    (
        "waitlist_offered.txt",
        include_str!("../templates/waitlist_offered.txt"),
    ),
];

impl Renderer {
    /// Loads the templates; `public_url` is the web client's base URL for links.
    pub fn new(public_url: &str) -> Self {
        let mut env = Environment::new();
        // A misspelt variable is an error in tests, not a blank in a fan's e-mail.
        env.set_undefined_behavior(UndefinedBehavior::Strict);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|err| panic!("template {name} does not compile: {err}"));
        }
        Self {
            env,
            public_url: public_url.trim_end_matches('/').to_owned(),
        }
    }

    fn common<'a>(&self, context: &'a BookingContext, booking: BookingId) -> Common<'a> {
        Common {
            name: &context.name,
            event_title: &context.event_title,
            venue_name: &context.venue_name,
            city: &context.city,
            starts_local: &context.starts_local,
            booking_id: booking.to_string(),
            manage_url: format!("{}/bookings/{booking}", self.public_url),
        }
    }

    fn render<T: Serialize>(&self, kind: Kind, subject: String, data: &T) -> Result<Rendered, RenderError> {
        let data = Value::from(Serde(data));
        let html = self.env.get_template(&format!("{kind}.html"))?.render(&data)?;
        let text = self.env.get_template(&format!("{kind}.txt"))?.render(&data)?;
        Ok(Rendered {
            subject,
            html,
            text,
            images: Vec::new(),
        })
    }

    /// The tickets: one QR image per ticket, the seats and the total.
    pub fn booking_confirmed(
        &self,
        context: &BookingContext,
        booking: BookingId,
        tickets: &[TicketRow],
        total_cents: i64,
        currency: &str,
    ) -> Result<Rendered, RenderError> {
        #[derive(Serialize)]
        struct Data<'a> {
            #[serde(flatten)]
            common: Common<'a>,
            tickets: Vec<TicketView>,
            total: String,
        }
        let mut images = Vec::with_capacity(tickets.len());
        let mut views = Vec::with_capacity(tickets.len());
        for (n, ticket) in tickets.iter().enumerate() {
            let content_id = format!("ticket-{}@floodgate", n + 1);
            images.push(InlineImage {
                content_id: content_id.clone(),
                png: qr::png(&ticket.code)?,
            });
            views.push(TicketView {
                seat: seat_label(&ticket.section, &ticket.row_label, ticket.number),
                tier: ticket.tier.clone(),
                price: money(i64::from(ticket.price_cents), currency),
                code: ticket.code.clone(),
                content_id,
            });
        }
        let data = Data {
            common: self.common(context, booking),
            tickets: views,
            total: money(total_cents, currency),
        };
        let subject = format!("Your tickets for {}", context.event_title);
        let mut rendered = self.render(Kind::BookingConfirmed, subject, &data)?;
        rendered.images = images;
        Ok(rendered)
    }

    /// The cancellation, with the refund to come.
    pub fn booking_cancelled(
        &self,
        context: &BookingContext,
        booking: BookingId,
        seats: &[SeatRow],
        refund_cents: i64,
        currency: &str,
    ) -> Result<Rendered, RenderError> {
        #[derive(Serialize)]
        struct Data<'a> {
            #[serde(flatten)]
            common: Common<'a>,
            seats: Vec<SeatView>,
            refund: String,
        }
        let data = Data {
            common: self.common(context, booking),
            seats: seat_views(seats, currency),
            refund: money(refund_cents, currency),
        };
        let subject = format!("Booking cancelled: {}", context.event_title);
        self.render(Kind::BookingCancelled, subject, &data)
    }

    /// The refund, after a cancellation or for a payment that came too late (`reason`
    /// `confirm_rejected`).
    pub fn refund_succeeded(
        &self,
        context: &BookingContext,
        booking: BookingId,
        amount_cents: i64,
        currency: &str,
        reason: &str,
    ) -> Result<Rendered, RenderError> {
        #[derive(Serialize)]
        struct Data<'a> {
            #[serde(flatten)]
            common: Common<'a>,
            amount: String,
            late_payment: bool,
        }
        let amount = money(amount_cents, currency);
        let subject = format!("Refund of {amount}: {}", context.event_title);
        let data = Data {
            common: self.common(context, booking),
            amount,
            late_payment: reason == "confirm_rejected",
        };
        self.render(Kind::RefundSucceeded, subject, &data)
    }

    /// An unpaid hold lapsed.
    pub fn hold_expired(
        &self,
        context: &BookingContext,
        booking: BookingId,
        seats: &[SeatRow],
        currency: &str,
    ) -> Result<Rendered, RenderError> {
        #[derive(Serialize)]
        struct Data<'a> {
            #[serde(flatten)]
            common: Common<'a>,
            seats: Vec<SeatView>,
        }
        let data = Data {
            common: self.common(context, booking),
            seats: seat_views(seats, currency),
        };
        let subject = format!("Your hold expired: {}", context.event_title);
        self.render(Kind::HoldExpired, subject, &data)
    }

    /// Seats held for a waitlisted fan, to pay before the offer lapses.
    pub fn waitlist_offered(
        &self,
        context: &BookingContext,
        booking: BookingId,
        seats: &[SeatRow],
        total_cents: i64,
        currency: &str,
    ) -> Result<Rendered, RenderError> {
        #[derive(Serialize)]
        struct Data<'a> {
            #[serde(flatten)]
            common: Common<'a>,
            seats: Vec<SeatView>,
            total: String,
            expires: String,
        }
        let data = Data {
            common: self.common(context, booking),
            seats: seat_views(seats, currency),
            total: money(total_cents, currency),
            expires: format!("{} ({})", context.expires_local, context.timezone),
        };
        let subject = format!("Seats for {} are waiting for you", context.event_title);
        self.render(Kind::WaitlistOffered, subject, &data)
    }
}

fn seat_views(seats: &[SeatRow], currency: &str) -> Vec<SeatView> {
    seats
        .iter()
        .map(|seat| SeatView {
            label: seat_label(&seat.section, &seat.row_label, seat.number),
            price: money(i64::from(seat.price_cents), currency),
        })
        .collect()
}

/// `Floor, row R1, seat 3`.
pub fn seat_label(section: &str, row: &str, number: i32) -> String {
    format!("{section}, row {row}, seat {number}")
}

/// `EUR 50.00` from minor units (every currency the platform sells in has two decimals).
pub fn money(cents: i64, currency: &str) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    format!("{currency} {sign}{}.{:02}", cents / 100, cents % 100)
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ids::{EventId, ShowId, TicketId};

    fn context(name: &str) -> BookingContext {
        BookingContext {
            email: "fan@example.test".into(),
            name: name.into(),
            show_id: ShowId::new(),
            event_id: EventId::new(),
            event_title: "Gig <live>".into(),
            venue_name: "Hall".into(),
            city: "Oslo".into(),
            starts_local: "Saturday 21 November 2026, 20:00".into(),
            timezone: "Europe/Oslo".into(),
            currency: "EUR".into(),
            expires_local: "20:15 on Friday 20 November".into(),
            webhook_url: None,
            webhook_secret: None,
        }
    }

    #[test]
    fn money_reads_as_currency_and_two_decimals() {
        assert_eq!(money(5000, "EUR"), "EUR 50.00");
        assert_eq!(money(1205, "USD"), "USD 12.05");
        assert_eq!(money(-7, "EUR"), "EUR -0.07");
    }

    #[test]
    fn a_confirmation_lists_every_seat_with_its_code_and_inline_qr_image() {
        let renderer = Renderer::new("http://tickets.test/");
        let tickets: Vec<TicketRow> = (1..=2)
            .map(|n| TicketRow {
                ticket_id: TicketId::new(),
                code: format!("CODE{n}"),
                section: "Floor".into(),
                row_label: "R1".into(),
                number: n,
                tier: "A".into(),
                price_cents: 5000,
            })
            .collect();
        let booking = BookingId::new();
        let mail = renderer
            .booking_confirmed(&context("Ada <script>"), booking, &tickets, 10_000, "EUR")
            .unwrap();
        assert_eq!(mail.subject, "Your tickets for Gig <live>");
        for text in [&mail.text, &mail.html] {
            assert!(text.contains("Floor, row R1, seat 1") && text.contains("Floor, row R1, seat 2"));
            assert!(text.contains("CODE1") && text.contains("CODE2"));
            assert!(text.contains("EUR 100.00"));
        }
        assert!(mail.text.contains(&format!("http://tickets.test/bookings/{booking}")));
        // minijinja escapes `/` in HTML too; browsers read it back.
        assert!(
            mail.html
                .contains(&format!("http:&#x2f;&#x2f;tickets.test&#x2f;bookings&#x2f;{booking}"))
        );
        assert!(mail.text.contains("Hello Ada <script>,"));
        assert!(mail.html.contains("Ada &lt;script&gt;"), "HTML is escaped");
        assert_eq!(mail.images.len(), 2);
        assert!(mail.html.contains("cid:ticket-1@floodgate") && mail.html.contains("cid:ticket-2@floodgate"));
        assert!(mail.images[0].png.starts_with(b"\x89PNG"));
    }

    #[test]
    fn every_other_kind_renders_with_its_facts() {
        let renderer = Renderer::new("http://tickets.test");
        let booking = BookingId::new();
        let seats = vec![SeatRow {
            section: "Balcony".into(),
            row_label: "C".into(),
            number: 12,
            tier: "B".into(),
            price_cents: 3000,
        }];
        let context = context("Ada");
        let cancelled = renderer
            .booking_cancelled(&context, booking, &seats, 3000, "EUR")
            .unwrap();
        assert!(cancelled.text.contains("Balcony, row C, seat 12") && cancelled.text.contains("EUR 30.00"));
        let refund = renderer
            .refund_succeeded(&context, booking, 3000, "EUR", "confirm_rejected")
            .unwrap();
        assert!(refund.text.contains("arrived after your seats were") && refund.subject.contains("EUR 30.00"));
        let expired = renderer.hold_expired(&context, booking, &seats, "EUR").unwrap();
        assert!(expired.html.contains("Balcony, row C, seat 12") && expired.text.contains("not charged"));
        let offer = renderer
            .waitlist_offered(&context, booking, &seats, 3000, "EUR")
            .unwrap();
        assert!(
            offer
                .text
                .contains("Pay before 20:15 on Friday 20 November (Europe/Oslo)\n")
        );
        for mail in [cancelled, refund, expired, offer] {
            assert!(mail.images.is_empty());
            assert!(mail.text.lines().all(|line| line.len() <= 78), "{}", mail.text);
        }
    }
}
