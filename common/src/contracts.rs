//! Message contracts: the envelope every RabbitMQ message travels in, and the commands and
//! events themselves. They live here and nowhere else (DESIGN.md "Message topology").
//!
//! - Commands on a show's queue (`show.<show_id>`, consumed by its single writer):
//!   [`HoldSeats`], [`ReleaseHold`]; [`ShowCommand`] decodes any of them.
//! - Facts on the `events` exchange, routing key `<type>.<show_id>` ([`event_routing_key`]):
//!   [`HoldPlaced`], [`HoldRejected`], [`HoldReleased`], [`HoldExpired`], [`ShowInventory`],
//!   [`ShowSoldOut`].

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use time::OffsetDateTime;

use crate::ids::{BookingId, CommandId, MessageId, SeatId, ShowId, UserId};

/// A message body that can travel in an [`Envelope`].
pub trait Message: Serialize + DeserializeOwned {
    /// The envelope's `type`, e.g. `HoldSeats` or `hold.placed`.
    const TYPE: &'static str;
}

/// Trace context carried across processes (W3C `traceparent`), so a hold request's logs can be
/// followed from ingress into the booking-worker.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceContext {
    /// W3C `traceparent` header value, when the sender had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The HTTP request id that caused the message, when there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
}

/// The JSON envelope of every message (DESIGN.md "Message topology").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<T> {
    /// Unique per message; consumers deduplicate on it.
    pub message_id: MessageId,
    /// The payload's type name ([`Message::TYPE`]).
    #[serde(rename = "type")]
    pub kind: String,
    /// When the fact happened or the command was issued.
    #[serde(with = "time::serde::rfc3339")]
    pub occurred_at: OffsetDateTime,
    /// The show the message is about, when it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_id: Option<ShowId>,
    /// Trace context.
    #[serde(default)]
    pub trace: TraceContext,
    /// The message itself.
    pub payload: T,
}

impl<T: Message> Envelope<T> {
    /// Wraps `payload` in a new envelope stamped now.
    pub fn new(show_id: Option<ShowId>, payload: T) -> Self {
        Self {
            message_id: MessageId::new(),
            kind: T::TYPE.to_owned(),
            occurred_at: OffsetDateTime::now_utc(),
            show_id,
            trace: TraceContext::default(),
            payload,
        }
    }

    /// Sets the trace context.
    pub fn with_trace(mut self, trace: TraceContext) -> Self {
        self.trace = trace;
        self
    }
}

/// Why a message body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// Not JSON, or not the expected shape.
    #[error("malformed message: {0}")]
    Malformed(#[from] serde_json::Error),
    /// A well-formed envelope of another type.
    #[error("expected message type {expected}, got {actual}")]
    WrongType {
        /// The type the caller asked for.
        expected: &'static str,
        /// The type found in the envelope.
        actual: String,
    },
    /// A well-formed envelope of a type this consumer does not know.
    #[error("unknown message type {0}")]
    UnknownType(String),
}

/// Decodes a message body into an envelope of `T`, checking its declared type.
pub fn decode<T: Message>(body: &[u8]) -> Result<Envelope<T>, DecodeError> {
    let envelope: Envelope<T> = serde_json::from_slice(body)?;
    if envelope.kind != T::TYPE {
        return Err(DecodeError::WrongType {
            expected: T::TYPE,
            actual: envelope.kind,
        });
    }
    Ok(envelope)
}

/// The routing key of an event about `show` on the `events` topic exchange:
/// `<entity>.<fact>.<show_id>`, e.g. `hold.placed.0190...`.
pub fn event_routing_key<T: Message>(show: ShowId) -> String {
    format!("{}.{show}", T::TYPE)
}

