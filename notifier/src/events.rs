//! The facts the notifier consumes, and the notifications each one calls for.
//!
//! Every fact sends the fan an e-mail; the booking facts (`booking.confirmed`,
//! `booking.cancelled`) also go to the organizer's webhook when the event has one. Each
//! notification is identified by the fact's message id, its kind and its channel: that is its
//! dedupe key, so a redelivered or re-published fact sends nothing twice.

use std::fmt;

use common::{
    contracts::{
        BookingCancelled, BookingConfirmed, DecodeError, Envelope, HoldExpired, Message, RefundSucceeded,
        WaitlistOffered, decode,
    },
    ids::{BookingId, MessageId, ShowId, UserId},
};
use serde::Deserialize;

/// What a notification is about: one per consumed fact type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `booking.confirmed`: the tickets.
    BookingConfirmed,
    /// `booking.cancelled`: the cancellation and the refund to come.
    BookingCancelled,
    /// `refund.succeeded`: the money is back.
    RefundSucceeded,
    /// `hold.expired`: the seats were released unpaid.
    HoldExpired,
    /// `waitlist.offered`: seats are waiting for a waitlisted fan.
    WaitlistOffered,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 5] = [
        Kind::BookingConfirmed,
        Kind::BookingCancelled,
        Kind::RefundSucceeded,
        Kind::HoldExpired,
        Kind::WaitlistOffered,
    ];

    /// The stable name stored in `notification.kind` and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::BookingConfirmed => "booking_confirmed",
            Self::BookingCancelled => "booking_cancelled",
            Self::RefundSucceeded => "refund_succeeded",
            Self::HoldExpired => "hold_expired",
            Self::WaitlistOffered => "waitlist_offered",
        }
    }

    /// The fact's envelope type (and routing key prefix on the `events` exchange).
    pub fn message_type(self) -> &'static str {
        match self {
            Self::BookingConfirmed => BookingConfirmed::TYPE,
            Self::BookingCancelled => BookingCancelled::TYPE,
            Self::RefundSucceeded => RefundSucceeded::TYPE,
            Self::HoldExpired => HoldExpired::TYPE,
            Self::WaitlistOffered => WaitlistOffered::TYPE,
        }
    }

    /// The channels this kind is delivered on.
    pub fn channels(self) -> &'static [Channel] {
        match self {
            Self::BookingConfirmed | Self::BookingCancelled => &[Channel::Email, Channel::Webhook],
            Self::RefundSucceeded | Self::HoldExpired | Self::WaitlistOffered => &[Channel::Email],
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a notification travels (`notification.channel`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// An e-mail to the fan.
    Email,
    /// A signed POST to the event organizer's URL.
    Webhook,
}

impl Channel {
    /// The stable name stored in `notification.channel` and used as a metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Email => "email",
            Self::Webhook => "webhook",
        }
    }

    /// Reads a channel name (from a retry message's header).
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "email" => Some(Self::Email),
            "webhook" => Some(Self::Webhook),
            _ => None,
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A fact the notifier consumes.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// See [`BookingConfirmed`].
    BookingConfirmed(Envelope<BookingConfirmed>),
    /// See [`BookingCancelled`].
    BookingCancelled(Envelope<BookingCancelled>),
    /// See [`RefundSucceeded`].
    RefundSucceeded(Envelope<RefundSucceeded>),
    /// See [`HoldExpired`].
    HoldExpired(Envelope<HoldExpired>),
    /// See [`WaitlistOffered`].
    WaitlistOffered(Envelope<WaitlistOffered>),
}

impl Event {
    /// Decodes a message of the notifier's queue by its envelope `type`.
    pub fn decode(body: &[u8]) -> Result<Self, DecodeError> {
        #[derive(Deserialize)]
        struct Type {
            #[serde(rename = "type")]
            kind: String,
        }
        let Type { kind } = serde_json::from_slice(body)?;
        match kind.as_str() {
            BookingConfirmed::TYPE => decode(body).map(Self::BookingConfirmed),
            BookingCancelled::TYPE => decode(body).map(Self::BookingCancelled),
            RefundSucceeded::TYPE => decode(body).map(Self::RefundSucceeded),
            HoldExpired::TYPE => decode(body).map(Self::HoldExpired),
            WaitlistOffered::TYPE => decode(body).map(Self::WaitlistOffered),
            _ => Err(DecodeError::UnknownType(kind)),
        }
    }

