//! Message contracts: the envelope every RabbitMQ message travels in, and the commands and
//! events themselves. They live here and nowhere else (DESIGN.md "Message topology").
//!
//! - Commands on a show's queue (`show.<show_id>`, consumed by its single writer):
//!   [`HoldSeats`], [`ReleaseHold`], [`StartPayment`], [`ConfirmBooking`], [`PaymentFailed`],
//!   [`CancelBooking`], [`RecordRefund`], [`JoinWaitlist`]; [`ShowCommand`] decodes any of them.
//! - Messages on the `payments` queue (competing payment-workers): [`ChargePayment`] and
//!   [`GatewayEvent`] from the `payments` exchange, plus the [`BookingConfirmRejected`] and
//!   [`BookingCancelled`] facts it binds from `events`; [`PaymentsMessage`] decodes any of them.
//! - Facts on the `events` exchange, routing key `<type>.<show_id>` ([`event_routing_key`]):
//!   [`HoldPlaced`], [`HoldRejected`], [`HoldReleased`], [`HoldExpired`], [`ShowInventory`],
//!   [`ShowSoldOut`], [`BookingPaymentPending`], [`BookingPaymentFailed`], [`BookingConfirmed`],
//!   [`BookingConfirmRejected`], [`BookingCancelled`], [`WaitlistOffered`], [`ChargeSucceeded`]
//!   (`payment.succeeded`), [`ChargeFailed`] (`payment.failed`), [`RefundSucceeded`].

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use time::OffsetDateTime;

use crate::ids::{
    BookingId, CommandId, MessageId, PaymentId, RefundId, SeatId, ShowId, TicketId, UserId, WaitlistEntryId,
};

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

/// Command: charge the fan's card for a held booking (the fan asked to pay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StartPayment {
    /// Idempotency of the command; derived from the fan's `Idempotency-Key`.
    pub command_id: CommandId,
    /// The fan (only the booking's owner may pay for it).
    pub user_id: UserId,
    /// The booking to pay.
    pub booking_id: BookingId,
    /// The payment row the writer creates; the id the fan polls.
    pub payment_id: PaymentId,
    /// The card token the fan's browser got from the gateway.
    pub card_token: String,
}

impl Message for StartPayment {
    const TYPE: &'static str = "StartPayment";
}

/// Command (from the payment-worker): the charge succeeded, confirm the booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfirmBooking {
    /// Idempotency of the confirmation.
    pub command_id: CommandId,
    /// The fan who paid (named in `booking.confirm_rejected` when the booking is gone).
    pub user_id: UserId,
    /// The booking paid for.
    pub booking_id: BookingId,
    /// The succeeded payment.
    pub payment_id: PaymentId,
}

impl Message for ConfirmBooking {
    const TYPE: &'static str = "ConfirmBooking";
}

/// Command (from the payment-worker): the charge failed; the booking goes back to `held` while
/// its hold lasts, so the fan can pay with another card.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PaymentFailed {
    /// Idempotency of the command.
    pub command_id: CommandId,
    /// The booking.
    pub booking_id: BookingId,
    /// The failed payment.
    pub payment_id: PaymentId,
    /// The gateway's decline code, e.g. `card_declined`.
    pub code: String,
}

impl Message for PaymentFailed {
    const TYPE: &'static str = "PaymentFailed";
}

/// Command: the fan cancels a confirmed booking (refunded by the show's policy).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelBooking {
    /// Idempotency of the cancellation.
    pub command_id: CommandId,
    /// The fan (only the booking's owner may cancel it).
    pub user_id: UserId,
    /// The booking.
    pub booking_id: BookingId,
}

impl Message for CancelBooking {
    const TYPE: &'static str = "CancelBooking";
}

/// Command (from the payment-worker): a cancelled booking's charge was refunded in full.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordRefund {
    /// Idempotency of the command.
    pub command_id: CommandId,
    /// The cancelled booking.
    pub booking_id: BookingId,
    /// The refunded payment.
    pub payment_id: PaymentId,
    /// The refund.
    pub refund_id: RefundId,
}

impl Message for RecordRefund {
    const TYPE: &'static str = "RecordRefund";
}

/// Command: the fan joins a sold-out show's waitlist.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinWaitlist {
    /// Idempotency of the command.
    pub command_id: CommandId,
    /// The fan.
    pub user_id: UserId,
    /// The entry the writer creates.
    pub waitlist_entry_id: WaitlistEntryId,
    /// How many seats the fan wants (best available, one tier).
    pub quantity: u32,
}

impl Message for JoinWaitlist {
    const TYPE: &'static str = "JoinWaitlist";
}

