//! The booking-worker against real PostgreSQL, Redis and RabbitMQ: a fresh database, a queue
//! prefix and a key prefix per test. Commands are published the way ingress publishes them
//! (with confirms, on the `shows` exchange); the worker runs in-process.

mod support;

use std::{collections::HashSet, time::Duration};

use common::{
    contracts::{Envelope, HoldSeats, ReleaseHold, SeatSelection},
    ids::{CommandId, SeatId, UserId},
};
use support::{Harness, seats, seed_users};

#[tokio::test]
async fn five_hundred_racing_holds_for_ten_seats_are_won_by_the_first_in_queue_order() {
    let mut harness = Harness::new().await;
    let show = harness.show(2, 5, 4).await;
    let hot = &show.seats[..10];
    let users = seed_users(harness.db(), 500).await;
    harness.start_worker().await;

    // 500 requests of one to three of the ten seats, published back to back on one channel,
    // so the queue order is the publish order.
    let requests: Vec<(UserId, Vec<SeatId>)> = users
        .iter()
        .enumerate()
        .map(|(i, user)| {
            let start = (i * 7) % 10;
            let take = 1 + i % 3;
            let wanted: Vec<SeatId> = (0..take).map(|k| hot[(start + k * 3) % 10]).collect();
            let mut unique = wanted.clone();
            unique.dedup();
            (*user, unique)
        })
        .collect();
    let publishes = requests.iter().map(|(user, wanted)| {
        let command = CommandId::new();
        let envelope = Envelope::new(
            Some(show.show),
            HoldSeats {
                command_id: command,
                user_id: *user,
                selection: seats(wanted),
                promo_code: None,
            },
        );
        (command, envelope)
    });
    let mut commands = Vec::new();
    let mut confirms = Vec::new();
    for (command, envelope) in publishes {
        commands.push(command);
        let publisher = harness.publisher.clone();
        let exchange = harness.topology.shows_exchange();
        let key = show.show.to_string();
        // Sent in order; confirms awaited together.
        let body = serde_json::to_vec(&envelope).unwrap();
        let send = publisher.channel().basic_publish(
            exchange.into(),
            key.into(),
            lapin::options::BasicPublishOptions::default(),
            &body,
            lapin::BasicProperties::default().with_delivery_mode(2),
        );
        confirms.push(send.await.unwrap());
    }
    for confirm in confirms {
        assert!(confirm.await.unwrap().is_ack());
    }

    let results = harness.results(&commands).await;
    // Replay the requests in queue order against a model of the ten seats.
    let mut taken: HashSet<SeatId> = HashSet::new();
    let mut winners = 0;
    for (command, (_, wanted)) in commands.iter().zip(&requests) {
        let (booking, code) = &results[command];
        if wanted.iter().all(|seat| !taken.contains(seat)) {
            assert!(
                booking.is_some(),
                "request {command} should have won its seats, got {code:?}"
            );
            taken.extend(wanted.iter().copied());
            winners += 1;
        } else {
            assert_eq!(booking, &None);
            assert_eq!(
                code.as_deref(),
                Some("seats_unavailable"),
                "only seats_unavailable, nothing else"
            );
        }
    }
    assert!(winners >= 4, "at least a few distinct winners ({winners})");
    harness.assert_no_double_booking(show.show).await;
    harness.assert_snapshot_matches_database(show.show).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_command_delivered_twice_has_one_effect() {
    let mut harness = Harness::new().await;
    let show = harness.show(2, 10, 4).await;
    let users = seed_users(harness.db(), 1).await;
    harness.start_worker().await;
    let command = HoldSeats {
        command_id: CommandId::new(),
        user_id: users[0],
        selection: SeatSelection::BestAvailable {
            quantity: 2,
            tier: None,
            adjacent: true,
        },
        promo_code: None,
    };
    harness.publish(show.show, command.clone()).await;
    let first = harness.results(&[command.command_id]).await;
    harness.publish(show.show, command.clone()).await;
    // A later command proves the duplicate was consumed before it.
    let marker = harness
        .hold(
            show.show,
            users[0],
            SeatSelection::BestAvailable {
                quantity: 1,
                tier: None,
                adjacent: false,
            },
        )
        .await;
    harness.results(&[marker]).await;
    let bookings: i64 = sqlx::query_scalar("SELECT count(*) FROM booking WHERE command_id = $1")
        .bind(command.command_id)
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(bookings, 1);
    let held: i64 = sqlx::query_scalar("SELECT count(*) FROM show_seat WHERE show_id = $1 AND status = 'held'")
        .bind(show.show)
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(held, 3, "two seats from the command (once) and one from the marker");
    assert_eq!(harness.results(&[command.command_id]).await, first);
    harness.assert_snapshot_matches_database(show.show).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_lapsed_hold_puts_its_seats_back_on_sale_in_the_snapshot_too() {
    let mut harness = Harness::new().await;
    let show = harness.show(1, 6, 4).await;
    let users = seed_users(harness.db(), 1).await;
    harness.start_worker().await;
    let command = harness.hold(show.show, users[0], seats(&show.seats[..3])).await;
    let results = harness.results(&[command]).await;
    let booking = results[&command].0.expect("held");
    harness.assert_snapshot_matches_database(show.show).await;

    harness.advance(121);
    let mut status = String::new();
    for _ in 0..100 {
        status = sqlx::query_scalar("SELECT status FROM booking WHERE booking_id = $1")
            .bind(booking)
            .fetch_one(harness.db())
            .await
            .unwrap();
        if status == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, "expired");
    let available: i64 =
        sqlx::query_scalar("SELECT count(*) FROM show_seat WHERE show_id = $1 AND status = 'available'")
            .bind(show.show)
            .fetch_one(harness.db())
            .await
            .unwrap();
    assert_eq!(available, 6);
    harness.assert_snapshot_matches_database(show.show).await;
    harness.assert_no_double_booking(show.show).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_fan_releases_a_hold_and_the_seats_can_be_held_again() {
    let mut harness = Harness::new().await;
    let show = harness.show(1, 4, 4).await;
    let users = seed_users(harness.db(), 2).await;
    harness.start_worker().await;
    let first = harness.hold(show.show, users[0], seats(&show.seats[..2])).await;
    let booking = harness.results(&[first]).await[&first].0.expect("held");
    harness
        .publish(
            show.show,
            ReleaseHold {
                command_id: CommandId::new(),
                user_id: users[0],
                booking_id: booking,
            },
        )
        .await;
    let second = harness.hold(show.show, users[1], seats(&show.seats[..2])).await;
    let results = harness.results(&[second]).await;
    assert!(results[&second].0.is_some(), "the released seats were held again");
    let status: String = sqlx::query_scalar("SELECT status FROM booking WHERE booking_id = $1")
        .bind(booking)
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(status, "released");
    harness.assert_no_double_booking(show.show).await;
    harness.assert_snapshot_matches_database(show.show).await;
    harness.stop().await;
}

#[tokio::test]
async fn an_undecodable_message_is_dead_lettered_and_the_show_goes_on() {
    let mut harness = Harness::new().await;
    let show = harness.show(1, 4, 4).await;
    let users = seed_users(harness.db(), 1).await;
    harness.start_worker().await;
    harness
        .publisher
        .publish_raw(
            &harness.topology.shows_exchange(),
            &show.show.to_string(),
            "poison",
            "HoldSeats",
            b"{not json",
        )
        .await
        .unwrap();
    let command = harness.hold(show.show, users[0], seats(&show.seats[..1])).await;
    assert!(harness.results(&[command]).await[&command].0.is_some());
    // The poison message sits in the dead-letter queue.
    assert_eq!(harness.dead_lettered().await, 1);
    harness.stop().await;
}

#[tokio::test]
async fn a_command_the_database_refuses_is_dead_lettered_and_its_batch_neighbours_still_apply() {
    let mut harness = Harness::new().await;
    let show = harness.show(1, 6, 4).await;
    let users = seed_users(harness.db(), 2).await;
    // Both commands are queued before the worker starts, so they arrive in one batch.
    let good_before = harness.hold(show.show, users[0], seats(&show.seats[..1])).await;
    // A fan the database does not know (deleted, say): its booking breaks a foreign key.
    let poison = harness.hold(show.show, UserId::new(), seats(&show.seats[1..2])).await;
    let good_after = harness.hold(show.show, users[1], seats(&show.seats[2..3])).await;
    harness.start_worker().await;
    let results = harness.results(&[good_before, good_after]).await;
    assert!(results.values().all(|(booking, _)| booking.is_some()), "{results:?}");
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM hold_request WHERE hold_request_id = $1")
        .bind(poison)
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(stored, 0, "the refused command left nothing behind");
    let mut dead = 0;
    for _ in 0..50 {
        dead = harness.dead_lettered().await;
        if dead == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(dead, 1, "the refused command is in the dead-letter queue");
    harness.assert_no_double_booking(show.show).await;
    harness.assert_snapshot_matches_database(show.show).await;
    harness.stop().await;
}