    /// Which kind of notification the fact makes.
    pub fn kind(&self) -> Kind {
        match self {
            Self::BookingConfirmed(_) => Kind::BookingConfirmed,
            Self::BookingCancelled(_) => Kind::BookingCancelled,
            Self::RefundSucceeded(_) => Kind::RefundSucceeded,
            Self::HoldExpired(_) => Kind::HoldExpired,
            Self::WaitlistOffered(_) => Kind::WaitlistOffered,
        }
    }

    /// The envelope's message id (the dedupe key's root).
    pub fn message_id(&self) -> MessageId {
        match self {
            Self::BookingConfirmed(envelope) => envelope.message_id,
            Self::BookingCancelled(envelope) => envelope.message_id,
            Self::RefundSucceeded(envelope) => envelope.message_id,
            Self::HoldExpired(envelope) => envelope.message_id,
            Self::WaitlistOffered(envelope) => envelope.message_id,
        }
    }

    /// The show, when the envelope names it.
    pub fn show_id(&self) -> Option<ShowId> {
        match self {
            Self::BookingConfirmed(envelope) => envelope.show_id,
            Self::BookingCancelled(envelope) => envelope.show_id,
            Self::RefundSucceeded(envelope) => envelope.show_id,
            Self::HoldExpired(envelope) => envelope.show_id,
            Self::WaitlistOffered(envelope) => envelope.show_id,
        }
    }

    /// The booking the fact is about.
    pub fn booking_id(&self) -> BookingId {
        match self {
            Self::BookingConfirmed(envelope) => envelope.payload.booking_id,
            Self::BookingCancelled(envelope) => envelope.payload.booking_id,
            Self::RefundSucceeded(envelope) => envelope.payload.booking_id,
            Self::HoldExpired(envelope) => envelope.payload.booking_id,
            Self::WaitlistOffered(envelope) => envelope.payload.booking_id,
        }
    }

    /// The fan the fact is about.
    pub fn user_id(&self) -> UserId {
        match self {
            Self::BookingConfirmed(envelope) => envelope.payload.user_id,
            Self::BookingCancelled(envelope) => envelope.payload.user_id,
            Self::RefundSucceeded(envelope) => envelope.payload.user_id,
            Self::HoldExpired(envelope) => envelope.payload.user_id,
            Self::WaitlistOffered(envelope) => envelope.payload.user_id,
        }
    }

    /// The key that makes the notification of this fact on `channel` happen once.
    pub fn dedupe_key(&self, channel: Channel) -> String {
        format!("{}:{}:{}", self.message_id(), self.kind(), channel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use common::ids::{PaymentId, SeatId, TicketId};

    fn confirmed() -> Envelope<BookingConfirmed> {
        Envelope::new(
            Some(ShowId::new()),
            BookingConfirmed {
                user_id: UserId::new(),
                booking_id: BookingId::new(),
                payment_id: PaymentId::new(),
                seats: vec![common::contracts::HeldSeat {
                    seat_id: SeatId::new(),
                    index: 0,
                    tier: "A".into(),
                    price_cents: 5000,
                }],
                ticket_ids: vec![TicketId::new()],
                total_cents: 5000,
                currency: "EUR".into(),
            },
        )
    }

    #[test]
    fn a_fact_is_decoded_by_its_type_and_keyed_by_message_kind_and_channel() {
        let envelope = confirmed();
        let body = serde_json::to_vec(&envelope).unwrap();
        let event = Event::decode(&body).unwrap();
        assert_eq!(event.kind(), Kind::BookingConfirmed);
        assert_eq!(event.booking_id(), envelope.payload.booking_id);
        assert_eq!(
            event.dedupe_key(Channel::Email),
            format!("{}:booking_confirmed:email", envelope.message_id)
        );
        assert_ne!(event.dedupe_key(Channel::Email), event.dedupe_key(Channel::Webhook));
    }

    #[test]
    fn facts_the_notifier_does_not_handle_are_refused() {
        let body = serde_json::json!({
            "message_id": MessageId::new(), "type": "show.inventory",
            "occurred_at": "2026-11-21T10:00:00Z", "payload": {}
        });
        let body = serde_json::to_vec(&body).unwrap();
        assert!(matches!(Event::decode(&body), Err(DecodeError::UnknownType(kind)) if kind == "show.inventory"));
        assert!(matches!(Event::decode(b"nope"), Err(DecodeError::Malformed(_))));
    }

    #[test]
    fn channel_names_round_trip() {
        for channel in [Channel::Email, Channel::Webhook] {
            assert_eq!(Channel::parse(channel.as_str()), Some(channel));
        }
        assert_eq!(Channel::parse("sms"), None);
    }
}
