//! RabbitMQ: the connection, the topology of DESIGN.md "Message topology", and a publisher that
//! waits for the broker's confirm before reporting success (a 202 means the broker has it).
//!
//! Every exchange and queue name starts with a configurable prefix (`MQ_PREFIX`, empty in
//! production) so parallel tests share one broker without seeing each other's messages.

use std::{
    sync::{Arc, RwLock},
    time::Duration,
};

use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    options::{
        BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
        QueueDeclareOptions, QueueDeleteOptions,
    },
    types::{AMQPValue, FieldTable},
};

use tokio_util::sync::CancellationToken;

use crate::{
    contracts::{BookingCancelled, BookingConfirmRejected, Envelope, Message},
    ids::ShowId,
};

/// How often a show-queue message may be redelivered before it is dead-lettered: enough to ride
/// out a few worker crashes, few enough that a poison message cannot block a show for long.
pub const SHOW_QUEUE_DELIVERY_LIMIT: i64 = 10;

/// The most notifier retry queues a test topology is cleaned of (one per retry attempt).
const NOTIFIER_RETRY_QUEUES_AT_MOST: u32 = 16;

/// Routing key of the `payments` queue's binding on the `payments` exchange.
pub const PAYMENTS_ROUTING_KEY: &str = "payments";

/// Opens a connection named after the process (visible in RabbitMQ's management UI).
pub async fn connect(url: &str, process: &str) -> Result<Connection, lapin::Error> {
    Connection::connect(
        url,
        ConnectionProperties::default().with_connection_name(process.into()),
    )
    .await
}

/// Names and declarations of Floodgate's exchanges and queues.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
}

