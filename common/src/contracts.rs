//! Message contracts: the envelope every RabbitMQ message travels in. The commands and events
//! themselves are added here, and only here, as the processes that exchange them arrive.

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use time::OffsetDateTime;

use crate::ids::{MessageId, ShowId};

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
}
