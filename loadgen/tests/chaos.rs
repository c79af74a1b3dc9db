//! `loadgen::chaos` against a real, isolated Floodgate (the harness in `support`): each fault
//! hits the process it is meant for, and the deployment recovers from it.

mod support;

use std::{future::Future, time::Duration};

use loadgen::chaos::{self, Deployment, Process};
use support::Floodgate;

/// Polls `check` every 250 ms until it gives a value, for at most `limit`.
async fn eventually<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(tokio::time::Instant::now() < deadline, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The single writer of `show`, poking its queue so that RabbitMQ delivers to (and thereby
/// activates) its single active consumer.
async fn the_writer(floodgate: &Floodgate, deployment: &Deployment, show: common::ids::ShowId) -> Process {
    eventually(Duration::from_secs(20), "a booking-worker writes the show", || async {
        floodgate.poke(show).await;
        let mut writers = deployment.writers(show).await;
        (writers.len() == 1).then(|| writers.remove(0))
    })
    .await
}

async fn is_ready(process: &Process) -> bool {
    let url = process.ready_url.as_deref().expect("the process has a readiness check");
    matches!(reqwest::get(url).await, Ok(response) if response.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_chaos_fault_hits_the_process_it_names_and_floodgate_recovers_from_it() {
    let floodgate = Floodgate::start().await;
    let deployment = floodgate.deployment();
    let names: Vec<String> = deployment.processes().into_iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "booking-worker",
            "booking-worker-1",
            "gateway-simulator",
            "ingress",
            "notifier",
            "payment-worker",
            "smtp-sink",
            "waiting-room"
        ]
    );
    let show = floodgate.create_show(40).await;

    // The active booking-worker is killed; the standby takes over; the killed one comes back.
    let writer = the_writer(&floodgate, &deployment, show).await;
    let fault = deployment.kill_active_booking_worker(show).await.unwrap();
    eprintln!("[test] {fault:?}");
    assert_eq!((fault.process.as_str(), fault.pid), (writer.name.as_str(), writer.pid));
    let replacement = fault.new_pid.expect("the killed worker is started again");
    assert_ne!(replacement, writer.pid);
    let standby = if writer.name == "booking-worker" {
        "booking-worker-1"
    } else {
        "booking-worker"
    };
    let new_writer = the_writer(&floodgate, &deployment, show).await;
    assert_eq!(new_writer.name, standby, "the standby took over");
    eprintln!("[test] {standby} took over {:?} after the kill", fault.at.elapsed());
    let back = deployment.process(&writer.name).unwrap();
    assert_eq!(back.pid, replacement, "the pid file names the replacement");
    eventually(Duration::from_secs(30), "the killed worker is ready again", || async {
        is_ready(&back).await.then_some(())
    })
    .await;

    // Graceful restarts: new pids, ready when the call returns.
    for name in ["notifier", "payment-worker"] {
        let before = deployment.process(name).unwrap();
        let fault = deployment.restart(name).await.unwrap();
        eprintln!("[test] {fault:?}");
        let after = deployment.process(name).unwrap();
        assert_eq!(fault.pid, before.pid);
        assert_eq!(fault.new_pid, Some(after.pid));
        assert_ne!(after.pid, before.pid, "{name} runs as a new process");
        assert!(!chaos::is_running(before.pid), "the old {name} is gone");
        assert!(is_ready(&after).await, "{name} is ready after its restart");
    }

    // The admission controller holding the lease is stopped for the pause, then runs again.
    let holder = eventually(Duration::from_secs(10), "a controller holds the lease", || async {
        let mut holders = deployment.lease_holders(show).await;
        (holders.len() == 1).then(|| holders.remove(0))
    })
    .await;
    let pause = Duration::from_secs(3);
    let pausing = {
        let deployment = deployment.clone();
        tokio::spawn(async move { deployment.pause_admission_controller(show, pause).await })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(chaos::process_state(holder.pid), Some('T'), "stopped during the pause");
    let fault = pausing.await.unwrap().unwrap();
    eprintln!("[test] {fault:?}");
    assert_eq!((fault.process.as_str(), fault.pid), (holder.name.as_str(), holder.pid));
    assert!(fault.lasted_ms >= 3000, "the pause lasted {} ms", fault.lasted_ms);
    let state = chaos::process_state(holder.pid);
    assert!(
        matches!(state, Some('R' | 'S')),
        "runs again after the pause (state {state:?})"
    );
    eventually(
        Duration::from_secs(10),
        "the controller takes the lease again",
        || async {
            let holders = deployment.lease_holders(show).await;
            (holders.iter().map(|p| p.pid).collect::<Vec<_>>() == [holder.pid]).then_some(())
        },
    )
    .await;
}