impl Topology {
    /// The topology with every name prefixed by `prefix`.
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    /// The prefix of every name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn name(&self, base: &str) -> String {
        format!("{}{base}", self.prefix)
    }

    /// Direct exchange of show commands; routing key = show id.
    pub fn shows_exchange(&self) -> String {
        self.name("shows")
    }

    /// Direct exchange of payment commands and gateway events.
    pub fn payments_exchange(&self) -> String {
        self.name("payments")
    }

    /// Topic exchange of facts, routing key `<entity>.<fact>.<show_id>`.
    pub fn events_exchange(&self) -> String {
        self.name("events")
    }

    /// Fanout exchange receiving every dead-lettered message.
    pub fn dead_letter_exchange(&self) -> String {
        self.name("dead-letter")
    }

    /// The queue behind the `dead-letter` exchange.
    pub fn dead_letter_queue(&self) -> String {
        self.name("dead-letter")
    }

    /// The competing-consumer queue of the payment-workers.
    pub fn payments_queue(&self) -> String {
        self.name("payments")
    }

    /// The single-writer queue of one show.
    pub fn show_queue(&self, show: ShowId) -> String {
        self.name(&format!("show.{show}"))
    }

    /// The notifier's durable queue of the facts it turns into e-mails and webhooks
    /// (competing consumers).
    pub fn notifier_queue(&self) -> String {
        self.name("notifier")
    }

    /// The notifier's retry queue for a delivery's `attempt`-th failure: its messages wait out
    /// their TTL there, then dead-letter back to [`Topology::notifier_queue`]. One queue per
    /// attempt, so a short wait never sits behind a long one.
    pub fn notifier_retry_queue(&self, attempt: u32) -> String {
        self.name(&format!("notifier.retry.{attempt}"))
    }

    /// Declares the exchanges and the shared queues. Idempotent: every process may call it at
    /// start-up, in any order.
    pub async fn declare(&self, channel: &Channel) -> Result<(), lapin::Error> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let exchanges = [
            (self.shows_exchange(), ExchangeKind::Direct),
            (self.payments_exchange(), ExchangeKind::Direct),
            (self.events_exchange(), ExchangeKind::Topic),
            (self.dead_letter_exchange(), ExchangeKind::Fanout),
        ];
        for (name, kind) in exchanges {
            channel
                .exchange_declare(name.into(), kind, durable, FieldTable::default())
                .await?;
        }

        channel
            .queue_declare(
                self.dead_letter_queue().into(),
                QueueDeclareOptions::durable(),
                quorum_arguments(),
            )
            .await?;
        channel
            .queue_bind(
                self.dead_letter_queue().into(),
                self.dead_letter_exchange().into(),
                "".into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;

        let mut payments = quorum_arguments();
        self.dead_letter_to_exchange(&mut payments);
        channel
            .queue_declare(self.payments_queue().into(), QueueDeclareOptions::durable(), payments)
            .await?;
        channel
            .queue_bind(
                self.payments_queue().into(),
                self.payments_exchange().into(),
                PAYMENTS_ROUTING_KEY.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        // The facts that call for a refund reach the payment-workers on the same queue.
        for fact in [BookingConfirmRejected::TYPE, BookingCancelled::TYPE] {
            channel
                .queue_bind(
                    self.payments_queue().into(),
                    self.events_exchange().into(),
                    format!("{fact}.*").into(),
                    QueueBindOptions::default(),
                    FieldTable::default(),
                )
                .await?;
        }
        Ok(())
    }

    /// Declares the queue of `show` (durable quorum queue, single active consumer, explicit
    /// delivery limit, dead-lettering) and binds it to `shows` with the show id as routing key.
    /// Idempotent, so show creation and every booking-worker start may both call it.
    pub async fn declare_show_queue(&self, channel: &Channel, show: ShowId) -> Result<(), lapin::Error> {
        let queue = self.show_queue(show);
        let mut arguments = quorum_arguments();
        // One consumer at a time is what makes the booking-worker the show's single writer;
        // the others stand by and RabbitMQ fails over to one of them.
        arguments.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        arguments.insert(
            "x-delivery-limit".into(),
            AMQPValue::LongLongInt(SHOW_QUEUE_DELIVERY_LIMIT),
        );
        self.dead_letter_to_exchange(&mut arguments);
        channel
            .queue_declare(queue.clone().into(), QueueDeclareOptions::durable(), arguments)
            .await?;
        channel
            .queue_bind(
                queue.into(),
                self.shows_exchange().into(),
                show.to_string().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
    }

    /// Deletes everything this topology declared, including the queues of `shows`. Meant for
    /// tests cleaning up their prefix; production topology is never deleted.
    pub async fn delete(&self, channel: &Channel, shows: &[ShowId]) -> Result<(), lapin::Error> {
        // The notifier's queues too, when a test ran a notifier under this prefix (deleting a
        // queue that was never declared is not an error).
        let queues = shows
            .iter()
            .map(|show| self.show_queue(*show))
            .chain([self.payments_queue(), self.dead_letter_queue(), self.notifier_queue()])
            .chain((1..=NOTIFIER_RETRY_QUEUES_AT_MOST).map(|attempt| self.notifier_retry_queue(attempt)));
        for queue in queues {
            channel
                .queue_delete(queue.into(), QueueDeleteOptions::default())
                .await?;
        }
        for exchange in [
            self.shows_exchange(),
            self.payments_exchange(),
            self.events_exchange(),
            self.dead_letter_exchange(),
        ] {
            channel
                .exchange_delete(exchange.into(), ExchangeDeleteOptions::default())
                .await?;
        }
        Ok(())
    }

    fn dead_letter_to_exchange(&self, arguments: &mut FieldTable) {
        arguments.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(self.dead_letter_exchange().into()),
        );
    }
}

fn quorum_arguments() -> FieldTable {
    let mut arguments = FieldTable::default();
    // Quorum queues replicate across the cluster and survive a node loss (DESIGN.md).
    arguments.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    arguments
}

