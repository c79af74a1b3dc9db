//! The outbox's store functions against a fresh database: the relay's sweep finds what was
//! left unpublished, oldest first, and pruning removes only rows published long ago.

use std::time::Duration;

use booking_worker::store;
use common::testing::TestDatabase;

async fn insert(db: &sqlx::PgPool, age_seconds: i64, published_seconds_ago: Option<i64>) -> i64 {
    sqlx::query_scalar(
        "INSERT INTO outbox (message_id, exchange, routing_key, body, created_at, published_at)
         VALUES ($1, 'events', 'hold.placed.x', '{\"type\": \"hold.placed\"}',
                 now() - make_interval(secs => $2), now() - make_interval(secs => $3))
         RETURNING outbox_id",
    )
    .bind(uuid::Uuid::now_v7())
    .bind(age_seconds as f64)
    .bind(published_seconds_ago.map(|s| s as f64))
    .fetch_one(db)
    .await
    .unwrap()
}

#[tokio::test]
async fn the_sweep_takes_old_unpublished_rows_in_order_and_pruning_keeps_recent_ones() {
    let database = TestDatabase::create().await;
    let db = database.pool();
    let old_first = insert(db, 60, None).await;
    let old_second = insert(db, 30, None).await;
    let fresh = insert(db, 0, None).await;
    let published_long_ago = insert(db, 7200, Some(7000)).await;
    let published_recently = insert(db, 100, Some(50)).await;

    let mut tx = db.begin().await.unwrap();
    let rows = store::unpublished(&mut tx, Duration::from_secs(5), 100).await.unwrap();
    let ids: Vec<i64> = rows.iter().map(|row| row.outbox_id).collect();
    assert_eq!(
        ids,
        vec![old_first, old_second],
        "old unpublished rows, oldest first; the fresh one is left to its writer"
    );
    store::mark_published(&mut tx, &ids).await.unwrap();
    tx.commit().await.unwrap();
    let mut connection = db.acquire().await.unwrap();
    assert!(
        store::unpublished(&mut connection, Duration::from_secs(5), 100)
            .await
            .unwrap()
            .is_empty()
    );
    drop(connection);

    let pruned = store::prune_outbox(db, Duration::from_secs(3600), 100).await.unwrap();
    assert_eq!(pruned, 1);
    let left: Vec<i64> = sqlx::query_scalar("SELECT outbox_id FROM outbox ORDER BY outbox_id")
        .fetch_all(db)
        .await
        .unwrap();
    assert!(!left.contains(&published_long_ago));
    assert!(left.contains(&published_recently) && left.contains(&fresh));
}
