//! The booking's life after the hold, through the real worker, PostgreSQL, Redis and RabbitMQ:
//! payment started, confirmed with tickets, failed and retried, confirmed too late (refunded),
//! cancelled and refunded, promo codes under a race, and the waitlist.

mod support;

use std::time::Duration;

use common::{
    contracts::{
        CancelBooking, ConfirmBooking, HoldSeats, JoinWaitlist, PaymentFailed, RecordRefund, ReleaseHold,
        SeatSelection, StartPayment,
    },
    ids::{BookingId, CommandId, PaymentId, RefundId, SeatId, ShowId, UserId, WaitlistEntryId},
    tickets::TicketSigner,
};
use support::{Harness, seats, seed_users};

/// Waits until every command has a `processed_command` row; returns their results in order.
async fn processed(harness: &Harness, commands: &[CommandId]) -> Vec<serde_json::Value> {
    for _ in 0..300 {
        let rows: Vec<(CommandId, serde_json::Value)> =
            sqlx::query_as("SELECT command_id, result FROM processed_command WHERE command_id = ANY($1)")
                .bind(commands)
                .fetch_all(harness.db())
                .await
                .unwrap();
        if rows.len() == commands.len() {
            return commands
                .iter()
                .map(|c| rows.iter().find(|(id, _)| id == c).unwrap().1.clone())
                .collect();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("commands not processed in 30 s");
}

async fn booking_status(harness: &Harness, booking: BookingId) -> String {
    sqlx::query_scalar("SELECT status FROM booking WHERE booking_id = $1")
        .bind(booking)
        .fetch_one(harness.db())
        .await
        .unwrap()
}

/// The outbox rows of one message type, as `(exchange, routing key, body)`.
async fn outbox(harness: &Harness, kind: &str) -> Vec<(String, String, serde_json::Value)> {
    sqlx::query_as("SELECT exchange, routing_key, body FROM outbox WHERE body->>'type' = $1 ORDER BY outbox_id")
        .bind(kind)
        .fetch_all(harness.db())
        .await
        .unwrap()
}

async fn hold_one(harness: &Harness, show: ShowId, user: UserId, seat: SeatId) -> BookingId {
    let command = harness.hold(show, user, seats(&[seat])).await;
    let results = harness.results(&[command]).await;
    results[&command].0.expect("the hold is granted")
}

async fn start_payment(harness: &Harness, show: ShowId, user: UserId, booking: BookingId, card: &str) -> PaymentId {
    let payment = PaymentId::new();
    let command = CommandId::new();
    harness
        .publish(
            show,
            StartPayment {
                command_id: command,
                user_id: user,
                booking_id: booking,
                payment_id: payment,
                card_token: card.into(),
            },
        )
        .await;
    let result = processed(harness, &[command]).await;
    assert_eq!(result[0]["outcome"], "payment_started", "{result:?}");
    payment
}

async fn confirm(harness: &Harness, show: ShowId, user: UserId, booking: BookingId, payment: PaymentId) -> String {
    let command = CommandId::new();
    harness
        .publish(
            show,
            ConfirmBooking {
                command_id: command,
                user_id: user,
                booking_id: booking,
                payment_id: payment,
            },
        )
        .await;
    processed(harness, &[command]).await[0]["outcome"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[tokio::test]
async fn a_new_writer_loads_live_bookings_with_their_seats_and_payments() {
    let mut harness = Harness::new().await;
    let show = harness.show(1, 6, 4).await;
    let users = seed_users(harness.db(), 3).await;
    harness.start_worker().await;
    let paying = hold_one(&harness, show.show, users[0], show.seats[0]).await;
    let second = harness.hold(show.show, users[0], seats(&show.seats[1..3])).await;
    assert!(harness.results(&[second]).await[&second].0.is_some());
    let payment = start_payment(&harness, show.show, users[0], paying, "tok_visa").await;
    let released = hold_one(&harness, show.show, users[1], show.seats[3]).await;

    // The next writer knows only what it loads.
    harness.restart_worker().await;
    // Its seats: fan 0 has 3 of 4 seats, so 2 more are over the limit, and the released
    // booking's seat goes back on sale.
    let over = harness.hold(show.show, users[0], seats(&show.seats[4..6])).await;
    assert_eq!(
        harness.results(&[over]).await[&over],
        (None, Some("limit_exceeded".to_owned())),
        "the loaded bookings count towards the fan's limit"
    );
    harness
        .publish(
            show.show,
            ReleaseHold {
                command_id: CommandId::new(),
                user_id: users[1],
                booking_id: released,
            },
        )
        .await;
    hold_one(&harness, show.show, users[2], show.seats[3]).await;
    // Its payment: only the charge started before the restart confirms the booking.
    let stranger = PaymentId::new();
    assert_eq!(
        confirm(&harness, show.show, users[0], paying, stranger).await,
        "confirm_rejected"
    );
    assert_eq!(
        confirm(&harness, show.show, users[0], paying, payment).await,
        "confirmed"
    );
    harness.assert_no_double_booking(show.show).await;
    harness.assert_snapshot_matches_database(show.show).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_paid_booking_is_confirmed_with_signed_tickets_and_a_cancelled_one_is_refunded() {
    let mut harness = Harness::new().await;
    let show = harness.show(1, 6, 4).await;
    let user = seed_users(harness.db(), 1).await[0];
    harness.start_worker().await;

    let command = harness.hold(show.show, user, seats(&show.seats[..2])).await;
    let booking = harness.results(&[command]).await[&command].0.unwrap();
    let held_until: time::OffsetDateTime = sqlx::query_scalar("SELECT expires_at FROM booking WHERE booking_id = $1")
        .bind(booking)
        .fetch_one(harness.db())
        .await
        .unwrap();

    let payment = start_payment(&harness, show.show, user, booking, "tok_visa").await;
    assert_eq!(booking_status(&harness, booking).await, "payment_pending");
    let (status, amount, key): (String, i64, String) =
        sqlx::query_as("SELECT status, amount_cents, idempotency_key FROM payment WHERE payment_id = $1")
            .bind(payment)
            .fetch_one(harness.db())
            .await
            .unwrap();
    assert_eq!((status.as_str(), amount), ("processing", 2 * 5000));
    let extended: time::OffsetDateTime = sqlx::query_scalar("SELECT expires_at FROM booking WHERE booking_id = $1")
        .bind(booking)
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert!(extended > held_until, "the hold is extended while the card is charged");
    let charges = outbox(&harness, "ChargePayment").await;
    assert_eq!(charges.len(), 1);
    assert_eq!(charges[0].0, harness.topology.payments_exchange());
    assert_eq!(charges[0].2["payload"]["idempotency_key"], key);
    assert_eq!(charges[0].2["payload"]["amount_cents"], 10_000);

    assert_eq!(confirm(&harness, show.show, user, booking, payment).await, "confirmed");
    assert_eq!(booking_status(&harness, booking).await, "confirmed");
    let tickets: Vec<(SeatId, String, String)> =
        sqlx::query_as("SELECT seat_id, code, signature FROM ticket WHERE booking_id = $1 AND voided_at IS NULL")
            .bind(booking)
            .fetch_all(harness.db())
            .await
            .unwrap();
    assert_eq!(tickets.len(), 2);
    let signer = TicketSigner::new(common::config::defaults::TICKET_SIGNING_KEY);
    for (seat, code, signature) in &tickets {
        assert!(show.seats[..2].contains(seat));
        assert!(
            signer.verify(code, show.show, *seat, signature),
            "tickets are signed with the server key"
        );
    }
    // A redelivered confirmation changes nothing and issues no second set of tickets.
    assert_eq!(confirm(&harness, show.show, user, booking, payment).await, "duplicate");
    let issued: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket WHERE booking_id = $1")
        .bind(booking)
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(issued, 2);
    harness.assert_snapshot_matches_database(show.show).await;

    let cancel = CommandId::new();
    harness
        .publish(
            show.show,
            CancelBooking {
                command_id: cancel,
                user_id: user,
                booking_id: booking,
            },
        )
        .await;
    assert_eq!(processed(&harness, &[cancel]).await[0]["outcome"], "cancelled");
    assert_eq!(booking_status(&harness, booking).await, "cancelled");
    let valid: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket WHERE booking_id = $1 AND voided_at IS NULL")
        .bind(booking)
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(valid, 0, "a cancelled booking's tickets are void");
    let cancelled = outbox(&harness, "booking.cancelled").await;
    assert_eq!(cancelled[0].2["payload"]["refund_cents"], 10_000);
    assert_eq!(cancelled[0].2["payload"]["payment_id"], payment.to_string());

    let refund = CommandId::new();
    harness
        .publish(
            show.show,
            RecordRefund {
                command_id: refund,
                booking_id: booking,
                payment_id: payment,
                refund_id: RefundId::new(),
            },
        )
        .await;
    processed(&harness, &[refund]).await;
    assert_eq!(booking_status(&harness, booking).await, "refunded");
    // The seats are on sale again.
    let again = hold_one(&harness, show.show, seed_users(harness.db(), 1).await[0], show.seats[0]).await;
    assert_ne!(again, booking);
    harness.assert_snapshot_matches_database(show.show).await;
    harness.assert_no_double_booking(show.show).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_declined_card_puts_the_booking_back_on_hold_and_another_card_can_pay() {
    let mut harness = Harness::new().await;
    let show = harness.show(1, 4, 4).await;
    let user = seed_users(harness.db(), 1).await[0];
    harness.start_worker().await;
    let booking = hold_one(&harness, show.show, user, show.seats[1]).await;

    let first = start_payment(&harness, show.show, user, booking, "tok_chargeDeclined").await;
    let failed = CommandId::new();
    harness
        .publish(
            show.show,
            PaymentFailed {
                command_id: failed,
                booking_id: booking,
                payment_id: first,
                code: "card_declined".into(),
            },
        )
        .await;
    assert_eq!(processed(&harness, &[failed]).await[0]["outcome"], "payment_failed");
    assert_eq!(booking_status(&harness, booking).await, "held");
    let events = outbox(&harness, "booking.payment_failed").await;
    assert_eq!(events[0].2["payload"]["status"], "held");

    // The worker created the payment row; the payment-worker marks it failed.
    sqlx::query("UPDATE payment SET status = 'failed' WHERE payment_id = $1")
        .bind(first)
        .execute(harness.db())
        .await
        .unwrap();
    let second = start_payment(&harness, show.show, user, booking, "tok_visa").await;
    assert_ne!(first, second);
    assert_eq!(confirm(&harness, show.show, user, booking, second).await, "confirmed");
    assert_eq!(booking_status(&harness, booking).await, "confirmed");
    harness.assert_snapshot_matches_database(show.show).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_charge_that_succeeds_after_the_hold_expired_is_rejected_for_a_refund_and_the_seat_stays_with_its_new_holder()
{
    let mut harness = Harness::new().await;
    let show = harness.show(1, 2, 4).await;
    let users = seed_users(harness.db(), 2).await;
    harness.start_worker().await;
    let booking = hold_one(&harness, show.show, users[0], show.seats[0]).await;
    let payment = start_payment(&harness, show.show, users[0], booking, "tok_slow").await;

    // Past the hold and its payment grace: the sweep expires the booking.
    harness.advance(120 + 121);
    for _ in 0..100 {
        if booking_status(&harness, booking).await == "expired" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(booking_status(&harness, booking).await, "expired");
    let newcomer = hold_one(&harness, show.show, users[1], show.seats[0]).await;

    assert_eq!(
        confirm(&harness, show.show, users[0], booking, payment).await,
        "confirm_rejected"
    );
    assert_eq!(booking_status(&harness, booking).await, "expired");
    assert_eq!(booking_status(&harness, newcomer).await, "held");
    let rejected = outbox(&harness, "booking.confirm_rejected").await;
    assert_eq!(rejected.len(), 1);
    assert_eq!(rejected[0].2["payload"]["payment_id"], payment.to_string());
    let tickets: i64 = sqlx::query_scalar("SELECT count(*) FROM ticket")
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(tickets, 0);
    harness.assert_snapshot_matches_database(show.show).await;
    harness.stop().await;
}

#[tokio::test]
async fn cancelling_is_refused_past_the_cut_off_and_for_unpaid_or_foreign_bookings() {
    let mut harness = Harness::new().await;
    let show = harness.show(1, 4, 4).await;
    let users = seed_users(harness.db(), 2).await;
    // The show starts in twelve hours; the default policy stops cancellations a day before.
    sqlx::query("UPDATE show SET starts_at = now() + interval '12 hours' WHERE show_id = $1")
        .bind(show.show)
        .execute(harness.db())
        .await
        .unwrap();
    harness.start_worker().await;
    let booking = hold_one(&harness, show.show, users[0], show.seats[0]).await;
    let unpaid = CommandId::new();
    harness
        .publish(
            show.show,
            CancelBooking {
                command_id: unpaid,
                user_id: users[0],
                booking_id: booking,
            },
        )
        .await;
    let payment = start_payment(&harness, show.show, users[0], booking, "tok_visa").await;
    assert_eq!(
        confirm(&harness, show.show, users[0], booking, payment).await,
        "confirmed"
    );
    let (late, foreign) = (CommandId::new(), CommandId::new());
    for (command, user) in [(late, users[0]), (foreign, users[1])] {
        harness
            .publish(
                show.show,
                CancelBooking {
                    command_id: command,
                    user_id: user,
                    booking_id: booking,
                },
            )
            .await;
    }
    for result in processed(&harness, &[unpaid, late, foreign]).await {
        assert_eq!(result["code"], "not_cancellable", "{result}");
    }
    assert_eq!(booking_status(&harness, booking).await, "confirmed");
    harness.stop().await;
}

#[tokio::test]
async fn a_promo_code_with_ten_uses_raced_by_fifty_fans_is_used_exactly_ten_times() {
    let mut harness = Harness::new().await;
    let show = harness.show(10, 10, 4).await;
    let users = seed_users(harness.db(), 50).await;
    sqlx::query(
        "INSERT INTO promo_code (promo_code_id, code, show_id, percent_off, max_uses, valid_until)
         VALUES ($1, 'Fans20', $2, 20, 10, now() + interval '1 day')",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(show.show)
    .execute(harness.db())
    .await
    .unwrap();
    harness.start_worker().await;

    let mut commands = Vec::new();
    for user in &users {
        let command = CommandId::new();
        commands.push(command);
        harness
            .publish(
                show.show,
                HoldSeats {
                    command_id: command,
                    user_id: *user,
                    selection: SeatSelection::BestAvailable {
                        quantity: 1,
                        tier: None,
                        adjacent: false,
                    },
                    promo_code: Some("fans20".into()),
                },
            )
            .await;
    }
    let results = harness.results(&commands).await;
    let held = results.values().filter(|(booking, _)| booking.is_some()).count();
    let refused = results
        .values()
        .filter(|(_, code)| code.as_deref() == Some("invalid_promo_code"))
        .count();
    assert_eq!((held, refused), (10, 40));
    let used: i32 = sqlx::query_scalar("SELECT used_count FROM promo_code")
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(used, 10);
    let discounted: Vec<(i64, i64, i64)> = sqlx::query_as(
        "SELECT subtotal_cents, discount_cents, total_cents FROM booking WHERE promo_code_id IS NOT NULL",
    )
    .fetch_all(harness.db())
    .await
    .unwrap();
    assert_eq!(discounted.len(), 10);
    for (subtotal, discount, total) in discounted {
        assert_eq!(discount, subtotal / 5);
        assert_eq!(total, subtotal - discount);
    }

    // A released hold gives its use back.
    let (winner, (booking, _)) = results.iter().find(|(_, (booking, _))| booking.is_some()).unwrap();
    let owner = users[commands.iter().position(|c| c == winner).unwrap()];
    let release = CommandId::new();
    harness
        .publish(
            show.show,
            ReleaseHold {
                command_id: release,
                user_id: owner,
                booking_id: booking.unwrap(),
            },
        )
        .await;
    processed(&harness, &[release]).await;
    let used: i32 = sqlx::query_scalar("SELECT used_count FROM promo_code")
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(used, 9);
    harness.stop().await;
}

#[tokio::test]
async fn seats_coming_back_on_a_sold_out_show_are_offered_to_the_waitlist_in_order() {
    let mut harness = Harness::new().await;
    let show = harness.show(1, 2, 4).await;
    let users = seed_users(harness.db(), 3).await;
    harness.start_worker().await;
    let booking = hold_one(&harness, show.show, users[0], show.seats[0]).await;
    hold_one(&harness, show.show, users[0], show.seats[1]).await;

    let (first, second) = (WaitlistEntryId::new(), WaitlistEntryId::new());
    let mut joins = Vec::new();
    for (entry, user, quantity) in [(first, users[1], 1), (second, users[2], 1)] {
        let command = CommandId::new();
        joins.push(command);
        harness
            .publish(
                show.show,
                JoinWaitlist {
                    command_id: command,
                    user_id: user,
                    waitlist_entry_id: entry,
                    quantity,
                },
            )
            .await;
    }
    for result in processed(&harness, &joins).await {
        assert_eq!(result["outcome"], "waitlisted");
    }

    let release = CommandId::new();
    harness
        .publish(
            show.show,
            ReleaseHold {
                command_id: release,
                user_id: users[0],
                booking_id: booking,
            },
        )
        .await;
    processed(&harness, &[release]).await;
    let entries: Vec<(WaitlistEntryId, String, Option<BookingId>)> =
        sqlx::query_as("SELECT waitlist_entry_id, status, offered_booking_id FROM waitlist_entry ORDER BY created_at")
            .fetch_all(harness.db())
            .await
            .unwrap();
    assert_eq!(entries[0].0, first);
    assert_eq!(entries[0].1, "offered", "the first in line gets the seat");
    assert_eq!(entries[1].1, "waiting");
    let offered = entries[0].2.unwrap();
    let (owner, status, seat): (UserId, String, SeatId) = sqlx::query_as(
        "SELECT b.app_user_id, b.status, bs.seat_id FROM booking b JOIN booking_seat bs USING (booking_id)
         WHERE b.booking_id = $1",
    )
    .bind(offered)
    .fetch_one(harness.db())
    .await
    .unwrap();
    assert_eq!((owner, status.as_str(), seat), (users[1], "held", show.seats[0]));
    let offers = outbox(&harness, "waitlist.offered").await;
    assert_eq!(offers.len(), 1);
    assert_eq!(offers[0].2["payload"]["user_id"], users[1].to_string());
    harness.assert_snapshot_matches_database(show.show).await;
    harness.assert_no_double_booking(show.show).await;
    harness.stop().await;
}