/// Why a publish did not succeed. Every variant but [`PublishError::Encode`] is transient: the
/// caller answers 503 (HTTP) or retries (workers), and never reports success.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// No connection to the broker right now (it is being re-established).
    #[error(transparent)]
    Unavailable(#[from] Unavailable),
    /// The channel or connection failed.
    #[error("broker error: {0}")]
    Broker(#[from] lapin::Error),
    /// The broker refused to take responsibility for the message.
    #[error("broker did not accept the message (nack)")]
    Nacked,
    /// No queue is bound for the routing key: the message would have been lost.
    #[error("no queue bound for {exchange}/{routing_key}")]
    Unroutable {
        /// Exchange published to.
        exchange: String,
        /// Routing key used.
        routing_key: String,
    },
    /// No confirm arrived in time.
    #[error("no publisher confirm within {0:?}")]
    Timeout(Duration),
    /// The message could not be serialised.
    #[error("cannot encode message: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Publishes persistent messages on a channel in confirm mode and waits for each confirm.
/// Cheap to clone; clones share the channel, and concurrent publishes are confirmed
/// independently.
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
    confirm_timeout: Duration,
}

impl Publisher {
    /// Opens a channel on `connection` and puts it in confirm mode.
    pub async fn new(connection: &Connection, confirm_timeout: Duration) -> Result<Self, lapin::Error> {
        let channel = connection.create_channel().await?;
        channel.confirm_select(ConfirmSelectOptions::default()).await?;
        Ok(Self {
            channel,
            confirm_timeout,
        })
    }

    /// The underlying channel (for declarations on the same connection).
    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Serialises `envelope` and publishes it; returns once the broker has confirmed it.
    pub async fn publish<T: Message>(
        &self,
        exchange: &str,
        routing_key: &str,
        envelope: &Envelope<T>,
    ) -> Result<(), PublishError> {
        let body = serde_json::to_vec(envelope)?;
        self.publish_raw(
            exchange,
            routing_key,
            &envelope.message_id.to_string(),
            &envelope.kind,
            &body,
        )
        .await
    }

    /// Publishes an already encoded command: it must reach a queue, or the publish fails.
    pub async fn publish_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        kind: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        self.send(exchange, routing_key, message_id, kind, body, true).await
    }

    /// Publishes an already encoded event (the outbox relay stores them encoded) on the topic
    /// exchange. A fact with no subscriber yet is not an error: whoever cares binds a queue.
    pub async fn broadcast_raw(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        kind: &str,
        body: &[u8],
    ) -> Result<(), PublishError> {
        self.send(exchange, routing_key, message_id, kind, body, false).await
    }

    async fn send(
        &self,
        exchange: &str,
        routing_key: &str,
        message_id: &str,
        kind: &str,
        body: &[u8],
        mandatory: bool,
    ) -> Result<(), PublishError> {
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2) // persistent: survives a broker restart
            .with_message_id(message_id.into())
            .with_type(kind.into());
        // `mandatory` makes an unroutable message come back instead of vanishing.
        let options = BasicPublishOptions {
            mandatory,
            ..Default::default()
        };
        let confirm = self
            .channel
            .basic_publish(exchange.into(), routing_key.into(), options, body, properties)
            .await?;
        let confirmation = tokio::time::timeout(self.confirm_timeout, confirm)
            .await
            .map_err(|_| PublishError::Timeout(self.confirm_timeout))??;
        match confirmation {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(_returned)) => Err(PublishError::Unroutable {
                exchange: exchange.to_owned(),
                routing_key: routing_key.to_owned(),
            }),
            Confirmation::Nack(_) | Confirmation::NotRequested => Err(PublishError::Nacked),
        }
    }
}

/// A live connection with its confirm-mode publisher.
struct Live {
    connection: Connection,
    publisher: Publisher,
}

impl Live {
    fn is_up(&self) -> bool {
        self.connection.status().connected() && self.publisher.channel().status().connected()
    }
}

/// A process's link to RabbitMQ that survives broker restarts.
///
/// A broker that stops closes its connections with `CONNECTION_FORCED`, which a client does
/// not recover from by itself. The supervisor ([`Broker::spawn_supervisor`]) therefore watches
/// the connection and, when it is gone (or never came up: the process may start before the
/// broker), reconnects with backoff and declares the topology again. Meanwhile
/// [`Broker::publisher`] says the broker is unavailable, so callers answer 503 or retry and
/// never report a message as sent.
pub struct Broker {
    url: String,
    process: String,
    topology: Topology,
    confirm_timeout: Duration,
    live: RwLock<Option<Arc<Live>>>,
}

