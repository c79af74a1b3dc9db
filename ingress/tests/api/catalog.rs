//! API.md "Catalog" and the organizer calls that feed it.

use std::{collections::HashSet, time::Instant};

use base64::Engine as _;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{TestApp, assert_problem, show_body};

#[tokio::test]
async fn a_50000_seat_venue_and_a_show_are_created_through_the_api_and_the_seat_map_has_every_seat_priced_by_tier() {
    let app = TestApp::spawn().await;
    let organizer = app.organizer_token().await;

    // 4 stands of 50 rows x 250 seats: 50,000 seats in one call.
    let tiers = ["vip", "premium", "standard", "economy"];
    let sections: Vec<Value> = tiers
        .iter()
        .enumerate()
        .map(|(stand, tier)| {
            let rows: Vec<Value> = (1..=50)
                .map(|row| json!({"label": format!("{row}"), "seats": 250, "tier": tier}))
                .collect();
            json!({"name": format!("Stand {stand}"), "rows": rows})
        })
        .collect();
    let started = Instant::now();
    let venue = app
        .create(
            "/api/v1/admin/venues",
            &organizer,
            json!({"name": "Stadium", "city": "Amsterdam", "address": "ArenA Blvd 1", "timezone": "Europe/Amsterdam",
                   "sections": sections}),
        )
        .await;
    let venue_elapsed = started.elapsed();
    assert_eq!(venue["seat_count"], 50_000);
    assert_eq!(venue["sections"].as_array().unwrap().len(), 4);

    let event = app.event(&organizer, "Stadium Tour").await;
    let prices = json!({"vip": 25000, "premium": 15000, "standard": 9000, "economy": 4500});
    let started = Instant::now();
    let show = app
        .create(
            "/api/v1/admin/shows",
            &organizer,
            show_body(&event, &venue, prices.clone()),
        )
        .await;
    let show_elapsed = started.elapsed();
    assert_eq!(show["capacity"], 50_000);
    println!("50,000-seat venue: {venue_elapsed:?}; show with 50,000 inventory rows: {show_elapsed:?}");

    let show_id = show["show_id"].as_str().unwrap();
    let map = app
        .request(Method::GET, &format!("/api/v1/shows/{show_id}/seats"))
        .send()
        .await
        .unwrap();
    assert_eq!(map.status(), StatusCode::OK);
    let etag = map.headers()["etag"].to_str().unwrap().to_owned();
    let map: Value = map.json().await.unwrap();
    let seats = map["seats"].as_array().unwrap();
    assert_eq!(seats.len(), 50_000);
    assert_eq!(
        map["counts"],
        json!({"available": 50_000, "held": 0, "sold": 0, "blocked": 0})
    );
    let indexes: HashSet<i64> = seats.iter().map(|seat| seat["index"].as_i64().unwrap()).collect();
    assert_eq!(indexes.len(), 50_000);
    assert_eq!(
        (*indexes.iter().min().unwrap(), *indexes.iter().max().unwrap()),
        (0, 49_999)
    );
    for seat in seats {
        let tier = seat["tier"].as_str().unwrap();
        assert_eq!(seat["price_cents"], prices[tier], "{seat}");
        assert_eq!(seat["status"], "available");
    }
    for (stand, tier) in tiers.iter().enumerate() {
        let in_stand = seats
            .iter()
            .filter(|seat| seat["section"] == format!("Stand {stand}"))
            .count();
        assert_eq!(in_stand, 12_500);
        assert!(
            seats
                .iter()
                .filter(|seat| seat["section"] == format!("Stand {stand}"))
                .all(|seat| seat["tier"] == *tier)
        );
    }

    // A conditional request with the ETag is answered 304 without a body.
    let again = app
        .request(Method::GET, &format!("/api/v1/shows/{show_id}/seats"))
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);

    // gzip is offered to clients that accept it.
    let raw = reqwest::Client::builder().no_gzip().build().unwrap();
    let compressed = raw
        .get(format!("{}/api/v1/shows/{show_id}/seats", app.base))
        .header("accept-encoding", "gzip")
        .send()
        .await
        .unwrap();
    assert_eq!(compressed.headers()["content-encoding"], "gzip");

    // The availability bitmap has one set bit per seat: 50,000 bits in 6,250 bytes.
    let availability: Value = app.get_json(&format!("/api/v1/shows/{show_id}/availability")).await;
    let bitmap = base64::engine::general_purpose::STANDARD
        .decode(availability["bitmap"].as_str().unwrap())
        .unwrap();
    assert_eq!(bitmap.len(), 6_250);
    assert!(bitmap.iter().all(|byte| *byte == 0xff));
    assert_eq!(availability["counts"]["available"], 50_000);
}

