//! One notification, from the fact to its outcome.
//!
//! 1. Load what the message needs (the fan, the show, the tickets) and render it. Nothing is
//!    written yet, so a failure here leaves no trace but the retry.
//! 2. Claim it in the `notification` ledger under its dedupe key (fact message id + kind +
//!    channel), leasing it to this replica. A notification that was sent or given up is not
//!    claimed again: a redelivered or re-published fact sends nothing twice. One that another
//!    replica is sending right now is left to it (`Busy`: looked at again after a retry delay).
//! 3. Send it, then record the outcome.
//!
//! What remains is the gap every at-least-once sender has: a crash after the SMTP server (or the
//! webhook endpoint) accepted the message and before the ledger says `sent` sends it again once
//! the lease expires. E-mails carry a `Message-ID` derived from the ledger row and webhooks a
//! stable `Floodgate-Event-Id`, so receivers can recognise that copy.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::{
    events::{Channel, Event},
    mail::Mailer,
    render::{Rendered, Renderer},
    store::{self, BookingContext, Claim, NewNotification},
    webhook::WebhookClient,
};

/// Why a delivery attempt failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// May pass later (4xx SMTP reply, connection refused, timeout, database unavailable):
    /// retried with backoff, up to the attempt limit.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never pass (5xx SMTP reply, a bad address, the booking does not exist, a template
    /// bug): dead-lettered at once.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl Failure {
    /// `transient` or `permanent` (metric label).
    pub fn label(&self) -> &'static str {
        match self {
            Self::Transient(_) => "transient",
            Self::Permanent(_) => "permanent",
        }
    }
}

/// What became of one delivery attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered now.
    Sent,
    /// Delivered or given up before: nothing was sent.
    Duplicate,
    /// Nothing to deliver on this channel (the event has no webhook).
    NotWanted,
    /// Another replica holds the lease: look again later.
    Busy,
    /// The attempt failed; `notification` is the ledger row when it was claimed.
    Failed {
        /// The ledger row to mark `failed` or `dead`.
        notification: Option<Uuid>,
        /// Why.
        failure: Failure,
    },
}

/// A message ready to go out on its channel.
enum Prepared {
    Email {
        context: Box<BookingContext>,
        mail: Rendered,
    },
    Webhook {
        url: String,
        secret: String,
        body: Vec<u8>,
    },
}

impl Prepared {
    fn recipient(&self) -> &str {
        match self {
            Self::Email { context, .. } => &context.email,
            Self::Webhook { url, .. } => url,
        }
    }
}

/// Delivers notifications.
pub struct Deliverer {
    db: PgPool,
    renderer: Renderer,
    mailer: Mailer,
    webhooks: WebhookClient,
    lease: Duration,
}

impl Deliverer {
    /// A deliverer on the notifier's database and senders.
    pub fn new(db: PgPool, renderer: Renderer, mailer: Mailer, webhooks: WebhookClient, lease: Duration) -> Self {
        Self {
            db,
            renderer,
            mailer,
            webhooks,
            lease,
        }
    }

    /// The ledger's database.
    pub fn db(&self) -> &PgPool {
        &self.db
    }

    /// One attempt at delivering `event`'s notification on `channel`.
    #[tracing::instrument(skip(self, event, channel), fields(message_id = %event.message_id(), kind = %event.kind(), %channel, booking_id = %event.booking_id()))]
    pub async fn deliver(&self, event: &Event, channel: Channel) -> Outcome {
        let prepared = match self.prepare(event, channel).await {
            Ok(Some(prepared)) => prepared,
            Ok(None) => return Outcome::NotWanted,
            Err(failure) => {
                return Outcome::Failed {
                    notification: None,
                    failure,
                };
            }
        };
        let dedupe_key = event.dedupe_key(channel);
        let subject = match &prepared {
            Prepared::Email { mail, .. } => mail.subject.as_str(),
            Prepared::Webhook { .. } => event.kind().message_type(),
        };
        let new = NewNotification {
            dedupe_key: &dedupe_key,
            kind: event.kind().as_str(),
            channel: channel.as_str(),
            recipient: prepared.recipient(),
            booking_id: event.booking_id(),
            subject,
        };
        let notification = match store::claim(&self.db, &new, self.lease).await {
            Ok(Claim::Claimed { notification_id, .. }) => notification_id,
            Ok(Claim::NotClaimed) => return self.unclaimed(&dedupe_key).await,
            Err(err) => return transient_db(err),
        };
        let sent = match &prepared {
            Prepared::Email { context, mail } => {
                self.mailer
                    .send(notification, &context.name, &context.email, mail)
                    .await
            }
            Prepared::Webhook { url, secret, body } => {
                self.webhooks
                    .post(url, secret, &event.message_id().to_string(), body)
                    .await
            }
        };
        match sent {
            Ok(()) => {
                self.record_sent(notification).await;
                Outcome::Sent
            }
            Err(failure) => Outcome::Failed {
                notification: Some(notification),
                failure,
            },
        }
    }

    /// Records a failed attempt: `dead` when given up, `failed` when a retry follows.
    pub async fn record_failure(&self, notification: Uuid, dead: bool, failure: &Failure) {
        if let Err(err) = store::mark_failed(&self.db, notification, dead, &failure.to_string()).await {
            // The lease runs out by itself; the retry (or the dead letter) is already on its way.
            tracing::warn!(%notification, error = %err, "cannot record the failed attempt");
        }
    }