/// Which seats a [`HoldSeats`] asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SeatSelection {
    /// These exact seats, all or nothing.
    Seats {
        /// The seats, each a seat of the show's venue.
        seat_ids: Vec<SeatId>,
    },
    /// The best `quantity` seats available (closest to the stage centre).
    BestAvailable {
        /// How many seats.
        quantity: u32,
        /// Only seats of this price tier; any single tier when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tier: Option<String>,
        /// Side by side in one row, or nothing.
        #[serde(default)]
        adjacent: bool,
    },
}

/// Command: hold seats for a fan (an admitted fan's hold request).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldSeats {
    /// Also the hold request id the fan polls; a redelivery carries the same id.
    pub command_id: CommandId,
    /// The fan.
    pub user_id: UserId,
    /// What to hold.
    pub selection: SeatSelection,
    /// A promo code to apply to the hold's total.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub promo_code: Option<String>,
}

impl Message for HoldSeats {
    const TYPE: &'static str = "HoldSeats";
}

/// Command: the fan lets go of a held booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseHold {
    /// Idempotency of the release itself.
    pub command_id: CommandId,
    /// The fan (only the booking's owner may release it).
    pub user_id: UserId,
    /// The booking to release.
    pub booking_id: BookingId,
}

impl Message for ReleaseHold {
    const TYPE: &'static str = "ReleaseHold";
}

/// Any command of a show's queue.
#[derive(Debug, Clone, PartialEq)]
pub enum ShowCommand {
    /// See [`HoldSeats`].
    HoldSeats(Envelope<HoldSeats>),
    /// See [`ReleaseHold`].
    ReleaseHold(Envelope<ReleaseHold>),
}

impl ShowCommand {
    /// Decodes a show-queue message by its envelope `type`.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Kind {
            #[serde(rename = "type")]
            kind: String,
        }
        let Kind { kind } = serde_json::from_slice(body)?;
        match kind.as_str() {
            HoldSeats::TYPE => decode(body).map(Self::HoldSeats),
            ReleaseHold::TYPE => decode(body).map(Self::ReleaseHold),
            _ => Err(DecodeError::UnknownType(kind)),
        }
    }

    /// The command's id.
    pub fn command_id(&self) -> CommandId {
        match self {
            Self::HoldSeats(envelope) => envelope.payload.command_id,
            Self::ReleaseHold(envelope) => envelope.payload.command_id,
        }
    }
}

/// One seat of a hold, as events and the API report it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldSeat {
    /// The seat.
    pub seat_id: SeatId,
    /// Its bit in the availability bitmap.
    pub index: u32,
    /// Its price tier.
    pub tier: String,
    /// What it costs in this show.
    pub price_cents: i64,
}

/// Fact: a hold request was granted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldPlaced {
    /// The hold request.
    pub command_id: CommandId,
    /// The fan.
    pub user_id: UserId,
    /// The booking that now holds the seats.
    pub booking_id: BookingId,
    /// The seats held.
    pub seats: Vec<HeldSeat>,
    /// Before any discount.
    pub subtotal_cents: i64,
    /// The promo code's discount.
    pub discount_cents: i64,
    /// What the fan pays.
    pub total_cents: i64,
    /// ISO 4217.
    pub currency: String,
    /// When the hold lapses unless paid.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Message for HoldPlaced {
    const TYPE: &'static str = "hold.placed";
}

/// Why a hold request was refused: the API's problem `code`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectionCode {
    /// A requested seat is taken, or not enough seats are left.
    SeatsUnavailable,
    /// The fan's live holds and bookings would exceed the show's per-user limit.
    LimitExceeded,
    /// A seat id is not a seat of this show, or is listed twice, or the tier is unknown.
    InvalidSeats,
    /// The promo code does not exist, expired or is used up.
    InvalidPromoCode,
}

impl RejectionCode {
    /// The stable code string.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::SeatsUnavailable => "seats_unavailable",
            Self::LimitExceeded => "limit_exceeded",
            Self::InvalidSeats => "invalid_seats",
            Self::InvalidPromoCode => "invalid_promo_code",
        }
    }
}