#[tokio::test]
async fn the_availability_bitmap_clears_the_bits_of_seats_that_are_not_available() {
    let app = TestApp::spawn().await;
    let organizer = app.organizer_token().await;
    let venue = app.small_venue(&organizer, 2, 6).await;
    let event = app.event(&organizer, "Bitmap Night").await;
    let show = app.show(&organizer, &event, &venue).await;
    let show_id = show["show_id"].as_str().unwrap();
    // An organizer blocks seats 0 and 9 (e.g. for the mixing desk); done in SQL until the
    // booking-worker owns seat changes.
    sqlx::query("UPDATE show_seat SET status = 'blocked' WHERE show_id = $1::uuid AND seat_index IN (0, 9)")
        .bind(show_id)
        .execute(app.db.pool())
        .await
        .unwrap();
    let availability: Value = app.get_json(&format!("/api/v1/shows/{show_id}/availability")).await;
    let bitmap = base64::engine::general_purpose::STANDARD
        .decode(availability["bitmap"].as_str().unwrap())
        .unwrap();
    assert_eq!(bitmap, vec![0b0111_1111, 0b1011_0000]);
    assert_eq!(
        availability["counts"],
        json!({"available": 10, "held": 0, "sold": 0, "blocked": 2})
    );
}

#[tokio::test]
async fn search_finds_an_event_by_a_misspelled_word() {
    let app = TestApp::spawn().await;
    let organizer = app.organizer_token().await;
    let wanted = app.event(&organizer, "Metallica World Tour").await;
    app.event(&organizer, "Swan Lake Ballet").await;
    app.event(&organizer, "Jazz in the Park").await;

    for query in ["Metalica", "metallca tour", "Metallica"] {
        let page: Value = app.get_query("/api/v1/events", &[("q", query)]).await;
        let titles: Vec<&str> = page["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["title"].as_str().unwrap())
            .collect();
        assert_eq!(
            titles.first(),
            Some(&"Metallica World Tour"),
            "query {query}: {titles:?}"
        );
        assert!(!titles.contains(&"Swan Lake Ballet"), "query {query}: {titles:?}");
    }
    // Full-text search also covers the description and stems words.
    let page: Value = app.get_query("/api/v1/events", &[("q", "nights out")]).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);

    let event: Value = app
        .request(
            Method::GET,
            &format!("/api/v1/events/{}", wanted["event_id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event["title"], "Metallica World Tour");
    assert_eq!(event["shows"], json!([]));
}

async fn collect_pages(app: &TestApp, params: &[(&str, &str)]) -> (Vec<String>, usize) {
    let mut ids = Vec::new();
    let mut pages = 0;
    let mut cursor: Option<String> = None;
    loop {
        let mut query: Vec<(&str, &str)> = params.to_vec();
        if let Some(cursor) = cursor.as_deref() {
            query.push(("cursor", cursor));
        }
        let page: Value = app.get_query("/api/v1/events", &query).await;
        pages += 1;
        ids.extend(
            page["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| e["event_id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => break,
        }
        assert!(pages < 100, "pagination does not end");
    }
    (ids, pages)
}

#[tokio::test]
async fn pagination_returns_every_event_exactly_once_with_and_without_a_query() {
    let app = TestApp::spawn().await;
    let organizer = app.organizer_token().await;
    let mut created = HashSet::new();
    for n in 0..23 {
        // Same title for many events: equal search scores must still page without repeats.
        let title = if n % 2 == 0 {
            "Rock Festival".to_owned()
        } else {
            format!("Rock Night {n}")
        };
        created.insert(
            app.event(&organizer, &title).await["event_id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let (all, pages) = collect_pages(&app, &[("limit", "5")]).await;
    assert_eq!(pages, 5);
    assert_eq!(all.len(), 23);
    assert_eq!(all.iter().cloned().collect::<HashSet<_>>(), created);

    let (rock, _) = collect_pages(&app, &[("limit", "4"), ("q", "rock")]).await;
    assert_eq!(rock.len(), 23);
    assert_eq!(rock.iter().cloned().collect::<HashSet<_>>(), created);

    let (filtered, _) = collect_pages(&app, &[("city", "utrecht"), ("category", "CONCERT")]).await;
    assert_eq!(filtered.len(), 23);
    let (elsewhere, _) = collect_pages(&app, &[("city", "Lisbon")]).await;
    assert!(elsewhere.is_empty());
}

#[tokio::test]
async fn shows_are_listed_with_their_event_and_filtered_by_date() {
    let app = TestApp::spawn().await;
    let organizer = app.organizer_token().await;
    let venue = app.small_venue(&organizer, 1, 10).await;
    let event = app.event(&organizer, "Dated Event").await;
    app.event(&organizer, "Undated Event").await;
    let show = app.show(&organizer, &event, &venue).await;
    assert_eq!(show["waiting_room"]["admit_per_second"], 50);
    assert_eq!(show["prices"], json!([{"tier": "floor", "price_cents": 5000}]));

    let fetched: Value = app
        .request(
            Method::GET,
            &format!("/api/v1/shows/{}", show["show_id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(fetched["show_id"], show["show_id"]);
    assert_eq!(fetched["waiting_room"]["state"], "scheduled");

    let (in_june, _) = collect_pages(
        &app,
        &[("from", "2031-06-01T00:00:00Z"), ("to", "2031-06-02T00:00:00Z")],
    )
    .await;
    assert_eq!(in_june, vec![event["event_id"].as_str().unwrap().to_owned()]);
    let (in_july, _) = collect_pages(&app, &[("from", "2031-07-01T00:00:00Z")]).await;
    assert!(in_july.is_empty());

    let event_page: Value = app
        .request(
            Method::GET,
            &format!("/api/v1/events/{}", event["event_id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(event_page["shows"][0]["show_id"], show["show_id"]);

    let venues: Value = app.get_json("/api/v1/venues").await;
    assert_eq!(venues["items"][0]["venue_id"], venue["venue_id"]);
    let one: Value = app
        .request(
            Method::GET,
            &format!("/api/v1/venues/{}", venue["venue_id"].as_str().unwrap()),
        )
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(one["sections"][0]["seats"], 10);
}

#[tokio::test]
async fn organizers_manage_only_their_own_events_and_shows() {
    let app = TestApp::spawn().await;
    let alice = app.organizer_token().await;
    let bob = app.organizer_token().await;
    let venue = app.small_venue(&alice, 1, 5).await;
    let event = app.event(&alice, "Alice's Gig").await;
    let show = app.show(&alice, &event, &venue).await;
    let show_id = show["show_id"].as_str().unwrap();

    let bob_show = app
        .send(
            Method::POST,
            "/api/v1/admin/shows",
            Some(&bob),
            Some(show_body(&event, &venue, json!({"floor": 1}))),
        )
        .await;
    assert_problem(bob_show, StatusCode::NOT_FOUND, "not_found").await;
    let bob_stats = app
        .send(
            Method::GET,
            &format!("/api/v1/admin/shows/{show_id}/stats"),
            Some(&bob),
            None,
        )
        .await;
    assert_problem(bob_stats, StatusCode::NOT_FOUND, "not_found").await;

    let patched = app
        .send(
            Method::PATCH,
            &format!("/api/v1/admin/shows/{show_id}/waiting-room"),
            Some(&alice),
            Some(json!({"admit_per_second": 200, "paused": true})),
        )
        .await;
    assert_eq!(patched.status(), StatusCode::OK);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["waiting_room"]["admit_per_second"], 200);
    assert_eq!(patched["waiting_room"]["max_active"], 500);

    let stats: Value = app
        .send(
            Method::GET,
            &format!("/api/v1/admin/shows/{show_id}/stats"),
            Some(&alice),
            None,
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(stats["capacity"], 5);
    assert_eq!(stats["counts"]["available"], 5);
    assert_eq!(stats["confirmed_bookings"], 0);

    // An admin may manage any show.
    let admin = app.admin_token().await;
    let by_admin = app
        .send(
            Method::GET,
            &format!("/api/v1/admin/shows/{show_id}/stats"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(by_admin.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_show_must_price_exactly_the_tiers_of_its_venue() {
    let app = TestApp::spawn().await;
    let organizer = app.organizer_token().await;
    let venue = app.small_venue(&organizer, 1, 5).await;
    let event = app.event(&organizer, "Pricing").await;
    let before = app.row_counts().await;
    let missing = app
        .send(
            Method::POST,
            "/api/v1/admin/shows",
            Some(&organizer),
            Some(show_body(&event, &venue, json!({}))),
        )
        .await;
    assert_problem(missing, StatusCode::UNPROCESSABLE_ENTITY, "missing_price").await;
    let unknown = app
        .send(
            Method::POST,
            "/api/v1/admin/shows",
            Some(&organizer),
            Some(show_body(&event, &venue, json!({"floor": 100, "balcony": 50}))),
        )
        .await;
    assert_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY, "unknown_tier").await;
    assert_eq!(app.row_counts().await, before);
}
