//! `loadgen queue`: the waiting-room benchmark.
//!
//! Fans log in, join the show's room over HTTP and each holds a WebSocket, with source
//! addresses spread over 127.0.0.1..=127.0.0.N so one process can exceed one address's
//! ephemeral ports. Loadgen also subscribes to the room's Redis channel, so it knows when each
//! serving number was published and measures, per fan message, the time from a serving change
//! to the fan hearing about it, and from the fan's turn to its `admitted` message.
//!
//! Correctness counters: `admitted_before_their_turn` (a fan admitted with a number the
//! admitter never reached: must be 0) and `passed_over` (a connected fan whose number was
//! reached more than ten seconds before the end but who was never admitted: must be 0 too,
//! since every fan here keeps heart-beating).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::Context as _;
use futures::StreamExt as _;
use serde::Serialize;
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _, protocol::WebSocketConfig};
use waiting_room::{controller::RoomUpdate, keys::Keys};

use crate::{
    fans,
    report::{Latency, Summary, bar, resident_bytes},
};

/// `loadgen queue` options.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// The API's base URL; several (comma-separated) spread the fans over ingress replicas.
    #[arg(long, default_value = "http://127.0.0.1:8080", value_delimiter = ',')]
    api: Vec<String>,
    /// Fans to run.
    #[arg(long)]
    users: usize,
    /// The show whose waiting room they join (on sale, or in its pre-queue).
    #[arg(long)]
    show: common::ids::ShowId,
    /// Number of the first fan account (several loadgen processes use disjoint ranges).
    #[arg(long, default_value_t = 0)]
    first_fan: usize,
    /// The deployment's database (fan accounts are seeded there).
    #[arg(long, env = "DATABASE_URL", default_value = common::config::defaults::DATABASE_URL)]
    database_url: String,
    /// The deployment's Redis (to timestamp serving-number changes).
    #[arg(long, env = "REDIS_URL", default_value = common::config::defaults::REDIS_URL)]
    redis_url: String,
    /// The deployment's Redis key prefix.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "")]
    redis_key_prefix: String,
    /// HTTP requests and WebSocket handshakes in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Source addresses to spread sockets over (127.0.0.1..=127.0.0.N).
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Seconds to keep the sockets open once everyone has joined.
    #[arg(long, default_value_t = 20)]
    hold_seconds: u64,
    /// The ingress processes to measure memory of (default: `.run/ingress.pid`).
    #[arg(long, value_delimiter = ',')]
    ingress_pid: Vec<u32>,
    /// Where to write the JSON result.
    #[arg(long, default_value = "loadgen-queue.json")]
    out: PathBuf,
}

/// How long after a fan's turn its `admitted` message may take before the fan counts as passed
/// over (well above the 1 s coalescing and the observed p99).
const SETTLE: Duration = Duration::from_secs(10);

/// Serving numbers as loadgen saw them published.
#[derive(Default)]
pub struct Served {
    /// serving number -> when loadgen first saw it.
    pub seen: BTreeMap<u64, Instant>,
}

impl Served {
    /// When the admitter first reached `number`.
    pub fn reached(&self, number: u64) -> Option<Instant> {
        self.seen.range(number..).next().map(|(_, at)| *at)
    }

    pub fn highest(&self) -> u64 {
        self.seen.keys().next_back().copied().unwrap_or(0)
    }
}

#[derive(Default)]
struct FanStats {
    position_latency: Latency,
    admission_lag: Latency,
    admitted: Vec<u64>,
    messages: u64,
    errors: u64,
}

/// The JSON result.
#[derive(Serialize)]
struct QueueResult {
    users: usize,
    joined: usize,
    join_seconds: f64,
    joins_per_second: f64,
    join_latency: Summary,
    websockets_open: usize,
    connect_seconds: f64,
    serving_to_position: Summary,
    turn_to_admitted: Summary,
    admitted: usize,
    admitted_before_their_turn: usize,
    passed_over: usize,
    websocket_messages: u64,
    websocket_errors: u64,
    ingress_rss_before_bytes: Option<u64>,
    ingress_rss_holding_bytes: Option<u64>,
    ingress_bytes_per_connection: Option<f64>,
}

