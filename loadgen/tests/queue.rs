//! `loadgen queue` end to end, small: the `loadgen` binary itself, run as two processes against
//! a real, isolated Floodgate with two ingress replicas (the harness in `support`). It creates
//! its show, joins and connects every fan, opens the room, and its merged result must show the
//! crowd held, positions heard after serving changes, fans admitted, and nobody admitted out of
//! turn or passed over.

mod support;

use serde_json::Value;
use support::{Floodgate, Options};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_hold_the_crowd_over_two_ingresses_and_hear_the_room_move() {
    let floodgate = Floodgate::start_with(Options {
        booking_workers: 1,
        ingresses: 2,
        ..Options::default()
    })
    .await;
    let out = tempfile_path("loadgen-queue-test");
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_loadgen"))
        .args(["queue", "--users", "400", "--processes", "2", "--first-fan", "7000000"])
        .args(["--admit-per-second", "20", "--hold-seconds", "8", "--seats", "500"])
        .arg(format!("--api={}", floodgate.api_urls.join(",")))
        .arg(format!("--admin-email={}", floodgate.admin_email))
        .arg(format!("--admin-password={}", floodgate.admin_password))
        .arg(format!("--database-url={}", floodgate.database_url))
        .arg(format!("--redis-url={}", floodgate.redis_url))
        .arg(format!("--redis-key-prefix={}", floodgate.redis_prefix))
        .arg(format!("--run-dir={}", floodgate.run_dir.display()))
        .arg("--out")
        .arg(&out)
        .output()
        .await
        .expect("loadgen runs");
    assert!(
        output.status.success(),
        "loadgen queue failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let result: Value = serde_json::from_slice(&std::fs::read(&out).expect("the result is written")).expect("JSON");
    let _ = std::fs::remove_file(&out);
    eprintln!("{result:#}");

    assert_eq!(result["processes"], 2);
    assert_eq!(result["ingress_processes"], 2, "both replicas are weighed");
    assert_eq!(result["joined"], 400);
    assert_eq!(result["websockets_open"], 400);
    assert_eq!(result["websocket_errors"], 0);
    assert!(result["handshake_retries"].as_u64().is_some());
    // The room was paused while the crowd connected, then admitted 20 a second for 8 s.
    let admitted = result["admitted"].as_u64().expect("a count");
    assert!((60..=200).contains(&admitted), "admitted {admitted}");
    assert_eq!(result["admitted_before_their_turn"], 0);
    assert_eq!(result["passed_over"], 0);
    // Every fan still waiting heard the serving number move at least once.
    let heard = result["serving_to_position"]["count"].as_u64().expect("a count");
    assert!(
        heard >= 400 - admitted,
        "{heard} position messages after serving changes"
    );
    assert!(result["position_staleness"]["count"].as_u64() >= Some(400 - admitted));
    assert!(
        result["ingress_bytes_per_connection"]
            .as_f64()
            .is_some_and(|bytes| bytes > 0.0)
    );
    assert!(result["ingress_cpu_cores"].as_f64().is_some_and(|cores| cores > 0.0));
}

fn tempfile_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("{name}-{}.json", uuid::Uuid::now_v7()))
}