/// Fact: a hold request was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldRejected {
    /// The hold request.
    pub command_id: CommandId,
    /// The fan.
    pub user_id: UserId,
    /// Why.
    pub code: RejectionCode,
    /// For `seats_unavailable`: the requested seats that were taken.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unavailable_seat_ids: Vec<SeatId>,
}

impl Message for HoldRejected {
    const TYPE: &'static str = "hold.rejected";
}

/// Fact: the fan released a held booking; its seats are on sale again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldReleased {
    /// The release command.
    pub command_id: CommandId,
    /// The fan.
    pub user_id: UserId,
    /// The released booking.
    pub booking_id: BookingId,
}

impl Message for HoldReleased {
    const TYPE: &'static str = "hold.released";
}

/// Fact: a hold lapsed unpaid; its seats are on sale again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HoldExpired {
    /// The fan.
    pub user_id: UserId,
    /// The expired booking.
    pub booking_id: BookingId,
}

impl Message for HoldExpired {
    const TYPE: &'static str = "hold.expired";
}

/// Seat counts of a show, by status.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeatCounts {
    /// On sale.
    pub available: u32,
    /// In a live hold.
    pub held: u32,
    /// Paid.
    pub sold: u32,
    /// Not for sale (kills, production holds).
    pub blocked: u32,
}

/// Fact: a show's seat counts after a batch of its writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowInventory {
    /// The counts.
    pub counts: SeatCounts,
    /// The availability snapshot version they belong to.
    pub version: u64,
}

impl Message for ShowInventory {
    const TYPE: &'static str = "show.inventory";
}

/// Fact: nothing of the show is available any more (seats may come back when holds lapse).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowSoldOut {
    /// The snapshot version at which it sold out.
    pub version: u64,
}

impl Message for ShowSoldOut {
    const TYPE: &'static str = "show.sold_out";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Ping {
        n: u32,
    }

    impl Message for Ping {
        const TYPE: &'static str = "test.ping";
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Pong {
        n: u32,
    }

    impl Message for Pong {
        const TYPE: &'static str = "test.pong";
    }

    #[test]
    fn an_envelope_round_trips_with_its_type_and_show() {
        let show = ShowId::new();
        let sent = Envelope::new(Some(show), Ping { n: 7 });
        let body = serde_json::to_vec(&sent).unwrap();
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(json["type"], "test.ping");
        assert_eq!(json["show_id"], show.to_string());
        let received = decode::<Ping>(&body).unwrap();
        assert_eq!(received, sent);
    }

    #[test]
    fn decoding_as_another_type_is_refused() {
        let body = serde_json::to_vec(&Envelope::new(None, Ping { n: 1 })).unwrap();
        assert!(matches!(decode::<Pong>(&body), Err(DecodeError::WrongType { .. })));
        assert!(matches!(decode::<Ping>(b"{not json"), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn a_show_command_is_decoded_by_its_type() {
        let show = ShowId::new();
        let hold = HoldSeats {
            command_id: CommandId::new(),
            user_id: UserId::new(),
            selection: SeatSelection::BestAvailable {
                quantity: 2,
                tier: None,
                adjacent: true,
            },
            promo_code: None,
        };
        let body = serde_json::to_vec(&Envelope::new(Some(show), hold.clone())).unwrap();
        let ShowCommand::HoldSeats(decoded) = ShowCommand::decode(&body).unwrap() else {
            panic!("decoded as another command");
        };
        assert_eq!(decoded.payload, hold);
        let body = serde_json::to_vec(&Envelope::new(Some(show), Ping { n: 1 })).unwrap();
        assert!(matches!(ShowCommand::decode(&body), Err(DecodeError::UnknownType(kind)) if kind == "test.ping"));
        assert_eq!(event_routing_key::<HoldPlaced>(show), format!("hold.placed.{show}"));
    }
}
