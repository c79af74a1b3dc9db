//! [`PaymentGateway`] over HTTP for the Stripe-shaped API of the simulator (`simulator` module
//! docs): JSON bodies, `Idempotency-Key` on every `POST`, errors as `{error: {type, code}}`.

use std::time::{Duration, Instant};

use futures::{FutureExt as _, future::BoxFuture};
use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use super::{ChargeOutcome, ChargeRequest, PaymentGateway, RefundOutcome, RefundRequest};
use crate::metrics;

/// The HTTP adapter.
#[derive(Clone)]
pub struct HttpGateway {
    client: reqwest::Client,
    base: String,
}

impl HttpGateway {
    /// An adapter for the gateway at `base` (e.g. `http://127.0.0.1:8090`); each request gives
    /// up after `timeout` (the outcome is then unknown).
    pub fn new(base: &str, timeout: Duration) -> Result<Self, reqwest::Error> {
        let client = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout.min(Duration::from_secs(2)))
            .build()?;
        Ok(Self {
            client,
            base: base.trim_end_matches('/').to_owned(),
        })
    }

    async fn post(&self, path: &str, key: &str, body: Value) -> Result<(StatusCode, Value), String> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header("Idempotency-Key", key)
            .json(&body)
            .send()
            .await
            .map_err(describe)?;
        let status = response.status();
        // A body that is not JSON (a proxy's error page) reads as an empty object.
        let body = response.json::<Value>().await.unwrap_or_else(|_| json!({}));
        Ok((status, body))
    }
}

fn describe(err: reqwest::Error) -> String {
    if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connect() {
        format!("cannot connect: {err}")
    } else {
        err.to_string()
    }
}

fn metadata(pairs: &[(String, String)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.clone(), Value::String(v.clone())))
            .collect::<Map<_, _>>(),
    )
}

fn error_code(body: &Value) -> Option<String> {
    body["error"]["code"].as_str().map(str::to_owned)
}

/// The outcome an intent object tells.
pub fn intent_outcome(intent: &Value) -> ChargeOutcome {
    let reference = intent["id"].as_str().map(str::to_owned);
    match (intent["status"].as_str(), reference) {
        (Some("succeeded"), Some(reference)) => ChargeOutcome::Succeeded { reference },
        (Some("requires_payment_method" | "canceled"), reference) => ChargeOutcome::Declined {
            code: intent["last_payment_error"]["code"]
                .as_str()
                .unwrap_or("payment_failed")
                .to_owned(),
            reference,
        },
        (status, _) => ChargeOutcome::Unknown {
            reason: format!("intent status {status:?}"),
        },
    }
}

/// Reads a charge answer.
fn charge_outcome(status: StatusCode, body: &Value) -> ChargeOutcome {
    let kind = body["error"]["type"].as_str().unwrap_or_default();
    match status {
        s if s.is_success() => intent_outcome(body),
        StatusCode::PAYMENT_REQUIRED => ChargeOutcome::Declined {
            code: error_code(body).unwrap_or_else(|| "card_declined".to_owned()),
            reference: body["error"]["payment_intent"]["id"].as_str().map(str::to_owned),
        },
        // The key was used with other parameters: whatever that request did is unknown here.
        StatusCode::BAD_REQUEST if kind == "idempotency_error" => ChargeOutcome::Unknown {
            reason: "idempotency key reused with other parameters".to_owned(),
        },
        // An invalid request (unknown token, bad amount) will never succeed.
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND => ChargeOutcome::Declined {
            code: error_code(body).unwrap_or_else(|| "invalid_request".to_owned()),
            reference: None,
        },
        // 409 (key in flight), 429, 5xx, 401/403 (our configuration): try again later.
        other => ChargeOutcome::Unknown {
            reason: format!("gateway answered {other}"),
        },
    }
}

fn refund_outcome(status: StatusCode, body: &Value) -> RefundOutcome {
    let kind = body["error"]["type"].as_str().unwrap_or_default();
    match status {
        s if s.is_success() => match body["id"].as_str() {
            Some(reference) if body["status"] != "failed" => RefundOutcome::Succeeded {
                reference: reference.to_owned(),
            },
            _ => RefundOutcome::Refused {
                code: "refund_failed".to_owned(),
            },
        },
        StatusCode::BAD_REQUEST if kind == "idempotency_error" => RefundOutcome::Unknown {
            reason: "idempotency key reused with other parameters".to_owned(),
        },
        StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::PAYMENT_REQUIRED => RefundOutcome::Refused {
            code: error_code(body).unwrap_or_else(|| "invalid_request".to_owned()),
        },
        other => RefundOutcome::Unknown {
            reason: format!("gateway answered {other}"),
        },
    }
}