/// Any command of a show's queue.
#[derive(Debug, Clone, PartialEq)]
pub enum ShowCommand {
    /// See [`HoldSeats`].
    HoldSeats(Envelope<HoldSeats>),
    /// See [`ReleaseHold`].
    ReleaseHold(Envelope<ReleaseHold>),
    /// See [`StartPayment`].
    StartPayment(Envelope<StartPayment>),
    /// See [`ConfirmBooking`].
    ConfirmBooking(Envelope<ConfirmBooking>),
    /// See [`PaymentFailed`].
    PaymentFailed(Envelope<PaymentFailed>),
    /// See [`CancelBooking`].
    CancelBooking(Envelope<CancelBooking>),
    /// See [`RecordRefund`].
    RecordRefund(Envelope<RecordRefund>),
    /// See [`JoinWaitlist`].
    JoinWaitlist(Envelope<JoinWaitlist>),
}

impl ShowCommand {
    /// Decodes a show-queue message by its envelope `type`.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        match envelope_type(body)?.as_str() {
            HoldSeats::TYPE => decode(body).map(Self::HoldSeats),
            ReleaseHold::TYPE => decode(body).map(Self::ReleaseHold),
            StartPayment::TYPE => decode(body).map(Self::StartPayment),
            ConfirmBooking::TYPE => decode(body).map(Self::ConfirmBooking),
            PaymentFailed::TYPE => decode(body).map(Self::PaymentFailed),
            CancelBooking::TYPE => decode(body).map(Self::CancelBooking),
            RecordRefund::TYPE => decode(body).map(Self::RecordRefund),
            JoinWaitlist::TYPE => decode(body).map(Self::JoinWaitlist),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }

    /// The command's id.
    pub fn command_id(&self) -> CommandId {
        match self {
            Self::HoldSeats(envelope) => envelope.payload.command_id,
            Self::ReleaseHold(envelope) => envelope.payload.command_id,
            Self::StartPayment(envelope) => envelope.payload.command_id,
            Self::ConfirmBooking(envelope) => envelope.payload.command_id,
            Self::PaymentFailed(envelope) => envelope.payload.command_id,
            Self::CancelBooking(envelope) => envelope.payload.command_id,
            Self::RecordRefund(envelope) => envelope.payload.command_id,
            Self::JoinWaitlist(envelope) => envelope.payload.command_id,
        }
    }

    /// When the command was issued.
    pub fn occurred_at(&self) -> OffsetDateTime {
        match self {
            Self::HoldSeats(envelope) => envelope.occurred_at,
            Self::ReleaseHold(envelope) => envelope.occurred_at,
            Self::StartPayment(envelope) => envelope.occurred_at,
            Self::ConfirmBooking(envelope) => envelope.occurred_at,
            Self::PaymentFailed(envelope) => envelope.occurred_at,
            Self::CancelBooking(envelope) => envelope.occurred_at,
            Self::RecordRefund(envelope) => envelope.occurred_at,
            Self::JoinWaitlist(envelope) => envelope.occurred_at,
        }
    }
}

/// The envelope `type` of a message body, read without decoding the payload.
fn envelope_type(body: &[u8]) -> Result<String, DecodeError> {
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: String,
    }
    let Kind { kind } = serde_json::from_slice(body)?;
    Ok(kind)
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

/// Fact: the fan asked to pay; the booking waits for the charge, its hold extended by the
/// payment grace period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingPaymentPending {
    /// The fan.
    pub user_id: UserId,
    /// The booking.
    pub booking_id: BookingId,
    /// The payment being charged.
    pub payment_id: PaymentId,
    /// The extended end of the hold.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Message for BookingPaymentPending {
    const TYPE: &'static str = "booking.payment_pending";
}

/// Fact: a charge failed and the booking is `held` again (or `expired`, when its time ran out).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingPaymentFailed {
    /// The fan.
    pub user_id: UserId,
    /// The booking.
    pub booking_id: BookingId,
    /// The failed payment.
    pub payment_id: PaymentId,
    /// The gateway's decline code.
    pub code: String,
    /// The booking's status now: `held` or `expired`.
    pub status: String,
}

impl Message for BookingPaymentFailed {
    const TYPE: &'static str = "booking.payment_failed";
}

/// Fact: a booking is paid and its seats sold; its tickets are issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingConfirmed {
    /// The fan.
    pub user_id: UserId,
    /// The booking.
    pub booking_id: BookingId,
    /// The payment that paid for it.
    pub payment_id: PaymentId,
    /// The seats sold.
    pub seats: Vec<HeldSeat>,
    /// One ticket per seat (codes are read from PostgreSQL, never sent on the bus).
    pub ticket_ids: Vec<TicketId>,
    /// What the fan paid.
    pub total_cents: i64,
    /// ISO 4217.
    pub currency: String,
}

impl Message for BookingConfirmed {
    const TYPE: &'static str = "booking.confirmed";
}

/// Fact: a charge succeeded for a booking that can no longer be confirmed (its hold expired or
/// was released); the payment-worker refunds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingConfirmRejected {
    /// The fan.
    pub user_id: UserId,
    /// The booking.
    pub booking_id: BookingId,
    /// The payment to refund in full.
    pub payment_id: PaymentId,
    /// The booking's status, which is why.
    pub booking_status: String,
}

impl Message for BookingConfirmRejected {
    const TYPE: &'static str = "booking.confirm_rejected";
}

