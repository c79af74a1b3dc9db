//! The RabbitMQ helpers against the real broker (`AMQP_URL`, default the local one). Each test
//! uses its own name prefix and deletes what it declared.

use std::time::Duration;

use common::{
    contracts::{Envelope, Message, decode},
    ids::ShowId,
    mq::{self, PublishError, Publisher, Topology},
};
use futures::StreamExt as _;
use lapin::{
    Channel,
    message::Delivery,
    options::{BasicAckOptions, BasicConsumeOptions, BasicRejectOptions},
    types::FieldTable,
};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Probe {
    text: String,
}

impl Message for Probe {
    const TYPE: &'static str = "test.probe";
}

fn amqp_url() -> String {
    common::config::env_string("AMQP_URL", common::config::defaults::AMQP_URL)
}

/// The next delivery on `queue`, consumed (quorum queues with a single active consumer refuse
/// `basic.get`), or None after five seconds.
async fn next_delivery(channel: &Channel, queue: &str) -> Option<Delivery> {
    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(5), consumer.next())
        .await
        .ok()??
        .ok();
    channel
        .basic_cancel(consumer.tag(), lapin::options::BasicCancelOptions::default())
        .await
        .unwrap();
    delivery
}

fn unique_topology() -> Topology {
    Topology::new(format!("test-{}.", uuid::Uuid::new_v4().simple()))
}

#[tokio::test]
async fn a_confirmed_command_lands_on_its_show_queue_and_declaring_twice_is_harmless() {
    let connection = mq::connect(&amqp_url(), "common-test").await.unwrap();
    let publisher = Publisher::new(&connection, Duration::from_secs(5)).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = unique_topology();
    let show = ShowId::new();

    topology.declare(&channel).await.unwrap();
    topology.declare(&channel).await.unwrap();
    topology.declare_show_queue(&channel, show).await.unwrap();
    topology.declare_show_queue(&channel, show).await.unwrap();

    let sent = Envelope::new(Some(show), Probe { text: "hello".into() });
    publisher
        .publish(&topology.shows_exchange(), &show.to_string(), &sent)
        .await
        .unwrap();

    let delivery = next_delivery(&channel, &topology.show_queue(show))
        .await
        .expect("the confirmed message is on the queue");
    let received = decode::<Probe>(&delivery.data).unwrap();
    delivery.ack(BasicAckOptions::default()).await.unwrap();
    assert_eq!(received, sent);

    topology.delete(&channel, &[show]).await.unwrap();
}

#[tokio::test]
async fn a_message_no_queue_would_take_is_reported_unroutable_not_lost_silently() {
    let connection = mq::connect(&amqp_url(), "common-test").await.unwrap();
    let publisher = Publisher::new(&connection, Duration::from_secs(5)).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = unique_topology();
    topology.declare(&channel).await.unwrap();

    // The show's queue was never declared, so nothing is bound for its routing key.
    let show = ShowId::new();
    let outcome = publisher
        .publish(
            &topology.shows_exchange(),
            &show.to_string(),
            &Envelope::new(Some(show), Probe { text: "lost?".into() }),
        )
        .await;
    assert!(matches!(outcome, Err(PublishError::Unroutable { .. })), "{outcome:?}");

    topology.delete(&channel, &[]).await.unwrap();
}

#[tokio::test]
async fn a_dead_lettered_message_reaches_the_dead_letter_queue() {
    let connection = mq::connect(&amqp_url(), "common-test").await.unwrap();
    let publisher = Publisher::new(&connection, Duration::from_secs(5)).await.unwrap();
    let channel = connection.create_channel().await.unwrap();
    let topology = unique_topology();
    let show = ShowId::new();
    topology.declare(&channel).await.unwrap();
    topology.declare_show_queue(&channel, show).await.unwrap();

    let sent = Envelope::new(Some(show), Probe { text: "poison".into() });
    publisher
        .publish(&topology.shows_exchange(), &show.to_string(), &sent)
        .await
        .unwrap();
    let delivery = next_delivery(&channel, &topology.show_queue(show)).await.unwrap();
    // A permanent failure is rejected without requeue, which dead-letters it.
    delivery.reject(BasicRejectOptions { requeue: false }).await.unwrap();

    let dead = next_delivery(&channel, &topology.dead_letter_queue())
        .await
        .expect("the rejected message was dead-lettered");
    assert_eq!(decode::<Probe>(&dead.data).unwrap(), sent);
    dead.ack(BasicAckOptions::default()).await.unwrap();

    topology.delete(&channel, &[show]).await.unwrap();
}

#[tokio::test]
async fn the_broker_handle_reconnects_and_redeclares_its_topology_after_losing_the_connection() {
    let topology = unique_topology();
    let broker = mq::Broker::start(&amqp_url(), "common-test", topology.clone(), Duration::from_secs(5)).await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let supervisor = broker.spawn_supervisor(shutdown.clone());
    assert!(broker.is_connected());

    // The connection goes away (as when the broker restarts): publishing is refused, not lost.
    broker.close().await;
    assert!(matches!(broker.publisher(), Err(mq::Unavailable)));

    let mut waited = Duration::ZERO;
    while !broker.is_connected() {
        assert!(waited < Duration::from_secs(15), "no reconnection");
        tokio::time::sleep(Duration::from_millis(100)).await;
        waited += Duration::from_millis(100);
    }
    // The new connection declared the exchanges again and publishes with confirms.
    let publisher = broker.publisher().unwrap();
    let show = ShowId::new();
    topology.declare_show_queue(publisher.channel(), show).await.unwrap();
    let sent = Envelope::new(
        Some(show),
        Probe {
            text: "after reconnect".into(),
        },
    );
    publisher
        .publish(&topology.shows_exchange(), &show.to_string(), &sent)
        .await
        .unwrap();
    let delivery = next_delivery(publisher.channel(), &topology.show_queue(show))
        .await
        .unwrap();
    assert_eq!(decode::<Probe>(&delivery.data).unwrap(), sent);
    delivery.ack(BasicAckOptions::default()).await.unwrap();

    topology.delete(publisher.channel(), &[show]).await.unwrap();
    shutdown.cancel();
    supervisor.await.unwrap();
    broker.close().await;
}

#[tokio::test]
async fn a_process_starts_without_a_broker_and_reports_it_unavailable() {
    let broker = mq::Broker::start(
        "amqp://guest:guest@127.0.0.1:1/%2f",
        "common-test",
        unique_topology(),
        Duration::from_secs(5),
    )
    .await;
    assert!(!broker.is_connected());
    assert!(matches!(broker.publisher(), Err(mq::Unavailable)));
}
