//! The single writer through failures: a worker process killed or paused mid-stream, and
//! PostgreSQL restarting under a running worker. Each test streams hold requests for contended
//! seats on one confirm channel (so the queue order is the publish order), breaks something in
//! the middle, keeps streaming, and then checks that every request has exactly one result, that
//! the results are what a replay in queue order gives, that no seat is sold twice and that the
//! Redis snapshot says what PostgreSQL says.
//!
//! Worker processes are the real binary, started by the test and killed when it ends (even on
//! a panic); their JSON logs are read back to see who is active and who stood down.

mod support;

use std::{
    collections::{HashMap, HashSet},
    io::{BufRead as _, BufReader},
    ops::Range,
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use common::{
    contracts::{Envelope, HoldSeats},
    ids::{BookingId, CommandId, SeatId, ShowId, UserId},
    mq::Publisher,
};
use support::{Harness, TestShow, seats, seed_users};

/// Hold requests per test: enough for the stream to outlast the failure.
const REQUESTS: usize = 900;
/// Requests published back to back before the publisher waits for their confirms and paces.
const CHUNK: usize = 8;
/// Pause between chunks of a paced stream: about 300 requests a second, slower than a worker
/// applies them.
const PACE: Duration = Duration::from_millis(25);
/// A burst: as fast as the broker confirms, faster than a worker applies them, so the worker has
/// a backlog and is mid-batch (applying, committing, publishing, acknowledging) when it fails.
const BURST: Duration = Duration::ZERO;

// ---------------------------------------------------------------------------------------------
// Tests

#[tokio::test]
async fn the_standby_takes_over_when_the_active_worker_is_killed_and_every_accepted_request_has_one_result() {
    let mut harness = Harness::new().await;
    let show = harness.show(20, 30, 4).await;
    let users = seed_users(harness.db(), REQUESTS).await;
    harness.stamp_results_with_writer_epochs().await;
    let requests = Arc::new(hold_requests(&show, &users));
    let commands: Vec<CommandId> = requests.iter().map(|r| r.command).collect();
    let amqp = amqp_url(None);
    let mut workers = Workers(vec![
        WorkerProcess::spawn("worker-a", &harness.worker_env(&amqp)),
        WorkerProcess::spawn("worker-b", &harness.worker_env(&amqp)),
    ]);
    workers.wait_until_all_subscribed().await;

    let mut commits = Commits::listen(&harness).await;
    let stream = Stream::new(&harness, show.show, &requests);
    let burst = stream.publish(0..REQUESTS / 2, BURST);
    let publishing = stream.publish(REQUESTS / 2..REQUESTS, PACE);
    wait_for_results(&harness, &commands, REQUESTS / 6, "a sixth of the results").await;
    let active = workers.the_active_one().await;
    let published_at_kill = stream.published();
    let answered_at_kill = harness.count_results(&commands).await.unwrap() as usize;
    // Right after a commit, before the batch is acknowledged: the standby gets that batch
    // again and must answer it from the store, not apply it twice.
    commits.wait_for_the_next().await;
    workers.0[active].kill();
    eprintln!("[test] killed the writer with {answered_at_kill} answered of {published_at_kill} published");
    assert!(
        published_at_kill < REQUESTS && answered_at_kill + 64 < published_at_kill,
        "the kill landed mid-stream, with a backlog ({answered_at_kill} answered of {published_at_kill} published)"
    );
    burst.await.unwrap();
    publishing.await.unwrap();

    let results = harness.results(&commands).await;
    let winners = assert_queue_order(&requests, &results);
    assert!(
        winners >= 100,
        "seats stayed contended but winnable ({winners} winners)"
    );
    let standby = 1 - active;
    assert_eq!(
        workers.0[standby].logged("became the show's writer"),
        1,
        "the standby took over once"
    );
    assert_eq!(
        harness.writer_epoch(show.show).await,
        Some(2),
        "one takeover per activation"
    );
    let by_epoch = harness.assert_results_written_by_the_current_writer(show.show).await;
    eprintln!("[test] {winners} winners; results by writer epoch: {by_epoch:?}");
    assert_eq!(
        by_epoch.iter().map(|(epoch, _)| *epoch).collect::<Vec<_>>(),
        [1, 2],
        "both writers wrote results: {by_epoch:?}"
    );
    harness.assert_one_booking_per_command(show.show).await;
    harness.assert_nothing_dead_lettered().await;
    harness.assert_no_double_booking(show.show).await;
    harness.assert_snapshot_matches_database(show.show).await;
    drop(workers);
    harness.stop().await;
}

#[tokio::test]
async fn a_paused_writer_is_fenced_when_it_wakes_and_commits_nothing() {
    let mut harness = Harness::new().await;
    let show = harness.show(20, 30, 4).await;
    let users = seed_users(harness.db(), REQUESTS).await;
    harness.stamp_results_with_writer_epochs().await;
    let requests = Arc::new(hold_requests(&show, &users));
    let commands: Vec<CommandId> = requests.iter().map(|r| r.command).collect();
    // A short heartbeat makes RabbitMQ notice the paused worker within a few seconds and hand
    // its queue (and its unacknowledged deliveries) to the standby.
    let amqp = amqp_url(Some(2));
    let workers = Workers(vec![
        WorkerProcess::spawn("worker-a", &harness.worker_env(&amqp)),
        WorkerProcess::spawn("worker-b", &harness.worker_env(&amqp)),
    ]);
    workers.wait_until_all_subscribed().await;

    let stream = Stream::new(&harness, show.show, &requests);
    let first_part = REQUESTS * 2 / 5;
    let publishing = stream.publish(0..first_part, PACE);
    wait_for_results(&harness, &commands, REQUESTS / 6, "a sixth of the results").await;
    let active = workers.the_active_one().await;
    let standby = 1 - active;
    let epoch_before = harness.writer_epoch(show.show).await.unwrap();
    pause_inside_a_batch_transaction(&workers.0[active], &harness).await;
    let paused_at = Instant::now();
    publishing.await.unwrap();

    // The standby takes over: it bumps the epoch (which it can only do once PostgreSQL has
    // ended the paused writer's transaction and released the show row) and writes results.
    let deadline = Deadline::after(Duration::from_secs(25), "the standby takes over from the paused worker");
    while harness.writer_epoch(show.show).await.unwrap() <= epoch_before {
        deadline.check_with(|| pg_activity_report(&harness)).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let publishing = stream.publish(first_part..REQUESTS, PACE);
    let written = harness.count_results(&commands).await.unwrap();
    let deadline = Deadline::after(Duration::from_secs(15), "the standby writes results");
    while harness.count_results(&commands).await.unwrap() <= written {
        deadline.check().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!("[test] the standby took over {:?} after the pause", paused_at.elapsed());
    assert_eq!(workers.0[standby].logged("became the show's writer"), 1);

    // Wake the paused worker while the stream goes on: whatever it still holds must not land.
    let lines_before_wake = workers.0[active].lines().len();
    workers.0[active].signal("CONT");
    publishing.await.unwrap();
    let results = harness.results(&commands).await;

    // It stood down (fenced, or its channel found gone) and subscribed again, as a standby:
    // it must not take the show back from the rightful writer.
    let deadline = Deadline::after(
        Duration::from_secs(15),
        "the paused worker subscribes again after waking",
    );
    loop {
        let woke: Vec<String> = workers.0[active].lines()[lines_before_wake..]
            .iter()
            .map(message)
            .collect();
        if woke.iter().any(|m| m.starts_with("subscribed to the show queue")) {
            eprintln!("[test] the paused worker, on waking: {woke:?}");
            break;
        }
        deadline.check().await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        workers.0[active].logged("became the show's writer"),
        1,
        "the woken worker took the show over again, fencing the rightful writer"
    );
    assert_eq!(
        workers.0[standby].logged("fenced"),
        0,
        "the rightful writer was never fenced"
    );

    let winners = assert_queue_order(&requests, &results);
    assert!(
        winners >= 100,
        "seats stayed contended but winnable ({winners} winners)"
    );
    let by_epoch = harness.assert_results_written_by_the_current_writer(show.show).await;
    eprintln!("[test] {winners} winners; results by writer epoch: {by_epoch:?}");
    assert_eq!(
        by_epoch.iter().map(|(epoch, _)| *epoch).collect::<Vec<_>>(),
        [1, 2],
        "the paused writer and the standby wrote results, nobody else: {by_epoch:?}"
    );
    assert_eq!(harness.writer_epoch(show.show).await, Some(2));
    harness.assert_one_booking_per_command(show.show).await;
    harness.assert_nothing_dead_lettered().await;
    harness.assert_no_double_booking(show.show).await;
    harness.assert_snapshot_matches_database(show.show).await;
    drop(workers);
    harness.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgresql_restarting_mid_stream_loses_no_accepted_request_and_keeps_queue_order() {
    // The in-process worker's logs, with the test's output.
    common::telemetry::init("booking-worker", common::config::LogFormat::Text);
    let postgres = PrivatePostgres::start();
    let url = postgres.create_database("floodgate_failover").await;
    let mut harness = Harness::on_database(&url).await;
    common::db::migrate(harness.db()).await.unwrap();
    let show = harness.show(20, 30, 4).await;
    let users = seed_users(harness.db(), REQUESTS).await;
    let requests = Arc::new(hold_requests(&show, &users));
    let commands: Vec<CommandId> = requests.iter().map(|r| r.command).collect();
    harness.start_worker().await;

    let stream = Stream::new(&harness, show.show, &requests);
    let burst = stream.publish(0..REQUESTS / 2, BURST);
    let publishing = stream.publish(REQUESTS / 2..REQUESTS, PACE);
    wait_for_results(&harness, &commands, REQUESTS / 6, "a sixth of the results").await;
    let failures_before = transient_failures();
    // Down for longer than the pool waits for a connection (5 s), while the stream goes on: the
    // worker's batches fail and are retried, and a commit in flight at the stop is one whose
    // fate it cannot know.
    let stopped_with = harness.count_results(&commands).await.unwrap_or_default();
    let published_at_stop = stream.published();
    postgres.stop_for(Duration::from_secs(6)).await;
    assert!(
        published_at_stop < REQUESTS,
        "the restart landed mid-stream ({published_at_stop} of {REQUESTS} published)"
    );
    burst.await.unwrap();
    publishing.await.unwrap();

    let results = harness.results(&commands).await;
    assert!(
        transient_failures() > failures_before,
        "the worker saw the outage (its batches failed and were retried)"
    );
    eprintln!("[test] {stopped_with} results before the stop; the rest after");
    let winners = assert_queue_order(&requests, &results);
    assert!(
        winners >= 100,
        "seats stayed contended but winnable ({winners} winners)"
    );
    assert!(
        harness.writer_epoch(show.show).await > Some(1),
        "the worker dropped its state and took the show over again after the outage"
    );
    harness.assert_one_booking_per_command(show.show).await;
    harness.assert_nothing_dead_lettered().await;
    harness.assert_no_double_booking(show.show).await;
    harness.assert_snapshot_matches_database(show.show).await;
    harness.stop().await;
    drop(postgres);
}

// ---------------------------------------------------------------------------------------------
// Requests and the queue-order model

/// One hold request of the stream, encoded once.
struct Request {
    command: CommandId,
    seats: Vec<SeatId>,
    message_id: String,
    body: Vec<u8>,
}

/// One request per fan, for one to three seats picked pseudo-randomly (the same every run)
/// among all of the show's: about two seats asked per request against two thirds as many
/// seats as requests, so the seats run out gradually and most requests contend with earlier
/// ones.
fn hold_requests(show: &TestShow, users: &[UserId]) -> Vec<Request> {
    let mut random = 0x5eed_f100_d9a7_e000_u64;
    let mut next = move || {
        // SplitMix64.
        random = random.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = random;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    users
        .iter()
        .map(|user| {
            let take = 1 + (next() % 3) as usize;
            let mut wanted: Vec<SeatId> = Vec::with_capacity(take);
            while wanted.len() < take {
                let seat = show.seats[(next() % show.seats.len() as u64) as usize];
                if !wanted.contains(&seat) {
                    wanted.push(seat);
                }
            }
            let command = CommandId::new();
            let envelope = Envelope::new(
                Some(show.show),
                HoldSeats {
                    command_id: command,
                    user_id: *user,
                    selection: seats(&wanted),
                    promo_code: None,
                },
            );
            Request {
                command,
                seats: wanted,
                message_id: envelope.message_id.to_string(),
                body: serde_json::to_vec(&envelope).unwrap(),
            }
        })
        .collect()
}

/// Replays the requests in queue order against a model of the seats: a request wins iff all
/// its seats are still free. Every result must say exactly that. Returns the winners.
fn assert_queue_order(
    requests: &[Request],
    results: &HashMap<CommandId, (Option<BookingId>, Option<String>)>,
) -> usize {
    let mut taken: HashSet<SeatId> = HashSet::new();
    let mut winners = 0;
    for (position, request) in requests.iter().enumerate() {
        let (booking, code) = &results[&request.command];
        if request.seats.iter().all(|seat| !taken.contains(seat)) {
            assert!(
                booking.is_some(),
                "request #{position} ({}) should have won its seats in queue order, got {code:?}",
                request.command
            );
            taken.extend(request.seats.iter().copied());
            winners += 1;
        } else {
            assert!(
                booking.is_none() && code.as_deref() == Some("seats_unavailable"),
                "request #{position} ({}) came after its seats were taken, got {booking:?} {code:?}",
                request.command
            );
        }
    }
    winners
}

/// Publishes requests on one confirm channel, in order.
struct Stream {
    publisher: Publisher,
    exchange: String,
    routing_key: String,
    requests: Arc<Vec<Request>>,
    published: Arc<AtomicUsize>,
    /// Says when the publication asked last is done: the next one waits for it.
    previous: Mutex<Option<tokio::sync::oneshot::Receiver<()>>>,
}

impl Stream {
    fn new(harness: &Harness, show: ShowId, requests: &Arc<Vec<Request>>) -> Self {
        Self {
            publisher: harness.publisher.clone(),
            exchange: harness.topology.shows_exchange(),
            routing_key: show.to_string(),
            requests: Arc::clone(requests),
            published: Arc::new(AtomicUsize::new(0)),
            previous: Mutex::new(None),
        }
    }

    /// How many requests the broker has confirmed.
    fn published(&self) -> usize {
        self.published.load(Ordering::SeqCst)
    }

    /// Publishes `range` in the background, `pace` between chunks, once the publications
    /// asked before are done: one channel, sent in order, is what makes the queue order the
    /// request order.
    fn publish(&self, range: Range<usize>, pace: Duration) -> tokio::task::JoinHandle<()> {
        let publisher = self.publisher.clone();
        let exchange = self.exchange.clone();
        let routing_key = self.routing_key.clone();
        let requests = Arc::clone(&self.requests);
        let published = Arc::clone(&self.published);
        let (done, next) = tokio::sync::oneshot::channel();
        let previous = self.previous.lock().unwrap().replace(next);
        tokio::spawn(async move {
            if let Some(previous) = previous {
                previous.await.expect("the previous publication completed");
            }
            for chunk in requests[range].chunks(CHUNK) {
                let mut confirms = Vec::with_capacity(chunk.len());
                for request in chunk {
                    let properties = lapin::BasicProperties::default()
                        .with_content_type("application/json".into())
                        .with_delivery_mode(2)
                        .with_message_id(request.message_id.as_str().into())
                        .with_type("HoldSeats".into());
                    let confirm = publisher
                        .channel()
                        .basic_publish(
                            exchange.as_str().into(),
                            routing_key.as_str().into(),
                            lapin::options::BasicPublishOptions {
                                mandatory: true,
                                ..Default::default()
                            },
                            &request.body,
                            properties,
                        )
                        .await
                        .unwrap();
                    confirms.push(confirm);
                }
                for confirm in confirms {
                    let confirmation = confirm.await.unwrap();
                    assert!(
                        matches!(confirmation, lapin::Confirmation::Ack(None)),
                        "the broker accepted and routed the request: {confirmation:?}"
                    );
                }
                published.fetch_add(chunk.len(), Ordering::SeqCst);
                if !pace.is_zero() {
                    tokio::time::sleep(pace).await;
                }
            }
            let _ = done.send(());
        })
    }
}

/// Waits until at least `count` of `commands` have a result (riding out database outages).
async fn wait_for_results(harness: &Harness, commands: &[CommandId], count: usize, what: &str) {
    let deadline = Deadline::after(Duration::from_secs(20), what);
    while harness.count_results(commands).await.unwrap_or_default() < count as i64 {
        deadline.check().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Panics once its time is up.
struct Deadline {
    at: Instant,
    what: String,
}

impl Deadline {
    fn after(timeout: Duration, what: &str) -> Self {
        Self {
            at: Instant::now() + timeout,
            what: what.to_owned(),
        }
    }

    async fn check(&self) {
        self.check_with(|| async { String::new() }).await;
    }

    /// Like `check`, with a report of the situation in the panic message.
    async fn check_with<F, R>(&self, report: F)
    where
        F: FnOnce() -> R,
        R: Future<Output = String>,
    {
        if Instant::now() > self.at {
            let report = report().await;
            panic!("timed out waiting until {} {report}", self.what);
        }
    }
}

/// What the test database's sessions are doing (a takeover blocked on a lock shows here).
async fn pg_activity_report(harness: &Harness) -> String {
    let rows: Vec<(Option<String>, Option<String>, Option<String>)> = sqlx::query_as(
        "SELECT state, wait_event_type, left(query, 80) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_all(harness.db())
    .await
    .unwrap_or_default();
    format!("; sessions of the test database: {rows:?}")
}

/// Hears of every commit that writes hold results, as it happens.
struct Commits(sqlx::postgres::PgListener);

impl Commits {
    async fn listen(harness: &Harness) -> Self {
        sqlx::raw_sql(
            "CREATE FUNCTION test_notify_results() RETURNS trigger LANGUAGE plpgsql AS $$
             BEGIN
                 PERFORM pg_notify('test_results', '');
                 RETURN NULL;
             END $$;
             CREATE TRIGGER test_notify_results AFTER INSERT ON hold_request
                 FOR EACH STATEMENT EXECUTE FUNCTION test_notify_results();",
        )
        .execute(harness.db())
        .await
        .unwrap();
        let mut listener = sqlx::postgres::PgListener::connect_with(harness.db()).await.unwrap();
        listener.listen("test_results").await.unwrap();
        Self(listener)
    }

    /// Returns as soon as the next commit after this call is known (notifications are
    /// delivered at commit).
    async fn wait_for_the_next(&mut self) {
        while self.0.next_buffered().is_some() {}
        tokio::time::timeout(Duration::from_secs(10), self.0.recv())
            .await
            .expect("a batch commits within 10 s")
            .unwrap();
    }
}

/// Pauses `worker` (SIGSTOP) inside one of its batch transactions, after the fence has taken
/// the show row lock: the moment a stalled writer can block the next writer's take-over. A
/// pause that misses it (the transaction ended first) is undone at once and tried again.
async fn pause_inside_a_batch_transaction(worker: &WorkerProcess, harness: &Harness) {
    // A session in a batch transaction that has written (so holds the show row): the relay's
    // outbox sweep, the only other writing transaction, is left out.
    const IN_A_BATCH: &str = "SELECT count(*) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid() AND state LIKE $1
           AND backend_xid IS NOT NULL
           AND query NOT LIKE 'SELECT outbox_id%' AND query NOT LIKE 'UPDATE outbox SET published_at%'";
    let in_a_batch = |state: &'static str| async move {
        sqlx::query_scalar::<_, i64>(IN_A_BATCH)
            .bind(state)
            .fetch_one(harness.db())
            .await
            .unwrap()
            > 0
    };
    let deadline = Deadline::after(Duration::from_secs(15), "a pause lands inside a batch transaction");
    for attempt in 1.. {
        while !in_a_batch("%").await {
            deadline.check().await;
        }
        worker.signal("STOP");
        // Long enough for a live transaction to have ended; this one is frozen mid-way.
        tokio::time::sleep(Duration::from_millis(30)).await;
        if in_a_batch("idle in transaction").await {
            eprintln!("[test] paused inside a batch transaction at attempt {attempt}");
            return;
        }
        worker.signal("CONT");
        deadline.check().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn transient_failures() -> u64 {
    prometheus::gather()
        .iter()
        .filter(|family| family.name() == "floodgate_booking_transient_failures_total")
        .flat_map(|family| family.get_metric())
        .map(|metric| metric.get_counter().get_value() as u64)
        .sum()
}

// ---------------------------------------------------------------------------------------------
// Worker processes

/// `AMQP_URL` for a child process, with a heartbeat interval (seconds) if asked.
fn amqp_url(heartbeat: Option<u16>) -> String {
    let url = common::config::env_string("AMQP_URL", common::config::defaults::AMQP_URL);
    match heartbeat {
        None => url,
        Some(seconds) if url.contains('?') => format!("{url}&heartbeat={seconds}"),
        Some(seconds) => format!("{url}?heartbeat={seconds}"),
    }
}

/// A `booking-worker` child process; its log lines are echoed (prefixed with its name) and
/// kept. Killed when dropped.
struct WorkerProcess {
    name: &'static str,
    child: Child,
    lines: Arc<Mutex<Vec<serde_json::Value>>>,
}

impl WorkerProcess {
    fn spawn(name: &'static str, env: &[(&'static str, String)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_booking-worker"))
            .envs(env.iter().map(|(key, value)| (*key, value.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the booking-worker binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                eprintln!("[{name}] {line}");
                let value = serde_json::from_str(&line).unwrap_or(serde_json::Value::String(line));
                kept.lock().unwrap().push(value);
            }
        });
        Self { name, child, lines }
    }

    fn lines(&self) -> Vec<serde_json::Value> {
        self.lines.lock().unwrap().clone()
    }

    /// How many log lines have a message starting with `prefix`.
    fn logged(&self, prefix: &str) -> usize {
        self.lines()
            .iter()
            .filter(|line| message(line).starts_with(prefix))
            .count()
    }

    /// Sends `SIGSTOP`, `SIGCONT`... by name.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {}", self.name);
        eprintln!("[test] sent SIG{signal} to {} (pid {})", self.name, self.child.id());
    }

    /// `SIGKILL`, and reaps it.
    fn kill(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
            eprintln!("[test] killed {} (pid {})", self.name, self.child.id());
        }
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

fn message(line: &serde_json::Value) -> String {
    match line {
        serde_json::Value::String(raw) => raw.clone(),
        line => line["message"].as_str().unwrap_or_default().to_owned(),
    }
}

/// The test's worker processes.
struct Workers(Vec<WorkerProcess>);

impl Workers {
    /// Every process has subscribed to the show's queue (the first to do so is the one RabbitMQ
    /// makes active).
    async fn wait_until_all_subscribed(&self) {
        let deadline = Deadline::after(Duration::from_secs(20), "every worker process subscribes to the show");
        while self
            .0
            .iter()
            .any(|worker| worker.logged("subscribed to the show queue") == 0)
        {
            deadline.check().await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The index of the one process that became the show's writer (results are being written,
    /// so one has; its log line may still be in the pipe).
    async fn the_active_one(&self) -> usize {
        let deadline = Deadline::after(Duration::from_secs(5), "a worker process says it is the writer");
        loop {
            let active: Vec<usize> = (0..self.0.len())
                .filter(|i| self.0[*i].logged("became the show's writer") > 0)
                .collect();
            assert!(active.len() <= 1, "two worker processes became the writer");
            if let [active] = active[..] {
                return active;
            }
            deadline.check().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

// ---------------------------------------------------------------------------------------------
// A private PostgreSQL cluster

/// A PostgreSQL cluster of this test's own, in a temporary directory, so the test can stop and
/// start it; stopped and deleted when dropped.
struct PrivatePostgres(Cluster);

/// Where the private cluster lives and how to drive it.
#[derive(Clone)]
struct Cluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    /// Running as root: PostgreSQL refuses to, so its commands run as `postgres`.
    as_postgres: bool,
}

impl PrivatePostgres {
    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL server binaries under /usr/lib/postgresql")
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
            .max()
            .map(|version| PathBuf::from(format!("/usr/lib/postgresql/{version}/bin")))
            .expect("a PostgreSQL version under /usr/lib/postgresql");
        let dir = std::env::temp_dir().join(format!("floodgate-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let as_postgres = std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap()) == 0;
        // A port free now; the cluster takes it a moment later.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let cluster = Cluster {
            dir,
            bin,
            port,
            as_postgres,
        };
        // The guard exists before anything can fail, so the directory is always deleted.
        let postgres = Self(cluster.clone());
        if as_postgres {
            run(Command::new("chown").arg("postgres:postgres").arg(&cluster.dir));
        }
        run(cluster
            .command("initdb")
            .args([
                "--auth=trust",
                "--username=postgres",
                "--no-sync",
                "--encoding=UTF8",
                "--pgdata",
            ])
            .arg(cluster.data()));
        cluster.pg_ctl("start");
        postgres
    }

    /// Stops the cluster (fast: sessions are ended, transactions in flight abort), leaves it
    /// down for `down`, and starts it again.
    async fn stop_for(&self, down: Duration) {
        let cluster = self.0.clone();
        tokio::task::spawn_blocking(move || {
            cluster.pg_ctl("stop");
            eprintln!("[test] PostgreSQL stopped");
            std::thread::sleep(down);
            cluster.pg_ctl("start");
            eprintln!("[test] PostgreSQL started again");
        })
        .await
        .unwrap();
    }

    /// Creates a database; returns its URL.
    async fn create_database(&self, name: &str) -> String {
        use sqlx::Connection as _;
        let mut admin = sqlx::PgConnection::connect(&self.0.url("postgres")).await.unwrap();
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .unwrap();
        admin.close().await.ok();
        self.0.url(name)
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let mut stop = self.0.command("pg_ctl");
        stop.arg("stop")
            .args(["--mode", "immediate", "--wait", "--pgdata"])
            .arg(self.0.data());
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
        if let Err(err) = std::fs::remove_dir_all(&self.0.dir) {
            eprintln!("could not delete {}: {err}", self.0.dir.display());
        }
    }
}

impl Cluster {
    fn data(&self) -> PathBuf {
        self.dir.join("data")
    }

    fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn command(&self, program: &str) -> Command {
        let program = self.bin.join(program);
        if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        }
    }

    /// `pg_ctl start` or `pg_ctl stop` (fast), waiting until done.
    fn pg_ctl(&self, action: &str) {
        let mut command = self.command("pg_ctl");
        command
            .arg(action)
            .arg("--wait")
            .arg("--pgdata")
            .arg(self.data())
            .arg("--log")
            .arg(self.dir.join("postgresql.log"));
        if action == "start" {
            // fsync off: the machine does not crash in this test, only PostgreSQL stops.
            command.arg("-o").arg(format!(
                "-p {} -k {} -c listen_addresses=127.0.0.1 -c fsync=off",
                self.port,
                self.dir.display()
            ));
        } else {
            command.args(["--mode", "fast"]);
        }
        run(&mut command);
    }
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|err| panic!("{command:?}: {err}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