    async fn record_sent(&self, notification: Uuid) {
        let mut delay = Duration::from_millis(100);
        for _ in 0..3 {
            match store::mark_sent(&self.db, notification).await {
                Ok(()) => return,
                Err(err) => {
                    tracing::warn!(%notification, error = %err, "cannot record the delivery; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
            }
        }
        // Sent all the same: the message is acknowledged and nothing resends it. The row stays
        // `pending` under its lease, visible to whoever audits the ledger.
        tracing::error!(%notification, "delivered, but the ledger could not record it");
    }

    async fn unclaimed(&self, dedupe_key: &str) -> Outcome {
        match store::status(&self.db, dedupe_key).await {
            Ok(Some(status)) if status == "sent" || status == "dead" => Outcome::Duplicate,
            Ok(_) => Outcome::Busy,
            Err(err) => transient_db(err),
        }
    }

    async fn prepare(&self, event: &Event, channel: Channel) -> Result<Option<Prepared>, Failure> {
        let context = store::booking_context(&self.db, event.booking_id())
            .await
            .map_err(|err| Failure::Transient(format!("database: {err}")))?
            // Facts are published after their booking committed: a missing booking will not
            // appear later.
            .ok_or_else(|| Failure::Permanent(format!("booking {} does not exist", event.booking_id())))?;
        match channel {
            Channel::Email => {
                let mail = self.render(event, &context).await?;
                Ok(Some(Prepared::Email {
                    context: Box::new(context),
                    mail,
                }))
            }
            Channel::Webhook => {
                let (Some(url), Some(secret)) = (context.webhook_url.clone(), context.webhook_secret.clone()) else {
                    return Ok(None);
                };
                let body = webhook_body(event, &context)?;
                Ok(Some(Prepared::Webhook { url, secret, body }))
            }
        }
    }

    async fn render(&self, event: &Event, context: &BookingContext) -> Result<Rendered, Failure> {
        let db_error = |err: sqlx::Error| Failure::Transient(format!("database: {err}"));
        let booking = event.booking_id();
        let rendered = match event {
            Event::BookingConfirmed(envelope) => {
                let fact = &envelope.payload;
                let tickets = store::tickets(&self.db, &fact.ticket_ids).await.map_err(db_error)?;
                if tickets.len() != fact.ticket_ids.len() {
                    return Err(Failure::Permanent(format!(
                        "{} of the booking's {} tickets exist",
                        tickets.len(),
                        fact.ticket_ids.len()
                    )));
                }
                self.renderer
                    .booking_confirmed(context, booking, &tickets, fact.total_cents, &fact.currency)
            }
            Event::BookingCancelled(envelope) => {
                let seats = store::booking_seats(&self.db, booking).await.map_err(db_error)?;
                let fact = &envelope.payload;
                self.renderer
                    .booking_cancelled(context, booking, &seats, fact.refund_cents, &fact.currency)
            }
            Event::RefundSucceeded(envelope) => {
                let fact = &envelope.payload;
                self.renderer
                    .refund_succeeded(context, booking, fact.amount_cents, &fact.currency, &fact.reason)
            }
            Event::HoldExpired(_) => {
                let seats = store::booking_seats(&self.db, booking).await.map_err(db_error)?;
                self.renderer.hold_expired(context, booking, &seats, &context.currency)
            }
            Event::WaitlistOffered(envelope) => {
                let seats = store::booking_seats(&self.db, booking).await.map_err(db_error)?;
                let fact = &envelope.payload;
                self.renderer
                    .waitlist_offered(context, booking, &seats, fact.total_cents, &fact.currency)
            }
        };
        rendered.map_err(|err| Failure::Permanent(err.to_string()))
    }
}

/// The webhook's JSON: the fact as published (its payload carries no personal data beyond ids),
/// with the event and show it belongs to.
fn webhook_body(event: &Event, context: &BookingContext) -> Result<Vec<u8>, Failure> {
    let (occurred_at, data) = match event {
        Event::BookingConfirmed(envelope) => (envelope.occurred_at, serde_json::to_value(&envelope.payload)),
        Event::BookingCancelled(envelope) => (envelope.occurred_at, serde_json::to_value(&envelope.payload)),
        Event::RefundSucceeded(envelope) => (envelope.occurred_at, serde_json::to_value(&envelope.payload)),
        Event::HoldExpired(envelope) => (envelope.occurred_at, serde_json::to_value(&envelope.payload)),
        Event::WaitlistOffered(envelope) => (envelope.occurred_at, serde_json::to_value(&envelope.payload)),
    };
    let data = data.map_err(|err| Failure::Permanent(format!("cannot encode the webhook: {err}")))?;
    let occurred_at = occurred_at
        .format(&time::format_description::well_known::Rfc3339)
        .map_err(|err| Failure::Permanent(format!("cannot encode the webhook: {err}")))?;
    let body = serde_json::json!({
        "id": event.message_id(),
        "type": event.kind().message_type(),
        "occurred_at": occurred_at,
        "event_id": context.event_id,
        "show_id": context.show_id,
        "data": data,
    });
    serde_json::to_vec(&body).map_err(|err| Failure::Permanent(format!("cannot encode the webhook: {err}")))
}

fn transient_db(err: sqlx::Error) -> Outcome {
    Outcome::Failed {
        notification: None,
        failure: Failure::Transient(format!("database: {err}")),
    }
}
