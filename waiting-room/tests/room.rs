//! The waiting room against real Redis: a key prefix per test, deleted when the test ends. The
//! controller is driven tick by tick with an explicit clock; nothing sleeps.

use std::{collections::HashSet, time::Duration};

use common::ids::{ShowId, UserId};
use redis::AsyncCommands as _;
use waiting_room::{
    Place, WaitingRoom,
    controller::{Controller, ControllerConfig, ShowSettings},
    keys::Keys,
    shuffle::{self, Seed},
};

struct Fixture {
    room: WaitingRoom,
    redis: redis::aio::ConnectionManager,
    prefix: String,
    /// The test clock's "zero": real time, so heartbeats written with real time line up.
    t0: u64,
}

fn redis_url() -> String {
    common::config::env_string("REDIS_URL", common::config::defaults::REDIS_URL)
}

fn real_now_ms() -> u64 {
    u64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap()
}

impl Fixture {
    async fn new() -> Self {
        let redis = waiting_room::room::connect(&redis_url()).await.unwrap();
        let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
        Self {
            room: WaitingRoom::new(redis.clone(), prefix.clone()),
            redis,
            prefix,
            t0: real_now_ms(),
        }
    }

    fn controller(&self, config: ControllerConfig) -> Controller {
        Controller::new(self.redis.clone(), self.prefix.clone(), config)
    }

    /// A show whose pre-queue opens at t0+1s and whose sale starts at t0+2s.
    fn show(&self, admit_per_second: u32, max_active: u32) -> ShowSettings {
        ShowSettings {
            show_id: ShowId::new(),
            prequeue_opens_at_ms: self.t0 + 1_000,
            on_sale_at_ms: self.t0 + 2_000,
            admit_per_second,
            max_active,
            paused: false,
            sellable: 10_000,
            booking_lag_ms: None,
        }
    }

