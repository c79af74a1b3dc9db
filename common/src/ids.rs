//! Typed identifiers. Each wraps a UUID (v7 for new rows, so keys sort by creation time) and
//! cannot be confused with another kind of id at compile time.

use std::{fmt, str::FromStr};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

macro_rules! id_type {
    ($(#[$doc:meta] $name:ident),+ $(,)?) => {$(
        #[$doc]
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
            sqlx::Type, utoipa::ToSchema,
        )]
        #[serde(transparent)]
        #[sqlx(transparent)]
        #[schema(value_type = String, format = Uuid)]
        pub struct $name(pub Uuid);

        impl $name {
            /// A new, time-ordered id (UUID v7).
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            /// The UUID inside.
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl FromStr for $name {
            type Err = uuid::Error;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                Uuid::parse_str(s).map(Self)
            }
        }

        impl From<Uuid> for $name {
            fn from(value: Uuid) -> Self {
                Self(value)
            }
        }
    )+};
}

id_type!(
    /// An account (`app_user`).
    UserId,
    /// A venue.
    VenueId,
    /// A section of a venue.
    SectionId,
    /// A seat of a venue's layout.
    SeatId,
    /// An event (a tour, a match, a play).
    EventId,
    /// A show: one performance of an event at a venue.
    ShowId,
    /// A booking (held, paid, cancelled...).
    BookingId,
    /// A payment attempt.
    PaymentId,
    /// A ticket.
    TicketId,
    /// A refund of a payment.
    RefundId,
    /// A promo code.
    PromoCodeId,
    /// A fan's place on a sold-out show's waitlist.
    WaitlistEntryId,
    /// A command sent to a show's queue; also the hold request id.
    CommandId,
    /// An envelope's message id.
    MessageId,
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_through_text_and_json() {
        let id = ShowId::new();
        assert_eq!(id.to_string().parse::<ShowId>().unwrap(), id);
        let json = serde_json::to_string(&id).unwrap();
        assert_eq!(json, format!("\"{id}\""));
        assert_eq!(serde_json::from_str::<ShowId>(&json).unwrap(), id);
    }

    #[test]
    fn new_ids_sort_by_creation_time() {
        let first = BookingId::new();
        let second = BookingId::new();
        assert!(first < second);
    }

    #[test]
    fn garbage_is_not_an_id() {
        assert!("1; DROP TABLE show".parse::<ShowId>().is_err());
    }
}
