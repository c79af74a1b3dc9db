//! The gateway simulator over real HTTP, and the HTTP adapter against it: idempotency keys,
//! the test tokens, refunds, and signed webhooks.

mod support;

use std::time::Duration;

use payment_worker::{
    gateway::{ChargeOutcome, ChargeRequest, PaymentGateway, RefundOutcome, RefundRequest, http::HttpGateway},
    simulator::signature,
};
use serde_json::{Value, json};
use support::{Receiver, WEBHOOK_SECRET, simulator_config, start_receiver, start_simulator};
use tokio_util::sync::CancellationToken;

async fn post(base: &str, path: &str, key: &str, body: &Value) -> (u16, Option<String>, Value) {
    let response = reqwest::Client::new()
        .post(format!("{base}{path}"))
        .header("Idempotency-Key", key)
        .json(body)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let replayed = response
        .headers()
        .get("idempotent-replayed")
        .map(|v| v.to_str().unwrap().to_owned());
    (status, replayed, response.json().await.unwrap())
}

async fn ledger(base: &str) -> Value {
    reqwest::get(format!("{base}/v1/_ledger"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

fn intent_body(token: &str, amount: i64) -> Value {
    json!({ "amount": amount, "currency": "eur", "payment_method": token, "metadata": { "payment_id": "p-1" } })
}

#[tokio::test]
async fn the_same_key_and_body_returns_the_stored_intent_and_another_body_is_refused() {
    let shutdown = CancellationToken::new();
    let base = start_simulator(simulator_config(None), shutdown.clone()).await;

    let (status, replayed, first) = post(&base, "/v1/payment_intents", "key-1", &intent_body("tok_visa", 1500)).await;
    assert_eq!(status, 200);
    assert_eq!(replayed, None);
    assert_eq!(first["status"], "succeeded");
    let (status, replayed, second) = post(&base, "/v1/payment_intents", "key-1", &intent_body("tok_visa", 1500)).await;
    assert_eq!(status, 200);
    assert_eq!(replayed.as_deref(), Some("true"));
    assert_eq!(
        second["id"], first["id"],
        "the same key and body answer the same intent"
    );

    let (status, _, refused) = post(&base, "/v1/payment_intents", "key-1", &intent_body("tok_visa", 9999)).await;
    assert_eq!(status, 400);
    assert_eq!(refused["error"]["type"], "idempotency_error");

    let ledger = ledger(&base).await;
    assert_eq!(ledger["charges"].as_array().unwrap().len(), 1);
    assert_eq!(ledger["charged_cents"], 1500);
    shutdown.cancel();
}

#[tokio::test]
async fn a_key_still_in_flight_is_answered_409_and_charged_once() {
    let shutdown = CancellationToken::new();
    let base = start_simulator(simulator_config(None), shutdown.clone()).await;
    let body = intent_body("tok_slow", 700);
    let first = tokio::spawn({
        let (base, body) = (base.clone(), body.clone());
        async move { post(&base, "/v1/payment_intents", "slow-key", &body).await }
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    let (status, _, conflict) = post(&base, "/v1/payment_intents", "slow-key", &body).await;
    assert_eq!(status, 409);
    assert_eq!(conflict["error"]["code"], "idempotency_key_in_use");
    let (status, _, intent) = first.await.unwrap();
    assert_eq!(status, 200);
    assert_eq!(intent["status"], "succeeded");
    // Once answered, the key replays the answer.
    let (status, _, again) = post(&base, "/v1/payment_intents", "slow-key", &body).await;
    assert_eq!((status, &again["id"]), (200, &intent["id"]));
    assert_eq!(ledger(&base).await["charges"].as_array().unwrap().len(), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn a_declined_card_is_a_stored_402_and_a_flaky_5xx_is_not_stored() {
    let shutdown = CancellationToken::new();
    let base = start_simulator(simulator_config(None), shutdown.clone()).await;
    let (status, _, declined) = post(
        &base,
        "/v1/payment_intents",
        "d",
        &intent_body("tok_chargeDeclined", 100),
    )
    .await;
    assert_eq!(status, 402);
    assert_eq!(declined["error"]["code"], "card_declined");
    let (status, replayed, _) = post(
        &base,
        "/v1/payment_intents",
        "d",
        &intent_body("tok_chargeDeclined", 100),
    )
    .await;
    assert_eq!((status, replayed.as_deref()), (402, Some("true")));

    let (status, _, _) = post(&base, "/v1/payment_intents", "f", &intent_body("tok_flaky", 100)).await;
    assert_eq!(status, 500);
    let (status, replayed, intent) = post(&base, "/v1/payment_intents", "f", &intent_body("tok_flaky", 100)).await;
    assert_eq!((status, replayed), (200, None), "the 5xx was not stored: the retry ran");
    assert_eq!(intent["status"], "succeeded");
    let ledger = ledger(&base).await;
    assert_eq!(ledger["charges"].as_array().unwrap().len(), 1);
    assert_eq!(ledger["declines"].as_array().unwrap().len(), 1);
    shutdown.cancel();
}

#[tokio::test]
async fn the_adapter_learns_a_timed_out_charge_from_the_retry_and_from_search() {
    let shutdown = CancellationToken::new();
    let base = start_simulator(simulator_config(None), shutdown.clone()).await;
    let gateway = HttpGateway::new(&base, Duration::from_millis(500)).unwrap();
    let request = ChargeRequest {
        idempotency_key: "timeout-key".to_owned(),
        amount_cents: 4200,
        currency: "EUR".to_owned(),
        card_token: "tok_timeout_after_charge".to_owned(),
        metadata: vec![("payment_id".to_owned(), "pay-42".to_owned())],
    };
    assert!(matches!(gateway.charge(&request).await, ChargeOutcome::Unknown { .. }));
    let ChargeOutcome::Succeeded { reference } = gateway.charge(&request).await else {
        panic!("the retry with the same key gets the stored success");
    };
    assert_eq!(
        gateway.find_charge("pay-42").await.unwrap(),
        Some(ChargeOutcome::Succeeded {
            reference: reference.clone()
        })
    );
    assert_eq!(gateway.find_charge("nobody").await.unwrap(), None);
    assert_eq!(ledger(&base).await["charges"].as_array().unwrap().len(), 1);

    // Refunds: partial, then more than what is left (refused), then the rest; a retried key
    // answers the same refund.
    let refund = |key: &str, amount: i64| RefundRequest {
        idempotency_key: key.to_owned(),
        charge_reference: reference.clone(),
        amount_cents: amount,
        metadata: Vec::new(),
    };
    let RefundOutcome::Succeeded { reference: first } = gateway.refund(&refund("r1", 1200)).await else {
        panic!("a partial refund succeeds");
    };
    assert_eq!(
        gateway.refund(&refund("r1", 1200)).await,
        RefundOutcome::Succeeded { reference: first }
    );
    assert_eq!(
        gateway.refund(&refund("r2", 3001)).await,
        RefundOutcome::Refused {
            code: "amount_too_large".to_owned()
        }
    );
    assert!(matches!(
        gateway.refund(&refund("r3", 3000)).await,
        RefundOutcome::Succeeded { .. }
    ));
    let ledger = ledger(&base).await;
    assert_eq!(ledger["refunds"].as_array().unwrap().len(), 2);
    assert_eq!(ledger["refunded_cents"], 4200, "never more than was charged");
    shutdown.cancel();
}

#[tokio::test]
async fn webhooks_are_signed_with_a_timestamped_hmac_of_the_raw_body() {
    let shutdown = CancellationToken::new();
    let receiver = Receiver::recording();
    let url = start_receiver(receiver.clone(), shutdown.clone()).await;
    let base = start_simulator(simulator_config(Some(url)), shutdown.clone()).await;
    post(&base, "/v1/payment_intents", "w1", &intent_body("tok_visa", 100)).await;
    post(
        &base,
        "/v1/payment_intents",
        "w2",
        &intent_body("tok_chargeDeclined", 100),
    )
    .await;

    let mut deliveries = Vec::new();
    for _ in 0..100 {
        deliveries = receiver.deliveries();
        if deliveries.len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(deliveries.len(), 2, "one delivery per event");
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    for delivery in &deliveries {
        let (t, v1) = delivery.signature.split_once(',').expect("t=...,v1=...");
        let t: i64 = t.strip_prefix("t=").unwrap().parse().unwrap();
        assert!((now - t).abs() <= 5, "signed now");
        let v1 = v1.strip_prefix("v1=").unwrap();
        assert_eq!(v1.len(), 64);
        assert!(v1.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)));
        assert_eq!(
            signature::verify(WEBHOOK_SECRET, &delivery.signature, &delivery.body, now, 300),
            Ok(())
        );
        assert_eq!(
            signature::verify("another-secret", &delivery.signature, &delivery.body, now, 300),
            Err(signature::SignatureError::Mismatch)
        );
        assert!(delivery.event["id"].as_str().unwrap().starts_with("evt_"));
        assert_eq!(delivery.event["data"]["object"]["object"], "payment_intent");
    }
    let mut kinds: Vec<&str> = deliveries.iter().map(|d| d.event["type"].as_str().unwrap()).collect();
    kinds.sort_unstable();
    assert_eq!(kinds, ["payment_intent.payment_failed", "payment_intent.succeeded"]);
    assert_ne!(deliveries[0].event["id"], deliveries[1].event["id"]);
    shutdown.cancel();
}