    async fn number(&self, show: ShowId, user: UserId) -> Option<u64> {
        match self.room.status(show, user).await.unwrap() {
            Place::Waiting { number, .. } | Place::Admitted { number, .. } => Some(number),
            _ => None,
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        // A blocking connection: the test's runtime is busy dropping us.
        if let Ok(client) = redis::Client::open(redis_url())
            && let Ok(mut connection) = client.get_connection()
        {
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg(format!("{}*", self.prefix))
                .query(&mut connection)
                .unwrap_or_default();
            if !keys.is_empty() {
                let _: Result<(), _> = redis::cmd("DEL").arg(keys).query(&mut connection);
            }
        }
    }
}

#[tokio::test]
async fn the_prequeue_is_numbered_by_the_revealed_seed_and_later_arrivals_are_first_come_first_served() {
    let fx = Fixture::new().await;
    let mut controller = fx.controller(ControllerConfig::default());
    let show = fx.show(1_000, 1_000);
    let id = show.show_id;
    let early_fan = UserId::new();

    // Before the pre-queue opens the room is closed, but the seed's commitment is published.
    controller.tick_show(&show, fx.t0).await.unwrap();
    assert_eq!(fx.room.join(id, early_fan).await.unwrap().0, Place::Closed);
    let before = fx.room.public_state(id).await.unwrap();
    assert_eq!(before.state, "scheduled");
    let commitment = before.seed_sha256.expect("commitment published before the sale");
    assert_eq!(before.seed, None);

    controller.tick_show(&show, fx.t0 + 1_000).await.unwrap();
    let early: Vec<UserId> = (0..40).map(|_| UserId::new()).collect();
    for fan in &early {
        assert_eq!(fx.room.join(id, *fan).await.unwrap(), (Place::Prequeue, true));
    }
    controller.tick_show(&show, fx.t0 + 2_000).await.unwrap();
    let late: Vec<UserId> = (0..10).map(|_| UserId::new()).collect();
    for fan in &late {
        assert!(fx.room.join(id, *fan).await.unwrap().1);
    }

    let after = fx.room.public_state(id).await.unwrap();
    let seed = Seed::from_hex(after.seed.as_deref().expect("seed revealed at the on-sale")).unwrap();
    assert_eq!(seed.commitment(), commitment);
    assert_eq!(after.prequeue_size, Some(40));
    let expected = shuffle::order(&seed, &early);
    for (index, fan) in expected.iter().enumerate() {
        assert_eq!(fx.number(id, *fan).await, Some(index as u64 + 1));
    }
    for (index, fan) in late.iter().enumerate() {
        assert_eq!(
            fx.number(id, *fan).await,
            Some(41 + index as u64),
            "late arrivals keep arrival order"
        );
    }
}

#[tokio::test]
async fn fans_are_admitted_in_queue_order_at_the_configured_rate_and_never_beyond_the_active_cap() {
    let fx = Fixture::new().await;
    let mut controller = fx.controller(ControllerConfig::default());
    let mut show = fx.show(8, 30);
    let id = show.show_id;
    show.prequeue_opens_at_ms = fx.t0;
    show.on_sale_at_ms = fx.t0;
    controller.tick_show(&show, fx.t0).await.unwrap();
    let fans: Vec<UserId> = (0..100).map(|_| UserId::new()).collect();
    for fan in &fans {
        fx.room.join(id, *fan).await.unwrap();
    }

    // Two seconds of 250 ms ticks at 8/s: 16 admissions, in queue order.
    let mut now = fx.t0;
    let mut admitted = 0;
    for _ in 0..8 {
        now += 250;
        admitted += controller.tick_show(&show, now).await.unwrap().admitted;
    }
    assert_eq!(admitted, 16);
    let log = fx.room.admission_log(id).await.unwrap();
    let numbers: Vec<u64> = log.iter().map(|record| record.number).collect();
    assert_eq!(numbers, (1..=16).collect::<Vec<_>>(), "the log is in queue order");
    assert!(log.iter().all(|record| record.admitted && record.at_ms >= fx.t0));
    for (index, fan) in fans.iter().enumerate() {
        let place = fx.room.status(id, *fan).await.unwrap();
        assert_eq!(
            matches!(place, Place::Admitted { .. }),
            index < 16,
            "fan {index}: {place:?}"
        );
    }
    let waiting = fx.room.status(id, fans[50]).await.unwrap();
    assert_eq!(waiting.position(), Some(51 - 16));
    assert!(waiting.eta_seconds().is_some());

    // Four more seconds would admit 32, but only 30 may shop at once.
    let mut last = None;
    for _ in 0..16 {
        now += 250;
        last = Some(controller.tick_show(&show, now).await.unwrap());
    }
    assert_eq!(last.unwrap().active, 30);
    // Ending sessions frees slots for the next fans in line.
    for fan in &fans[..5] {
        fx.room.end_session(id, *fan).await.unwrap();
    }
    now += 1_000;
    let outcome = controller.tick_show(&show, now).await.unwrap();
    assert_eq!((outcome.admitted, outcome.active), (5, 30));
    assert_eq!(outcome.serving, 35);
}

#[tokio::test]
async fn admission_slows_down_while_the_booking_pipeline_lags_and_speeds_up_again_after() {
    let fx = Fixture::new().await;
    let mut controller = fx.controller(ControllerConfig::default());
    let mut show = fx.show(100, 10_000);
    let id = show.show_id;
    show.prequeue_opens_at_ms = fx.t0;
    show.on_sale_at_ms = fx.t0;
    controller.tick_show(&show, fx.t0).await.unwrap();
    // Enough fans that the room never runs dry during the test.
    for _ in 0..2_000 {
        fx.room.join(id, UserId::new()).await.unwrap();
    }
    let mut now = fx.t0;
    // Keeping up: the configured 100/s.
    assert_eq!(ticks(&mut controller, &mut show, &mut now, Some(50), 4).await, 100);
    // Two seconds behind: admission drops to a trickle within a few ticks.
    let lagging = ticks(&mut controller, &mut show, &mut now, Some(2_000), 12).await;
    assert!(lagging < 100, "{lagging} admitted in 3 s while the writer lagged");
    let trickle = ticks(&mut controller, &mut show, &mut now, Some(2_000), 4).await;
    assert!(trickle <= 10, "{trickle} admitted in 1 s at the floor");
    // Caught up: back to the full rate within seconds.
    ticks(&mut controller, &mut show, &mut now, Some(50), 60).await;
    assert_eq!(ticks(&mut controller, &mut show, &mut now, None, 4).await, 100);
}

/// Runs `count` 250 ms ticks with the writer reporting `lag`; returns the fans admitted.
async fn ticks(
    controller: &mut Controller,
    show: &mut ShowSettings,
    now: &mut u64,
    lag: Option<u64>,
    count: usize,
) -> u64 {
    show.booking_lag_ms = lag;
    let mut admitted = 0;
    for _ in 0..count {
        *now += 250;
        admitted += controller.tick_show(show, *now).await.unwrap().admitted;
    }
    admitted
}

#[tokio::test]
async fn pause_stops_admission_and_selling_out_tells_fans_until_released_seats_resume_it() {
    let fx = Fixture::new().await;
    let mut controller = fx.controller(ControllerConfig::default());
    let mut show = fx.show(100, 1_000);
    let id = show.show_id;
    show.prequeue_opens_at_ms = fx.t0;
    show.on_sale_at_ms = fx.t0;
    controller.tick_show(&show, fx.t0).await.unwrap();
    for _ in 0..50 {
        fx.room.join(id, UserId::new()).await.unwrap();
    }
    let mut subscriber = redis::Client::open(redis_url())
        .unwrap()
        .get_async_pubsub()
        .await
        .unwrap();
    subscriber.subscribe(Keys::new(&fx.prefix, id).channel).await.unwrap();

    show.paused = true;
    let paused = controller.tick_show(&show, fx.t0 + 1_000).await.unwrap();
    assert_eq!((paused.state.as_str(), paused.admitted), ("paused", 0));

    show.paused = false;
    show.sellable = 0;
    let sold_out = controller.tick_show(&show, fx.t0 + 2_000).await.unwrap();
    assert_eq!((sold_out.state.as_str(), sold_out.admitted), ("sold_out", 0));
    assert_eq!(fx.room.join(id, UserId::new()).await.unwrap().0, Place::SoldOut);

    // Three seats come back: the room reopens and admits no more fans than can buy.
    show.sellable = 3;
    let reopened = controller.tick_show(&show, fx.t0 + 3_000).await.unwrap();
    assert_eq!((reopened.state.as_str(), reopened.admitted), ("open", 3));

    let mut states = Vec::new();
    let mut messages = subscriber.on_message();
    use futures::StreamExt as _;
    while states.len() < 3 {
        let message = tokio::time::timeout(Duration::from_secs(5), messages.next())
            .await
            .unwrap()
            .unwrap();
        let update: waiting_room::controller::RoomUpdate =
            serde_json::from_str(&message.get_payload::<String>().unwrap()).unwrap();
        states.push(update.state);
    }
    assert_eq!(states, ["paused", "sold_out", "open"]);
}

#[tokio::test]
async fn a_fan_has_one_place_however_many_times_they_join_at_once_and_leaving_frees_it() {
    let fx = Fixture::new().await;
    let mut controller = fx.controller(ControllerConfig::default());
    let mut show = fx.show(1, 10);
    show.prequeue_opens_at_ms = fx.t0;
    show.on_sale_at_ms = fx.t0;
    let id = show.show_id;
    controller.tick_show(&show, fx.t0).await.unwrap();
    fx.room.join(id, UserId::new()).await.unwrap();

    let fan = UserId::new();
    let joins = futures::future::join_all((0..100).map(|_| fx.room.join(id, fan))).await;
    let numbers: HashSet<u64> = joins
        .iter()
        .map(|join| match &join.as_ref().unwrap().0 {
            Place::Waiting { number, .. } => *number,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(numbers, HashSet::from([2]));
    assert_eq!(
        joins.iter().filter(|join| join.as_ref().unwrap().1).count(),
        1,
        "exactly one join was new"
    );

    assert!(fx.room.leave(id, fan).await.unwrap());
    assert_eq!(fx.room.status(id, fan).await.unwrap(), Place::NotQueued);
    assert!(!fx.room.leave(id, fan).await.unwrap());
    let (place, new) = fx.room.join(id, fan).await.unwrap();
    assert!(new);
    assert!(matches!(place, Place::Waiting { number: 3, .. }), "{place:?}");
}

#[tokio::test]
async fn places_of_fans_who_went_quiet_are_skipped() {
    let fx = Fixture::new().await;
    let config = ControllerConfig {
        grace: Duration::from_secs(10),
        ..ControllerConfig::default()
    };
    let mut controller = fx.controller(config);
    let mut show = fx.show(2, 100);
    show.prequeue_opens_at_ms = fx.t0;
    show.on_sale_at_ms = fx.t0;
    let id = show.show_id;
    controller.tick_show(&show, fx.t0).await.unwrap();
    let fans: Vec<UserId> = (0..4).map(|_| UserId::new()).collect();
    for fan in &fans {
        fx.room.join(id, *fan).await.unwrap();
    }
    // Twenty seconds later only the last two are still here (a heartbeat with the test clock).
    let later = fx.t0 + 20_000;
    let keys = Keys::new(&fx.prefix, id);
    let mut redis = fx.redis.clone();
    for fan in &fans[2..] {
        let _: u64 = redis.zadd(&keys.heartbeat, fan.to_string(), later).await.unwrap();
    }
    let outcome = controller.tick_show(&show, later).await.unwrap();
    assert_eq!((outcome.admitted, outcome.skipped, outcome.serving), (2, 2, 4));
    assert_eq!(fx.room.status(id, fans[0]).await.unwrap(), Place::NotQueued);
    assert!(matches!(
        fx.room.status(id, fans[3]).await.unwrap(),
        Place::Admitted { number: 4, .. }
    ));
    // The admission log records every place passed, in order, skipped or admitted.
    let log: Vec<(u64, String, bool)> = fx
        .room
        .admission_log(id)
        .await
        .unwrap()
        .into_iter()
        .map(|record| (record.number, record.user, record.admitted))
        .collect();
    let expected: Vec<(u64, String, bool)> = (1..)
        .zip(&fans)
        .map(|(number, fan)| (number, fan.to_string(), number > 2))
        .collect();
    assert_eq!(log, expected);
}

#[tokio::test]
async fn two_controllers_running_at_once_never_admit_for_the_same_show_in_the_same_tick() {
    let fx = Fixture::new().await;
    let mut first = fx.controller(ControllerConfig::default());
    let mut second = fx.controller(ControllerConfig::default());
    let mut show = fx.show(40, 10_000);
    show.prequeue_opens_at_ms = fx.t0;
    show.on_sale_at_ms = fx.t0;
    let id = show.show_id;
    first.tick_show(&show, fx.t0).await.unwrap();
    for _ in 0..200 {
        assert!(fx.room.join(id, UserId::new()).await.unwrap().1);
    }
    let mut now = fx.t0;
    let mut total = 0;
    let mut leaders = HashSet::new();
    for _ in 0..20 {
        now += 250;
        let (a, b) = tokio::join!(first.tick_show(&show, now), second.tick_show(&show, now));
        let (a, b) = (a.unwrap(), b.unwrap());
        assert!(!(a.leader && b.leader), "both replicas admitted in one tick");
        leaders.insert(if a.leader { "first" } else { "second" });
        total += a.admitted + b.admitted;
    }
    assert_eq!(leaders.len(), 1, "a healthy leader keeps its lease");
    // 5 s at 40/s: 200 admissions however the two replicas raced, never more.
    assert!((195..=200).contains(&total), "{total}");
    let serving: u64 = fx.redis.clone().get(Keys::new(&fx.prefix, id).serving).await.unwrap();
    assert_eq!(serving, total);
}