impl PaymentGateway for HttpGateway {
    fn charge<'a>(&'a self, request: &'a ChargeRequest) -> BoxFuture<'a, ChargeOutcome> {
        async move {
            let started = Instant::now();
            let body = json!({
                "amount": request.amount_cents,
                "currency": request.currency.to_ascii_lowercase(),
                "payment_method": request.card_token,
                "metadata": metadata(&request.metadata),
            });
            let outcome = match self.post("/v1/payment_intents", &request.idempotency_key, body).await {
                Ok((status, body)) => charge_outcome(status, &body),
                Err(reason) => ChargeOutcome::Unknown { reason },
            };
            let label = match &outcome {
                ChargeOutcome::Succeeded { .. } => "succeeded",
                ChargeOutcome::Declined { .. } => "declined",
                ChargeOutcome::Unknown { .. } => "unknown",
            };
            metrics::gateway_request("charge", label, started.elapsed().as_secs_f64());
            outcome
        }
        .boxed()
    }

    fn find_charge<'a>(&'a self, payment_id: &'a str) -> BoxFuture<'a, Result<Option<ChargeOutcome>, String>> {
        async move {
            let started = Instant::now();
            let result = async {
                let response = self
                    .client
                    .get(format!("{}/v1/payment_intents/search", self.base))
                    .query(&[("query", format!("metadata['payment_id']:'{payment_id}'"))])
                    .send()
                    .await
                    .map_err(describe)?;
                if !response.status().is_success() {
                    return Err(format!("search answered {}", response.status()));
                }
                let body: Value = response.json().await.map_err(describe)?;
                let outcomes: Vec<ChargeOutcome> = body["data"]
                    .as_array()
                    .map(|intents| intents.iter().map(intent_outcome).collect())
                    .unwrap_or_default();
                // A success wins over anything else found for the payment.
                Ok(outcomes
                    .iter()
                    .find(|o| matches!(o, ChargeOutcome::Succeeded { .. }))
                    .or_else(|| outcomes.last())
                    .cloned())
            }
            .await;
            let label = if result.is_ok() { "ok" } else { "error" };
            metrics::gateway_request("find_charge", label, started.elapsed().as_secs_f64());
            result
        }
        .boxed()
    }

    fn refund<'a>(&'a self, request: &'a RefundRequest) -> BoxFuture<'a, RefundOutcome> {
        async move {
            let started = Instant::now();
            let body = json!({
                "payment_intent": request.charge_reference,
                "amount": request.amount_cents,
                "metadata": metadata(&request.metadata),
            });
            let outcome = match self.post("/v1/refunds", &request.idempotency_key, body).await {
                Ok((status, body)) => refund_outcome(status, &body),
                Err(reason) => RefundOutcome::Unknown { reason },
            };
            let label = match &outcome {
                RefundOutcome::Succeeded { .. } => "succeeded",
                RefundOutcome::Refused { .. } => "refused",
                RefundOutcome::Unknown { .. } => "unknown",
            };
            metrics::gateway_request("refund", label, started.elapsed().as_secs_f64());
            outcome
        }
        .boxed()
    }

    fn ping(&self) -> BoxFuture<'_, Result<(), String>> {
        async move {
            // Any HTTP answer means the gateway is reachable (a real one has no /healthz).
            self.client
                .get(format!("{}/healthz", self.base))
                .send()
                .await
                .map(|_| ())
                .map_err(describe)
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_sorted_into_outcomes() {
        let intent = json!({ "id": "pi_1", "status": "succeeded" });
        assert_eq!(
            charge_outcome(StatusCode::OK, &intent),
            ChargeOutcome::Succeeded {
                reference: "pi_1".to_owned()
            }
        );
        let declined =
            json!({ "error": { "type": "card_error", "code": "card_declined", "payment_intent": { "id": "pi_2" } } });
        assert_eq!(
            charge_outcome(StatusCode::PAYMENT_REQUIRED, &declined),
            ChargeOutcome::Declined {
                code: "card_declined".to_owned(),
                reference: Some("pi_2".to_owned())
            }
        );
        for status in [
            StatusCode::CONFLICT,
            StatusCode::INTERNAL_SERVER_ERROR,
            StatusCode::TOO_MANY_REQUESTS,
        ] {
            assert!(matches!(
                charge_outcome(status, &json!({})),
                ChargeOutcome::Unknown { .. }
            ));
        }
        let reused = json!({ "error": { "type": "idempotency_error" } });
        assert!(matches!(
            charge_outcome(StatusCode::BAD_REQUEST, &reused),
            ChargeOutcome::Unknown { .. }
        ));
        let too_much = json!({ "error": { "type": "invalid_request_error", "code": "amount_too_large" } });
        assert_eq!(
            refund_outcome(StatusCode::BAD_REQUEST, &too_much),
            RefundOutcome::Refused {
                code: "amount_too_large".to_owned()
            }
        );
    }
}