/// The broker is not connected right now.
#[derive(Debug, thiserror::Error)]
#[error("the message broker is unavailable")]
pub struct Unavailable;

/// Backoff between reconnection attempts: from 250 ms, doubling, at most 5 s.
const RECONNECT_MIN: Duration = Duration::from_millis(250);
const RECONNECT_MAX: Duration = Duration::from_secs(5);

impl Broker {
    /// Tries to connect once; a failure is logged and left to the supervisor, so a process can
    /// start (not ready) before the broker does.
    pub async fn start(url: &str, process: &str, topology: Topology, confirm_timeout: Duration) -> Arc<Self> {
        let broker = Arc::new(Self {
            url: url.to_owned(),
            process: process.to_owned(),
            topology,
            confirm_timeout,
            live: RwLock::new(None),
        });
        if let Err(err) = broker.reconnect().await {
            tracing::warn!(error = %err, "RabbitMQ unavailable at start-up; will keep trying");
        }
        broker
    }

    /// Exchange and queue names.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    fn current(&self) -> Option<Arc<Live>> {
        self.live
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Whether the connection and its confirm channel are up (readiness). A channel closes on
    /// its own after a channel-level error (a declaration the broker refuses, say), so both
    /// are checked.
    pub fn is_connected(&self) -> bool {
        self.current().is_some_and(|live| live.is_up())
    }

    /// The publisher of the current connection.
    pub fn publisher(&self) -> Result<Publisher, Unavailable> {
        match self.current() {
            Some(live) if live.is_up() => Ok(live.publisher.clone()),
            _ => Err(Unavailable),
        }
    }

    /// Opens a new channel on the current connection (a consumer's own channel: its prefetch
    /// and its unacked deliveries are its own, and closing it requeues only those).
    pub async fn channel(&self) -> Result<Channel, PublishError> {
        match self.current() {
            Some(live) if live.is_up() => Ok(live.connection.create_channel().await?),
            _ => Err(PublishError::Unavailable(Unavailable)),
        }
    }

    /// Connects, opens the confirm channel and declares the shared topology, then makes the new
    /// connection current (closing what is left of the old one).
    async fn reconnect(&self) -> Result<(), lapin::Error> {
        self.close().await;
        let connection = connect(&self.url, &self.process).await?;
        let publisher = Publisher::new(&connection, self.confirm_timeout).await?;
        self.topology.declare(publisher.channel()).await?;
        *self.live.write().unwrap_or_else(|poisoned| poisoned.into_inner()) =
            Some(Arc::new(Live { connection, publisher }));
        tracing::info!("connected to RabbitMQ");
        Ok(())
    }

    /// Watches the connection until `shutdown`, reconnecting whenever it is down. It does not
    /// close the connection: the process does, once its work has drained.
    pub fn spawn_supervisor(self: &Arc<Self>, shutdown: CancellationToken) -> tokio::task::JoinHandle<()> {
        let broker = Arc::clone(self);
        tokio::spawn(async move {
            let mut delay = RECONNECT_MIN;
            loop {
                let wait = if broker.is_connected() { RECONNECT_MIN } else { delay };
                tokio::select! {
                    () = tokio::time::sleep(wait) => {}
                    () = shutdown.cancelled() => break,
                }
                if broker.is_connected() {
                    delay = RECONNECT_MIN;
                    continue;
                }
                match broker.reconnect().await {
                    Ok(()) => delay = RECONNECT_MIN,
                    Err(err) => {
                        tracing::warn!(error = %err, retry_in = ?delay, "RabbitMQ reconnection failed");
                        delay = (delay * 2).min(RECONNECT_MAX);
                    }
                }
            }
        })
    }

    /// Closes the current connection: at the end of a drain (the supervisor stops at shutdown
    /// but leaves the connection to requests still in flight), or in a test simulating a failure.
    pub async fn close(&self) {
        if let Some(live) = self.current()
            && live.connection.status().connected()
            && let Err(err) = live.connection.close(200, "closing".into()).await
        {
            tracing::debug!(error = %err, "broker connection already closed");
        }
    }
}