/// Fact: a confirmed booking was cancelled; its seats are on sale again, its tickets void, and
/// the payment-worker refunds `refund_cents` of its payment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BookingCancelled {
    /// The cancel command.
    pub command_id: CommandId,
    /// The fan.
    pub user_id: UserId,
    /// The booking.
    pub booking_id: BookingId,
    /// The payment to refund.
    pub payment_id: PaymentId,
    /// How much to refund.
    pub refund_cents: i64,
    /// ISO 4217.
    pub currency: String,
}

impl Message for BookingCancelled {
    const TYPE: &'static str = "booking.cancelled";
}

/// Fact: seats came back on a sold-out show and a waitlisted fan was given a hold on them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WaitlistOffered {
    /// The fan.
    pub user_id: UserId,
    /// The waitlist entry.
    pub waitlist_entry_id: WaitlistEntryId,
    /// The booking holding the offered seats (pay it like any hold).
    pub booking_id: BookingId,
    /// The seats.
    pub seats: Vec<HeldSeat>,
    /// What the fan pays.
    pub total_cents: i64,
    /// ISO 4217.
    pub currency: String,
    /// When the offer lapses unless paid.
    #[serde(with = "time::serde::rfc3339")]
    pub expires_at: OffsetDateTime,
}

impl Message for WaitlistOffered {
    const TYPE: &'static str = "waitlist.offered";
}

/// Command to the payment-worker: charge a card for a booking.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargePayment {
    /// The payment row (status `processing`).
    pub payment_id: PaymentId,
    /// The booking it pays.
    pub booking_id: BookingId,
    /// The booking's show (whose queue gets the outcome).
    pub show_id: ShowId,
    /// The fan.
    pub user_id: UserId,
    /// How much.
    pub amount_cents: i64,
    /// ISO 4217.
    pub currency: String,
    /// The card token.
    pub card_token: String,
    /// The gateway `Idempotency-Key` every attempt of this charge reuses.
    pub idempotency_key: String,
}

impl Message for ChargePayment {
    const TYPE: &'static str = "ChargePayment";
}

/// A gateway webhook event that ingress verified, deduplicated and queued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GatewayEvent {
    /// The gateway's event id.
    pub event_id: String,
    /// The gateway's event type, e.g. `payment_intent.succeeded`.
    pub event_type: String,
    /// The event's object (a payment intent or a refund), as the gateway sent it.
    pub object: serde_json::Value,
}

impl Message for GatewayEvent {
    const TYPE: &'static str = "GatewayEvent";
}

/// Fact: a card was charged.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeSucceeded {
    /// The fan.
    pub user_id: UserId,
    /// The booking.
    pub booking_id: BookingId,
    /// The payment.
    pub payment_id: PaymentId,
    /// How much.
    pub amount_cents: i64,
    /// ISO 4217.
    pub currency: String,
}

impl Message for ChargeSucceeded {
    const TYPE: &'static str = "payment.succeeded";
}

/// Fact: a charge was declined or failed for good.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeFailed {
    /// The fan.
    pub user_id: UserId,
    /// The booking.
    pub booking_id: BookingId,
    /// The payment.
    pub payment_id: PaymentId,
    /// The gateway's decline code.
    pub code: String,
}

impl Message for ChargeFailed {
    const TYPE: &'static str = "payment.failed";
}

/// Fact: money went back to the fan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefundSucceeded {
    /// The fan.
    pub user_id: UserId,
    /// The booking.
    pub booking_id: BookingId,
    /// The refunded payment.
    pub payment_id: PaymentId,
    /// The refund.
    pub refund_id: RefundId,
    /// How much.
    pub amount_cents: i64,
    /// ISO 4217.
    pub currency: String,
    /// `cancelled` or `confirm_rejected`.
    pub reason: String,
}

impl Message for RefundSucceeded {
    const TYPE: &'static str = "refund.succeeded";
}

/// Anything the `payments` queue carries.
#[derive(Debug, Clone, PartialEq)]
pub enum PaymentsMessage {
    /// See [`ChargePayment`].
    ChargePayment(Envelope<ChargePayment>),
    /// See [`GatewayEvent`].
    GatewayEvent(Envelope<GatewayEvent>),
    /// A refund to make: see [`BookingConfirmRejected`].
    BookingConfirmRejected(Envelope<BookingConfirmRejected>),
    /// A refund to make: see [`BookingCancelled`].
    BookingCancelled(Envelope<BookingCancelled>),
}

impl PaymentsMessage {
    /// Decodes a `payments` queue message by its envelope `type`.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        match envelope_type(body)?.as_str() {
            ChargePayment::TYPE => decode(body).map(Self::ChargePayment),
            GatewayEvent::TYPE => decode(body).map(Self::GatewayEvent),
            BookingConfirmRejected::TYPE => decode(body).map(Self::BookingConfirmRejected),
            BookingCancelled::TYPE => decode(body).map(Self::BookingCancelled),
            other => Err(DecodeError::UnknownType(other.to_owned())),
        }
    }
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
