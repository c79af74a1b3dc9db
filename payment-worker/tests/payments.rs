//! The payment-worker end to end: real PostgreSQL (a fresh database per test), real RabbitMQ
//! (a queue prefix per test), the real simulator over HTTP and the real adapter.

mod support;

use std::time::Duration;

use common::{
    contracts::{BookingCancelled, BookingConfirmRejected},
    ids::{CommandId, PaymentId},
};
use payment_worker::{
    gateway::{ChargeOutcome, ChargeRequest, PaymentGateway, RefundOutcome, RefundRequest, http::HttpGateway},
    ids,
};
use support::{Harness, Options, TestPayment};

async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..300 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("timed out waiting for {what}");
}

/// No webhook reaches the worker: the charge's own answer (or its retries and reconciliation)
/// must settle the payment.
fn without_webhooks() -> Options {
    Options {
        forward_webhooks: false,
        ..Options::default()
    }
}

/// Charges and confirms `payment` through the worker (a ChargePayment), returning the intent id.
async fn charged(harness: &Harness, payment: &TestPayment) -> String {
    harness.charge(payment).await;
    harness.wait_status(payment.payment_id, "succeeded").await;
    harness.wait_command("ConfirmBooking", payment.payment_id).await;
    sqlx::query_scalar("SELECT gateway_reference FROM payment WHERE payment_id = $1")
        .bind(payment.payment_id)
        .fetch_one(harness.db())
        .await
        .unwrap()
}