/// Runs the benchmark and writes the result.
pub async fn run(args: QueueArgs) -> anyhow::Result<()> {
    // Sockets are files: take every descriptor the hard limit allows.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    tracing::info!(open_files = limit, "file descriptor limit");
    let ingress_pids: Vec<u32> = if args.ingress_pid.is_empty() {
        std::fs::read_to_string(".run/ingress.pid")
            .ok()
            .and_then(|pid| pid.trim().parse().ok())
            .into_iter()
            .collect()
    } else {
        args.ingress_pid.clone()
    };
    let rss = || -> Option<u64> { ingress_pids.iter().map(|pid| resident_bytes(*pid)).sum() };
    let api_of = |index: usize| args.api[index % args.api.len()].as_str();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .build()?;

    fans::ensure_accounts(&args.database_url, args.first_fan, args.users).await?;
    let progress = bar(args.users, "login");
    let fans = fans::log_in(
        &client,
        api_of(0),
        args.first_fan,
        args.users,
        args.concurrency,
        &progress,
    )
    .await?;
    progress.finish();

    // Timestamp every serving number as it is published.
    let served = Arc::new(Mutex::new(Served::default()));
    let channel = Keys::new(&args.redis_key_prefix, args.show).channel;
    let mut pubsub = redis::Client::open(args.redis_url.as_str())?.get_async_pubsub().await?;
    pubsub.subscribe(&channel).await?;
    let listener = {
        let served = Arc::clone(&served);
        tokio::spawn(async move {
            let mut messages = pubsub.into_on_message();
            while let Some(message) = messages.next().await {
                let Ok(payload) = message.get_payload::<String>() else {
                    continue;
                };
                if let Ok(update) = serde_json::from_str::<RoomUpdate>(&payload) {
                    served
                        .lock()
                        .expect("not poisoned")
                        .seen
                        .entry(update.serving)
                        .or_insert_with(Instant::now);
                }
            }
        })
    };

    // Join over HTTP, each fan through the ingress that will hold its socket.
    let progress = bar(fans.len(), "join");
    let started = Instant::now();
    let joins: Vec<(Option<u64>, Duration)> = futures::stream::iter(fans.iter().cloned())
        .map(|fan| {
            let client = client.clone();
            let url = Arc::new(format!("{}/api/v1/shows/{}/queue", api_of(fan.index), args.show));
            async move {
                let begun = Instant::now();
                let number = match client.post(url.as_str()).bearer_auth(&fan.access_token).send().await {
                    Ok(response) => response
                        .json::<serde_json::Value>()
                        .await
                        .ok()
                        .and_then(|body| body["number"].as_u64()),
                    Err(_) => None,
                };
                (number, begun.elapsed())
            }
        })
        .buffered(args.concurrency)
        .inspect(|_| progress.inc(1))
        .collect()
        .await;
    let join_seconds = started.elapsed().as_secs_f64();
    progress.finish();
    let mut join_latency = Latency::default();
    for (_, elapsed) in &joins {
        join_latency.record(*elapsed);
    }
    let joined = joins.iter().filter(|(number, _)| number.is_some()).count();

    // Hold one WebSocket per fan.
    let rss_before = rss();
    let mut hosts = Vec::new();
    for api in &args.api {
        let host: SocketAddr = tokio::net::lookup_host(api.trim_start_matches("http://"))
            .await?
            .next()
            .context("cannot resolve the API host")?;
        hosts.push((
            host,
            format!(
                "{}/api/v1/shows/{}/queue/ws",
                api.replace("http://", "ws://"),
                args.show
            ),
        ));
    }
    let deadline = Arc::new(tokio::sync::Notify::new());
    let stats = Arc::new(Mutex::new(FanStats::default()));
    let progress = bar(fans.len(), "connect");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(fans.len());
    let connects = futures::stream::iter(fans.iter().zip(&joins))
        .map(|(fan, (number, _))| {
            let (host, url) = hosts[fan.index % hosts.len()].clone();
            let source = Ipv4Addr::new(127, 0, 0, 1 + (fan.index % usize::from(args.sources.max(1))) as u8);
            let token = fan.access_token.clone();
            let number = *number;
            async move { (connect(host, source, &url, &token).await, number) }
        })
        .buffer_unordered(args.concurrency);
    futures::pin_mut!(connects);
    let mut open = 0;
    while let Some((socket, number)) = connects.next().await {
        progress.inc(1);
        let Ok(socket) = socket else {
            stats.lock().expect("not poisoned").errors += 1;
            continue;
        };
        open += 1;
        tasks.push(tokio::spawn(hold(
            socket,
            number,
            Arc::clone(&served),
            Arc::clone(&stats),
            Arc::clone(&deadline),
        )));
    }
    let connect_seconds = started.elapsed().as_secs_f64();
    progress.finish();
    // Let the sockets settle, then weigh ingress.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_holding = rss();
    tracing::info!(open, hold = args.hold_seconds, "holding the sockets");
    tokio::time::sleep(Duration::from_secs(args.hold_seconds)).await;
    let ended = Instant::now();
    deadline.notify_waiters();
    for task in tasks {
        let _ = task.await;
    }
    listener.abort();

    let stats = std::mem::take(&mut *stats.lock().expect("not poisoned"));
    let served = served.lock().expect("not poisoned");
    let highest = served.highest();
    let admitted: std::collections::HashSet<u64> = stats.admitted.iter().copied().collect();
    let result = QueueResult {
        users: args.users,
        joined,
        join_seconds,
        joins_per_second: joined as f64 / join_seconds,
        join_latency: join_latency.summary(),
        websockets_open: open,
        connect_seconds,
        serving_to_position: stats.position_latency.summary(),
        turn_to_admitted: stats.admission_lag.summary(),
        admitted: admitted.len(),
        admitted_before_their_turn: admitted.iter().filter(|number| **number > highest).count(),
        // Only turns that came well before the end count: a fan reached in the last seconds may
        // still have had its `admitted` message on the way.
        passed_over: joins
            .iter()
            .filter_map(|(number, _)| *number)
            .filter(|number| {
                served
                    .reached(*number)
                    .is_some_and(|at| ended.saturating_duration_since(at) > SETTLE)
                    && !admitted.contains(number)
            })
            .count(),
        websocket_messages: stats.messages,
        websocket_errors: stats.errors,
        ingress_rss_before_bytes: rss_before,
        ingress_rss_holding_bytes: rss_holding,
        ingress_bytes_per_connection: match (rss_before, rss_holding) {
            (Some(before), Some(holding)) if open > 0 => Some((holding.saturating_sub(before)) as f64 / open as f64),
            _ => None,
        },
    };
    let json = serde_json::to_string_pretty(&result)?;
    std::fs::write(&args.out, &json).with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{json}");
    Ok(())
}

