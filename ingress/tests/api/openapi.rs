//! The OpenAPI document is generated from the code and matches the router.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::TestApp;

/// Every route of API.md that exists so far, as (method, path template).
const EXPECTED: &[(&str, &str)] = &[
    ("post", "/api/v1/auth/register"),
    ("post", "/api/v1/auth/login"),
    ("post", "/api/v1/auth/refresh"),
    ("post", "/api/v1/auth/logout"),
    ("get", "/api/v1/me"),
    ("get", "/api/v1/me/bookings"),
    ("get", "/api/v1/events"),
    ("get", "/api/v1/events/{event_id}"),
    ("get", "/api/v1/venues"),
    ("get", "/api/v1/venues/{venue_id}"),
    ("get", "/api/v1/shows/{show_id}"),
    ("get", "/api/v1/shows/{show_id}/seats"),
    ("get", "/api/v1/shows/{show_id}/availability"),
    ("post", "/api/v1/admin/venues"),
    ("post", "/api/v1/admin/events"),
    ("post", "/api/v1/admin/shows"),
    ("patch", "/api/v1/admin/shows/{show_id}/waiting-room"),
    ("get", "/api/v1/admin/shows/{show_id}/stats"),
    ("put", "/api/v1/admin/users/{user_id}/role"),
    ("post", "/api/v1/shows/{show_id}/queue"),
    ("get", "/api/v1/shows/{show_id}/queue"),
    ("delete", "/api/v1/shows/{show_id}/queue"),
    ("get", "/api/v1/shows/{show_id}/queue/ws"),
    ("post", "/api/v1/shows/{show_id}/holds"),
    ("get", "/api/v1/hold-requests/{request_id}"),
    ("get", "/api/v1/bookings/{booking_id}"),
    ("delete", "/api/v1/bookings/{booking_id}"),
    ("post", "/api/v1/bookings/{booking_id}/cancel"),
    ("post", "/api/v1/bookings/{booking_id}/payments"),
    ("get", "/api/v1/bookings/{booking_id}/tickets"),
    ("get", "/api/v1/payments/{payment_id}"),
    ("post", "/api/v1/payments/webhook"),
    ("get", "/api/v1/tickets/{ticket_id}/qr.svg"),
    ("post", "/api/v1/checkin"),
    ("post", "/api/v1/admin/promo-codes"),
    ("post", "/api/v1/shows/{show_id}/waitlist"),
];

#[tokio::test]
async fn the_openapi_document_parses_and_lists_exactly_the_routes_the_router_serves() {
    let app = TestApp::spawn().await;
    let response = app.request(Method::GET, "/api/v1/openapi.json").send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let document: Value = response.json().await.unwrap();
    assert!(
        document["openapi"].as_str().unwrap().starts_with("3.1"),
        "{}",
        document["openapi"]
    );
    assert_eq!(document["info"]["title"], "Floodgate API");

    let mut documented = BTreeSet::new();
    for (path, operations) in document["paths"].as_object().unwrap() {
        for method in operations.as_object().unwrap().keys() {
            if ["get", "post", "put", "patch", "delete"].contains(&method.as_str()) {
                documented.insert((method.clone(), path.clone()));
            }
        }
    }
    let expected: BTreeSet<(String, String)> = EXPECTED
        .iter()
        .map(|(method, path)| ((*method).to_owned(), (*path).to_owned()))
        .collect();
    assert_eq!(documented, expected, "the document and the API's route list differ");

    // Every documented operation is served: the router neither says "no such route" nor
    // "method not allowed" for it (the handler may still refuse the empty request).
    for (method, path) in &documented {
        let concrete = path
            .split('/')
            .map(|segment| {
                if segment.starts_with('{') {
                    uuid::Uuid::now_v7().to_string()
                } else {
                    segment.to_owned()
                }
            })
            .collect::<Vec<_>>()
            .join("/");
        let response = app
            .request(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap(), &concrete)
            .send()
            .await
            .unwrap();
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        assert!(
            body["code"] != "no_route"
                && body["code"] != "method_not_allowed"
                && status != StatusCode::INTERNAL_SERVER_ERROR,
            "{method} {concrete}: {status} {body}"
        );
    }

    // Every operation documents its success (2xx, or 101 for the WebSocket) and its failures.
    for (method, path) in &documented {
        let responses = document["paths"][path][method]["responses"].as_object().unwrap();
        assert!(
            responses.keys().any(|code| code.starts_with('2') || code == "101"),
            "{method} {path}"
        );
        assert!(
            responses
                .keys()
                .any(|code| code.starts_with('4') || code.starts_with('5')),
            "{method} {path}"
        );
    }
}