#[tokio::test]
async fn a_declined_card_fails_the_payment_and_queues_payment_failed_to_the_show() {
    let harness = Harness::new(without_webhooks()).await;
    let payment = harness.seed_payment("tok_chargeDeclined", 2500).await;
    harness.charge(&payment).await;
    harness.wait_status(payment.payment_id, "failed").await;

    let code: Option<String> = sqlx::query_scalar("SELECT failure_code FROM payment WHERE payment_id = $1")
        .bind(payment.payment_id)
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(code.as_deref(), Some("card_declined"));
    let command = harness.wait_command("PaymentFailed", payment.payment_id).await;
    assert_eq!(command["payload"]["code"], "card_declined");
    assert_eq!(command["payload"]["booking_id"], payment.booking_id.to_string());
    assert_eq!(
        command["payload"]["command_id"],
        ids::payment_failed(payment.payment_id).to_string()
    );
    assert_eq!(command["show_id"], payment.show_id.to_string());
    let event = harness.wait_event("payment.failed", payment.payment_id).await;
    assert_eq!(event["payload"]["code"], "card_declined");
    assert!(Harness::about(&harness.commands().await, "ConfirmBooking", payment.payment_id).is_empty());
    assert!(harness.ledger_entries("charges", payment.payment_id).await.is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn a_charge_whose_answer_times_out_is_taken_once_and_confirmed() {
    let harness = Harness::new(without_webhooks()).await;
    let payment = harness.seed_payment("tok_timeout_after_charge", 3100).await;
    let reference = charged(&harness, &payment).await;

    let charges = harness.ledger_entries("charges", payment.payment_id).await;
    assert_eq!(charges.len(), 1, "exactly one charge: {charges:?}");
    assert_eq!(charges[0]["payment_intent"], reference.as_str());
    assert_eq!(charges[0]["idempotency_key"], payment.idempotency_key.as_str());
    let command = harness.wait_command("ConfirmBooking", payment.payment_id).await;
    assert_eq!(
        command["payload"]["command_id"],
        ids::confirm_booking(payment.payment_id).to_string()
    );
    harness.wait_event("payment.succeeded", payment.payment_id).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_flaky_gateway_is_retried_with_the_same_key_and_charges_once() {
    let harness = Harness::new(without_webhooks()).await;
    let payment = harness.seed_payment("tok_flaky", 1800).await;
    charged(&harness, &payment).await;
    assert_eq!(harness.ledger_entries("charges", payment.payment_id).await.len(), 1);
    assert_eq!(harness.outbox_count("ConfirmBooking", payment.payment_id).await, 1);
    harness.stop().await;
}

#[tokio::test]
async fn a_redelivered_charge_payment_does_not_charge_twice() {
    let harness = Harness::new(without_webhooks()).await;
    // tok_slow keeps the first charge in flight while the duplicates arrive, so the gateway's
    // idempotency (409, then the stored answer) is exercised as well as the status check.
    let payment = harness.seed_payment("tok_slow", 900).await;
    for _ in 0..3 {
        harness.charge(&payment).await;
    }
    harness.wait_status(payment.payment_id, "succeeded").await;
    harness.charge(&payment).await;
    // Let every copy be handled.
    tokio::time::sleep(Duration::from_secs(3)).await;

    assert_eq!(harness.ledger_entries("charges", payment.payment_id).await.len(), 1);
    let commands = harness.commands().await;
    let confirmations = Harness::about(&commands, "ConfirmBooking", payment.payment_id);
    assert_eq!(confirmations.len(), 1, "one ConfirmBooking: {confirmations:?}");
    assert_eq!(harness.outbox_count("payment.succeeded", payment.payment_id).await, 1);
    assert_eq!(harness.dead_lettered().await, 0);
    harness.stop().await;
}

/// Records every status change of payments and refunds (test databases only).
async fn record_status_changes(harness: &Harness) {
    sqlx::raw_sql(
        "CREATE TABLE test_status_change (id text NOT NULL, old_status text, new_status text);
         CREATE FUNCTION test_record_change() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO test_status_change VALUES (to_jsonb(NEW) ->> TG_ARGV[0], OLD.status, NEW.status);
             RETURN NEW;
         END $$;
         CREATE TRIGGER test_payment_change AFTER UPDATE ON payment FOR EACH ROW
             WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION test_record_change('payment_id');
         CREATE TRIGGER test_refund_change AFTER UPDATE ON refund FOR EACH ROW
             WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION test_record_change('refund_id');",
    )
    .execute(harness.db())
    .await
    .unwrap();
}

async fn changes(harness: &Harness, id: impl ToString) -> Vec<(String, String)> {
    sqlx::query_as("SELECT old_status, new_status FROM test_status_change WHERE id = $1")
        .bind(id.to_string())
        .fetch_all(harness.db())
        .await
        .unwrap()
}

#[tokio::test]
async fn webhooks_delivered_three_times_in_shuffled_order_change_each_payment_once() {
    let harness = Harness::new(Options {
        duplicates: 3,
        shuffle: true,
        webhook_window: Duration::from_millis(300),
        ..Options::default()
    })
    .await;
    record_status_changes(&harness).await;
    let succeeded = harness.seed_payment("tok_visa", 1000).await;
    let declined = harness.seed_payment("tok_chargeDeclined", 2000).await;
    let refunded = harness.seed_payment("tok_visa", 3000).await;

    // The charges are made at the gateway directly (as if the worker's answers were lost):
    // only the webhooks can settle these payments.
    let gateway = HttpGateway::new(&harness.gateway_url, Duration::from_secs(5)).unwrap();
    let mut references = Vec::new();
    for payment in [&succeeded, &declined, &refunded] {
        let outcome = gateway
            .charge(&ChargeRequest {
                idempotency_key: payment.idempotency_key.clone(),
                amount_cents: payment.amount_cents,
                currency: "EUR".to_owned(),
                card_token: payment.card_token.clone(),
                metadata: vec![("payment_id".to_owned(), payment.payment_id.to_string())],
            })
            .await;
        references.push(outcome);
    }
    let ChargeOutcome::Succeeded { reference } = references[2].clone() else {
        panic!("tok_visa succeeds");
    };
    harness.wait_status(refunded.payment_id, "succeeded").await;
    // A refund the worker asked for whose answer was lost: pending until its webhook arrives.
    let refund_id = ids::refund(refunded.payment_id, "confirm_rejected", "");
    sqlx::query(
        "INSERT INTO refund (refund_id, payment_id, amount_cents, reason, idempotency_key)
         VALUES ($1, $2, 3000, 'confirm_rejected', $3)",
    )
    .bind(refund_id)
    .bind(refunded.payment_id)
    .bind(ids::refund_idempotency_key(refund_id))
    .execute(harness.db())
    .await
    .unwrap();
    let outcome = gateway
        .refund(&RefundRequest {
            idempotency_key: ids::refund_idempotency_key(refund_id),
            charge_reference: reference,
            amount_cents: 3000,
            metadata: vec![("refund_id".to_owned(), refund_id.to_string())],
        })
        .await;
    assert!(matches!(outcome, RefundOutcome::Succeeded { .. }));

    harness.wait_status(succeeded.payment_id, "succeeded").await;
    harness.wait_status(declined.payment_id, "failed").await;
    harness.wait_status(refunded.payment_id, "refunded").await;
    // Four events (three charges, one refund), each delivered three times.
    wait_until("every delivery to be received and every event processed", || async {
        let received = harness.receiver.deliveries().len();
        let unprocessed: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_event WHERE processed_at IS NULL")
            .fetch_one(harness.db())
            .await
            .unwrap();
        received == 12 && unprocessed == 0
    })
    .await;
    // Let the last duplicates be handled.
    tokio::time::sleep(Duration::from_secs(1)).await;

    let deliveries = harness.receiver.deliveries();
    let mut ids_received: Vec<String> = deliveries.iter().map(|d| d.event["id"].to_string()).collect();
    ids_received.sort();
    ids_received.dedup();
    assert_eq!(ids_received.len(), 4, "four distinct events, three deliveries each");
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM webhook_event")
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(events, 4);

    let one = |from: &str, to: &str| vec![(from.to_owned(), to.to_owned())];
    assert_eq!(
        changes(&harness, succeeded.payment_id).await,
        one("processing", "succeeded")
    );
    assert_eq!(
        changes(&harness, declined.payment_id).await,
        one("processing", "failed")
    );
    assert_eq!(
        changes(&harness, refunded.payment_id).await,
        vec![
            ("processing".to_owned(), "succeeded".to_owned()),
            ("succeeded".to_owned(), "refunded".to_owned())
        ]
    );
    assert_eq!(changes(&harness, refund_id).await, one("pending", "succeeded"));
    let refunded_cents: i64 = sqlx::query_scalar("SELECT refunded_cents FROM payment WHERE payment_id = $1")
        .bind(refunded.payment_id)
        .fetch_one(harness.db())
        .await
        .unwrap();
    assert_eq!(refunded_cents, 3000);

    assert_eq!(harness.outbox_count("ConfirmBooking", succeeded.payment_id).await, 1);
    assert_eq!(harness.outbox_count("PaymentFailed", declined.payment_id).await, 1);
    assert_eq!(harness.outbox_count("refund.succeeded", refunded.payment_id).await, 1);
    harness.wait_command("ConfirmBooking", succeeded.payment_id).await;
    harness.wait_command("PaymentFailed", declined.payment_id).await;
    harness.wait_event("refund.succeeded", refunded.payment_id).await;
    harness.stop().await;
}

#[tokio::test]
async fn a_rejected_confirmation_is_refunded_once_in_full() {
    let harness = Harness::new(without_webhooks()).await;
    let payment = harness.seed_payment("tok_visa", 4500).await;
    let reference = charged(&harness, &payment).await;

    let fact = BookingConfirmRejected {
        user_id: payment.user_id,
        booking_id: payment.booking_id,
        payment_id: payment.payment_id,
        booking_status: "expired".to_owned(),
    };
    // The fact arrives twice (a redelivery), and concurrently.
    harness.publish_fact(fact.clone()).await;
    harness.publish_fact(fact).await;
    harness.wait_status(payment.payment_id, "refunded").await;
    let event = harness.wait_event("refund.succeeded", payment.payment_id).await;
    assert_eq!(event["payload"]["amount_cents"], 4500);
    assert_eq!(event["payload"]["reason"], "confirm_rejected");
    tokio::time::sleep(Duration::from_secs(1)).await;

    let refunds: Vec<_> = harness.ledger().await["refunds"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["payment_intent"] == reference.as_str())
        .cloned()
        .collect();
    assert_eq!(refunds.len(), 1, "exactly one refund at the gateway: {refunds:?}");
    assert_eq!(refunds[0]["amount"], 4500);
    let rows: Vec<(String, i64)> = sqlx::query_as("SELECT status, amount_cents FROM refund WHERE payment_id = $1")
        .bind(payment.payment_id)
        .fetch_all(harness.db())
        .await
        .unwrap();
    assert_eq!(rows, vec![("succeeded".to_owned(), 4500)]);
    let events = harness.events().await;
    assert_eq!(Harness::about(&events, "refund.succeeded", payment.payment_id).len(), 1);
    // A rejected confirmation is not a cancellation: nothing to record on the show.
    assert!(Harness::about(&harness.commands().await, "RecordRefund", payment.payment_id).is_empty());
    harness.stop().await;
}

#[tokio::test]
async fn a_cancelled_booking_is_refunded_what_the_policy_says_and_the_show_is_told() {
    let harness = Harness::new(without_webhooks()).await;
    let payment = harness.seed_payment("tok_visa", 6000).await;
    charged(&harness, &payment).await;
    let cancel = CommandId::new();
    harness
        .publish_fact(BookingCancelled {
            command_id: cancel,
            user_id: payment.user_id,
            booking_id: payment.booking_id,
            payment_id: payment.payment_id,
            refund_cents: 4000,
            currency: "EUR".to_owned(),
        })
        .await;
    let command = harness.wait_command("RecordRefund", payment.payment_id).await;
    let refund_id = ids::refund(payment.payment_id, "cancelled", &cancel.to_string());
    assert_eq!(command["payload"]["refund_id"], refund_id.to_string());
    let (status, refunded): (String, i64) =
        sqlx::query_as("SELECT status, refunded_cents FROM payment WHERE payment_id = $1")
            .bind(payment.payment_id)
            .fetch_one(harness.db())
            .await
            .unwrap();
    assert_eq!((status.as_str(), refunded), ("succeeded", 4000), "a partial refund");
    assert_eq!(harness.ledger().await["refunded_cents"], 4000);
    harness.stop().await;
}

#[tokio::test]
async fn a_payment_stuck_in_processing_is_reconciled_by_the_sweep() {
    let harness = Harness::new(Options {
        stuck_after: Duration::from_secs(1),
        forward_webhooks: false,
        ..Options::default()
    })
    .await;
    let payment = harness.seed_payment("tok_visa", 1200).await;
    // A worker charged it and died before writing the outcome, and no webhook reaches the
    // worker: only the sweep, looking the charge up, can settle it.
    let gateway = HttpGateway::new(&harness.gateway_url, Duration::from_secs(5)).unwrap();
    let outcome = gateway
        .charge(&ChargeRequest {
            idempotency_key: payment.idempotency_key.clone(),
            amount_cents: payment.amount_cents,
            currency: "EUR".to_owned(),
            card_token: payment.card_token.clone(),
            metadata: vec![("payment_id".to_owned(), payment.payment_id.to_string())],
        })
        .await;
    assert!(matches!(outcome, ChargeOutcome::Succeeded { .. }));
    harness.wait_status(payment.payment_id, "succeeded").await;
    harness.wait_command("ConfirmBooking", payment.payment_id).await;
    assert_eq!(harness.ledger_entries("charges", payment.payment_id).await.len(), 1);

    // And one the gateway never saw: the sweep charges it, with its own key.
    let lost = harness.seed_payment("tok_visa", 1300).await;
    harness.wait_status(lost.payment_id, "succeeded").await;
    assert_eq!(harness.ledger_entries("charges", lost.payment_id).await.len(), 1);
    harness.wait_command("ConfirmBooking", lost.payment_id).await;
    harness.stop().await;
}

#[tokio::test]
async fn an_undecodable_message_or_an_unknown_payment_is_dead_lettered() {
    let harness = Harness::new(Options::default()).await;
    harness
        .publisher
        .publish_raw(
            &harness.topology.payments_exchange(),
            common::mq::PAYMENTS_ROUTING_KEY,
            "garbage-1",
            "Nonsense",
            b"{not json",
        )
        .await
        .unwrap();
    let ghost = TestPayment {
        payment_id: PaymentId::new(),
        booking_id: common::ids::BookingId::new(),
        show_id: harness.show,
        user_id: harness.user,
        amount_cents: 100,
        idempotency_key: "ghost".to_owned(),
        card_token: "tok_visa".to_owned(),
    };
    harness.charge(&ghost).await;
    wait_until("two dead letters", || async { harness.dead_lettered().await == 2 }).await;
    assert!(harness.ledger().await["charges"].as_array().unwrap().is_empty());
    harness.stop().await;
}