pub(crate) type Socket = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

pub(crate) async fn connect(host: SocketAddr, source: Ipv4Addr, url: &str, token: &str) -> anyhow::Result<Socket> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(IpAddr::V4(source), 0))?;
    let stream = socket.connect(host).await?;
    let mut request = url.into_client_request()?;
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    // Small buffers: the load generator holds as many sockets as ingress does.
    let config = WebSocketConfig::default().read_buffer_size(4096).write_buffer_size(0);
    let (socket, _) = tokio_tungstenite::client_async_with_config(request, stream, Some(config)).await?;
    Ok(socket)
}

/// What one fan heard: raw samples, merged into the shared histograms at the end (a histogram
/// per fan would cost ~100 KB each, gigabytes for a crowd).
#[derive(Default)]
struct Heard {
    position_latency: Vec<Duration>,
    admission_lag: Vec<Duration>,
    admitted: Vec<u64>,
    messages: u64,
    errors: u64,
}

/// One fan's socket until the deadline: measures what it hears.
async fn hold(
    mut socket: Socket,
    number: Option<u64>,
    served: Arc<Mutex<Served>>,
    stats: Arc<Mutex<FanStats>>,
    deadline: Arc<tokio::sync::Notify>,
) {
    let mut local = Heard::default();
    let stop = deadline.notified();
    futures::pin_mut!(stop);
    loop {
        tokio::select! {
            message = socket.next() => {
                let Some(Ok(tungstenite::Message::Text(text))) = message else {
                    if message.is_none() || matches!(message, Some(Err(_))) {
                        local.errors += 1;
                        break;
                    }
                    continue;
                };
                let now = Instant::now();
                local.messages += 1;
                let Ok(body) = serde_json::from_str::<serde_json::Value>(&text) else { continue };
                match body["type"].as_str() {
                    Some("position") => {
                        let serving = body["serving"].as_u64().unwrap_or(0);
                        let seen = served.lock().expect("not poisoned").seen.get(&serving).copied();
                        if let Some(seen) = seen {
                            local.position_latency.push(now.saturating_duration_since(seen));
                        }
                    }
                    Some("admitted") => {
                        if let Some(number) = number {
                            local.admitted.push(number);
                            let reached = served.lock().expect("not poisoned").reached(number);
                            if let Some(reached) = reached {
                                local.admission_lag.push(now.saturating_duration_since(reached));
                            }
                        }
                    }
                    _ => {}
                }
            }
            () = &mut stop => break,
        }
    }
    let _ = socket.close(None).await;
    let mut shared = stats.lock().expect("not poisoned");
    for sample in local.position_latency {
        shared.position_latency.record(sample);
    }
    for sample in local.admission_lag {
        shared.admission_lag.record(sample);
    }
    shared.admitted.extend(local.admitted);
    shared.messages += local.messages;
    shared.errors += local.errors;
}
