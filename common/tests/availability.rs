//! The availability snapshot against the real Redis: what a writer publishes, the admission
//! controller and ingress read back. Each test uses its own key prefix and deletes its keys.

use common::{
    availability::{self, Keys, Snapshot, Written},
    contracts::SeatCounts,
    ids::ShowId,
};
use redis::aio::ConnectionManager;

async fn redis() -> ConnectionManager {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| common::config::defaults::REDIS_URL.to_owned());
    let client = redis::Client::open(url).expect("a valid Redis URL");
    ConnectionManager::new(client).await.expect("Redis answers")
}

#[tokio::test]
async fn the_counts_are_read_back_once_a_writer_with_a_real_epoch_published_them() {
    let mut redis = redis().await;
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let keys = Keys::new(&prefix, ShowId::from(uuid::Uuid::now_v7()));
    assert_eq!(
        availability::counts(&mut redis, &keys).await.unwrap(),
        None,
        "no snapshot yet"
    );

    // A writer's versions start at epoch << 32: past u32 from the first epoch on.
    let epoch = 3;
    let counts = SeatCounts {
        available: 7,
        held: 2,
        sold: 1,
        blocked: 0,
    };
    let snapshot = Snapshot {
        bitmap: vec![0b1111_1110],
        statuses: b"aaaaaaahhs".to_vec(),
        counts,
        version: availability::version(epoch, 1),
    };
    let written = availability::rebuild(&mut redis, &keys, epoch, &snapshot)
        .await
        .unwrap();
    let after_rebuild = availability::counts(&mut redis, &keys).await;
    let changed = SeatCounts {
        available: 6,
        held: 3,
        ..counts
    };
    let applied = availability::apply(
        &mut redis,
        &keys,
        epoch,
        &[(0, b'h')],
        changed,
        availability::version(epoch, 2),
    )
    .await
    .unwrap();
    let after_apply = availability::counts(&mut redis, &keys).await;
    availability::delete(&mut redis, &keys).await.unwrap();

    assert_eq!(written, Written::Applied);
    assert_eq!(after_rebuild.unwrap(), Some(counts));
    assert_eq!(applied, Written::Applied);
    assert_eq!(after_apply.unwrap(), Some(changed));
}

#[tokio::test]
async fn the_writers_lag_is_read_back_with_its_age_on_redis_clock() {
    let mut redis = redis().await;
    let prefix = format!("test-{}:", uuid::Uuid::new_v4().simple());
    let keys = Keys::new(&prefix, ShowId::from(uuid::Uuid::now_v7()));
    let before = availability::lag(&mut redis, &keys).await;
    availability::report_lag(&mut redis, &keys, 1_234).await.unwrap();
    let just_reported = availability::lag(&mut redis, &keys).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let later = availability::lag(&mut redis, &keys).await;
    availability::delete(&mut redis, &keys).await.unwrap();

    assert_eq!(before.unwrap(), None, "nothing reported yet");
    let (lag, age) = just_reported.unwrap().expect("reported");
    assert_eq!(lag, 1_234);
    assert!(age < 250, "reported {age} ms ago");
    let (lag, age) = later.unwrap().expect("still there");
    assert_eq!(lag, 1_234);
    assert!((300..5_000).contains(&age), "the report ages: {age} ms");
}
