//! `loadgen queue`: the waiting-room benchmark.
//!
//! Fans log in, join the show's room over HTTP and each holds a WebSocket, with source
//! addresses spread over 127.0.0.1..=127.0.0.N so one process can exceed one address's
//! ephemeral ports. Each process also subscribes to the room's Redis channel, so it knows when
//! each serving number was published and measures, per fan message, the time from a serving
//! change to the fan hearing about it, and from the fan's turn to its `admitted` message.
//!
//! One process holds about as many sockets as its open-file limit allows, so `--processes N`
//! runs the fans in N child processes of loadgen (`--part`, each with a disjoint range of fan
//! accounts). They log in and say `ready`; once all are, the parent tells them `go` and they join
//! (together, so the join rate is the crowd's) and connect, then say `ready` again; once all
//! are, the parent opens the room (when it created the show), tells them `go` and they hold for
//! `--hold-seconds`; the parent merges what they measured (histograms travel as buckets) and
//! weighs the ingress processes of the run directory. With one process the same happens with
//! one child.
//!
//! Correctness counters: `admitted_before_their_turn` (a fan admitted with a number the
//! admitter never reached: must be 0) and `passed_over` (a connected fan whose number was
//! reached more than ten seconds before the end but who was never admitted: must be 0 too,
//! since every fan here keeps heart-beating).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    process::Stdio,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use common::ids::ShowId;
use futures::StreamExt as _;
use indicatif::ProgressBar;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use tokio_tungstenite::tungstenite::{self, client::IntoClientRequest as _, protocol::WebSocketConfig};
use waiting_room::{controller::RoomUpdate, keys::Keys};

use crate::{
    chaos, fans,
    flash::local_apis,
    holds::{AdminApi, create_show_on_sale, wait_until_open},
    report::{Latency, Summary, bar, process_cpu_seconds, resident_bytes},
};

/// `loadgen queue` options.
#[derive(Debug, clap::Args)]
pub struct QueueArgs {
    /// The API's base URL; several (comma-separated) spread the fans over ingress replicas.
    /// Default: every ingress with a pid file in `--run-dir`, else `http://127.0.0.1:8080`.
    #[arg(long, value_delimiter = ',')]
    api: Vec<String>,
    /// Fans to run.
    #[arg(long)]
    users: usize,
    /// The show whose waiting room they join (on sale, or in its pre-queue); its room is left
    /// as it is. Without it, loadgen creates a show on sale whose room stays paused while the
    /// fans join and connect, then admits `--admit-per-second`, so every serving change is
    /// heard by the whole crowd.
    #[arg(long)]
    show: Option<ShowId>,
    /// Fans a second the show loadgen creates admits.
    #[arg(long, default_value_t = 200)]
    admit_per_second: u32,
    /// Seats of the venue loadgen creates (enough that seats never hold admission back).
    #[arg(long, default_value_t = 50_000)]
    seats: usize,
    /// Load-generator processes sharing the fans; one holds about as many sockets as its
    /// open-file limit allows.
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Number of the first fan account (runs use disjoint ranges to start from fresh fans).
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
    /// The admin account that creates the show (default: `.run/env`, then the environment).
    #[arg(long)]
    admin_email: Option<String>,
    /// Its password (default: `.run/env`, then the environment).
    #[arg(long)]
    admin_password: Option<String>,
    /// HTTP requests and WebSocket handshakes each process has in flight at once.
    #[arg(long, default_value_t = 256)]
    concurrency: usize,
    /// Source addresses to spread sockets over (127.0.0.1..=127.0.0.N).
    #[arg(long, default_value_t = 8)]
    sources: u8,
    /// Seconds to keep the sockets open once everyone has connected.
    #[arg(long, default_value_t = 20)]
    hold_seconds: u64,
    /// The deployment's run directory: the ingress processes to weigh are its `ingress*.pid`.
    #[arg(long, default_value = ".run")]
    run_dir: PathBuf,
    /// Where to write the JSON result.
    #[arg(long, default_value = "loadgen-queue.json")]
    out: PathBuf,
    /// Internal: run as one of the `--processes` (the parent passes its share of the fans).
    #[arg(long, hide = true)]
    part: bool,
}

/// Handshakes a fan tries before its socket counts as an error.
const HANDSHAKE_ATTEMPTS: u32 = 5;

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

/// Histogram buckets as [`Latency::buckets`] gives them.
type Buckets = Vec<(u64, u64)>;

/// What one load-generator process measured; the parent merges them.
#[derive(Default, Serialize, Deserialize)]
struct Part {
    joined: usize,
    /// Unix time, in seconds, of the first join request and of the last join answer.
    join_began: f64,
    join_ended: f64,
    join_latency: Buckets,
    websockets_open: usize,
    handshake_retries: u64,
    connect_seconds: f64,
    serving_to_position: Buckets,
    position_staleness: Buckets,
    turn_to_admitted: Buckets,
    admitted: usize,
    admitted_before_their_turn: usize,
    passed_over: usize,
    websocket_messages: u64,
    websocket_errors: u64,
}

/// The JSON result.
#[derive(Serialize)]
struct QueueResult {
    show: ShowId,
    /// The show's admission rate, when loadgen created it (else the show's own).
    admit_per_second: Option<u32>,
    users: usize,
    processes: usize,
    ingress_processes: usize,
    joined: usize,
    join_seconds: f64,
    joins_per_second: f64,
    join_latency: Summary,
    websockets_open: usize,
    /// Handshakes tried again after a failure (a socket counts as an error after
    /// [`HANDSHAKE_ATTEMPTS`] failures).
    handshake_retries: u64,
    connect_seconds: f64,
    /// From a serving number's publication to a fan's `position` message carrying it; only
    /// numbers published after the fan's socket opened (its first message answers the connect).
    serving_to_position: Summary,
    /// From the first serving change a fan had not heard of to the `position` message that
    /// told it: what ingress's pacing of messages (one a second near the front, ETA/20 further
    /// back) adds to the above.
    position_staleness: Summary,
    turn_to_admitted: Summary,
    admitted: usize,
    admitted_before_their_turn: usize,
    passed_over: usize,
    websocket_messages: u64,
    websocket_errors: u64,
    ingress_rss_before_bytes: Option<u64>,
    ingress_rss_holding_bytes: Option<u64>,
    ingress_bytes_per_connection: Option<f64>,
    /// CPU of the ingress processes, and of the load generator's, while the sockets were held
    /// (cores: 1.0 is one core busy the whole time).
    ingress_cpu_cores: f64,
    loadgen_cpu_cores: f64,
}

/// Runs the benchmark and writes the result (or, with `--part`, one process's share of it).
pub async fn run(args: QueueArgs) -> anyhow::Result<()> {
    // Sockets are files: take every descriptor the hard limit allows.
    let limit = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    tracing::debug!(open_files = limit, "file descriptor limit");
    if args.part {
        return run_part(args).await;
    }
    if args.users == 0 || args.processes == 0 || args.processes > args.users {
        bail!("--users must be at least 1, and --processes between 1 and --users");
    }
    let apis = if args.api.is_empty() {
        local_apis(&args.run_dir)
    } else {
        args.api.clone()
    };
    let ingress: Vec<u32> = chaos::Deployment::discover(&args.run_dir)
        .map(|deployment| {
            deployment
                .processes()
                .into_iter()
                .filter(|process| process.role == "ingress")
                .map(|process| process.pid)
                .collect()
        })
        .unwrap_or_default();
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    fans::ensure_accounts(&args.database_url, args.first_fan, args.users).await?;
    let (show, admin) = match args.show {
        Some(show) => (show, None),
        None => {
            let (show, admin) = create_show(&client, &apis[0], &args).await?;
            (show, Some(admin))
        }
    };
    tracing::info!(%show, created = admin.is_some(), processes = args.processes, "show");

    // Ingress's memory before the crowd: what the crowd adds is counted against the sockets
    // (so is what its logins and joins leave behind, which errs on the side of more per socket).
    let rss = || -> Option<u64> { ingress.iter().map(|pid| resident_bytes(*pid)).sum() };
    let rss_before = rss();

    // Start the processes, each with its share of the fans, and wait until every fan of every
    // share has joined and holds its socket.
    let scratch = std::env::temp_dir().join(format!("loadgen-queue-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let (events, mut heard) = tokio::sync::mpsc::unbounded_channel();
    let mut parts = Vec::with_capacity(args.processes);
    for index in 0..args.processes {
        let first = args.first_fan + index * args.users / args.processes;
        let end = args.first_fan + (index + 1) * args.users / args.processes;
        let out = scratch.join(format!("part-{index}.json"));
        parts.push(PartProcess::start(
            &args,
            &apis,
            show,
            index,
            first,
            end - first,
            out,
            events.clone(),
        )?);
    }
    drop(events);
    let bars = indicatif::MultiProgress::new();
    let stages: Vec<_> = STAGES
        .into_iter()
        .map(|stage| (stage, bars.add(bar(args.users, stage))))
        .collect();
    // Everyone logs in first, so the joins of all processes start together and their rate is
    // the crowd's.
    barrier(&mut heard, parts.len(), &stages).await?;
    for part in &mut parts {
        part.go().await?;
    }
    barrier(&mut heard, parts.len(), &stages).await?;
    for (_, progress) in &stages {
        progress.finish();
    }

    // Weigh ingress with the crowd connected, then let the room move and hold.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_holding = rss();
    let cpu = |pids: &[u32]| -> f64 { pids.iter().filter_map(|pid| process_cpu_seconds(*pid)).sum() };
    let loadgen_pids: Vec<u32> = parts.iter().filter_map(|part| part.child.id()).collect();
    let (ingress_cpu_before, loadgen_cpu_before, held) = (cpu(&ingress), cpu(&loadgen_pids), Instant::now());
    if let Some(admin) = &admin {
        set_paused(admin, show, false).await?;
    }
    for part in &mut parts {
        part.go().await?;
    }
    tracing::info!(hold = args.hold_seconds, "holding the sockets");
    let holding = bar(usize::try_from(args.hold_seconds).unwrap_or(usize::MAX), "hold");
    for _ in 0..args.hold_seconds {
        tokio::time::sleep(Duration::from_secs(1)).await;
        holding.inc(1);
    }
    holding.finish();
    let seconds = held.elapsed().as_secs_f64();
    let ingress_cpu_cores = (cpu(&ingress) - ingress_cpu_before) / seconds;
    let loadgen_cpu_cores = (cpu(&loadgen_pids) - loadgen_cpu_before) / seconds;
    let mut measured = Vec::with_capacity(parts.len());
    for part in parts {
        measured.push(part.finish().await?);
    }
    let _ = std::fs::remove_dir_all(&scratch);

    let merge = |of: fn(&Part) -> &Buckets| {
        let mut latency = Latency::default();
        for part in &measured {
            latency.add_buckets(of(part));
        }
        latency.summary()
    };
    let sum = |of: fn(&Part) -> usize| measured.iter().map(of).sum::<usize>();
    let joined = sum(|part| part.joined);
    let join_seconds = measured.iter().map(|part| part.join_ended).fold(f64::MIN, f64::max)
        - measured.iter().map(|part| part.join_began).fold(f64::MAX, f64::min);
    let open = sum(|part| part.websockets_open);
    let result = QueueResult {
        show,
        admit_per_second: admin.is_some().then_some(args.admit_per_second),
        users: args.users,
        processes: args.processes,
        ingress_processes: ingress.len(),
        joined,
        join_seconds,
        joins_per_second: joined as f64 / join_seconds.max(1e-9),
        join_latency: merge(|part| &part.join_latency),
        websockets_open: open,
        handshake_retries: measured.iter().map(|part| part.handshake_retries).sum(),
        connect_seconds: measured.iter().map(|part| part.connect_seconds).fold(0.0, f64::max),
        serving_to_position: merge(|part| &part.serving_to_position),
        position_staleness: merge(|part| &part.position_staleness),
        turn_to_admitted: merge(|part| &part.turn_to_admitted),
        admitted: sum(|part| part.admitted),
        admitted_before_their_turn: sum(|part| part.admitted_before_their_turn),
        passed_over: sum(|part| part.passed_over),
        websocket_messages: measured.iter().map(|part| part.websocket_messages).sum(),
        websocket_errors: measured.iter().map(|part| part.websocket_errors).sum(),
        ingress_rss_before_bytes: rss_before,
        ingress_rss_holding_bytes: rss_holding,
        ingress_bytes_per_connection: match (rss_before, rss_holding) {
            (Some(before), Some(holding)) if open > 0 => Some((holding.saturating_sub(before)) as f64 / open as f64),
            _ => None,
        },
        ingress_cpu_cores,
        loadgen_cpu_cores,
    };
    let json = serde_json::to_string_pretty(&result)?;
    std::fs::write(&args.out, &json).with_context(|| format!("cannot write {}", args.out.display()))?;
    println!("{json}");
    Ok(())
}

/// Waits until `parts` processes have said `ready`, showing their progress on `stages`' bars.
async fn barrier(
    heard: &mut tokio::sync::mpsc::UnboundedReceiver<PartEvent>,
    parts: usize,
    stages: &[(&str, ProgressBar)],
) -> anyhow::Result<()> {
    let mut ready = 0;
    while ready < parts {
        match heard.recv().await {
            Some(PartEvent::Progress(stage, count)) => {
                if let Some((_, progress)) = stages.iter().find(|(name, _)| *name == stage) {
                    progress.inc(count);
                }
            }
            Some(PartEvent::Ready) => ready += 1,
            Some(PartEvent::Ended(index)) => {
                bail!("load-generator process {index} stopped before the others were ready (see its log above)")
            }
            None => bail!("the load-generator processes stopped before they were ready"),
        }
    }
    Ok(())
}

/// Creates the benchmark's show: on sale, with a room that is open but paused until the crowd
/// is connected. Returns it with the admin who unpauses it.
async fn create_show(client: &reqwest::Client, api: &str, args: &QueueArgs) -> anyhow::Result<(ShowId, AdminApi)> {
    let admin = AdminApi::from_flags(
        client,
        api,
        None,
        args.admin_email.as_deref(),
        args.admin_password.as_deref(),
    )
    .await?;
    let show = create_show_on_sale(&admin, args.seats, 6, args.admit_per_second, "queue benchmark").await?;
    set_paused(&admin, show, true).await?;
    Ok((show, admin))
}

/// Pauses or resumes admission to `show`'s room (from the controller's next tick).
async fn set_paused(admin: &AdminApi, show: ShowId, paused: bool) -> anyhow::Result<()> {
    admin
        .call(
            reqwest::Method::PATCH,
            &format!("/api/v1/admin/shows/{show}/waiting-room"),
            &json!({ "paused": paused }),
            200,
        )
        .await?;
    Ok(())
}

/// The stages a process reports progress of, one `<stage> <count>` line on its stdout at a time.
const STAGES: [&str; 3] = ["login", "join", "connect"];

/// What a process says on its stdout.
enum PartEvent {
    /// `count` more fans went through `stage`.
    Progress(&'static str, u64),
    /// Its fans are logged in, or all hold their sockets; it waits for `go` on its stdin.
    Ready,
    /// The process with this index closed its stdout (it ended).
    Ended(usize),
}

/// One load-generator process running a share of the fans (`loadgen queue --part`).
struct PartProcess {
    index: usize,
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    out: PathBuf,
}

impl PartProcess {
    /// Starts process `index` on fans `first..first + users`; what it says goes to `events`,
    /// its log lines to this process's stderr.
    #[allow(clippy::too_many_arguments)]
    fn start(
        args: &QueueArgs,
        apis: &[String],
        show: ShowId,
        index: usize,
        first: usize,
        users: usize,
        out: PathBuf,
        events: tokio::sync::mpsc::UnboundedSender<PartEvent>,
    ) -> anyhow::Result<Self> {
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .args(["queue", "--part"])
            .arg(format!("--show={show}"))
            .arg(format!("--users={users}"))
            .arg(format!("--first-fan={first}"))
            .arg(format!("--api={}", apis.join(",")))
            .arg(format!("--database-url={}", args.database_url))
            .arg(format!("--redis-url={}", args.redis_url))
            .arg(format!("--redis-key-prefix={}", args.redis_key_prefix))
            .arg(format!("--concurrency={}", args.concurrency))
            .arg(format!("--sources={}", args.sources))
            .arg(format!("--hold-seconds={}", args.hold_seconds))
            .arg("--out")
            .arg(&out)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start a load-generator process")?;
        let stdout = child.stdout.take().context("the process has no stdout")?;
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let progress = line.split_once(' ').and_then(|(stage, count)| {
                    let stage = STAGES.into_iter().find(|known| *known == stage)?;
                    Some(PartEvent::Progress(stage, count.parse().ok()?))
                });
                let event = match progress {
                    _ if line == "ready" => PartEvent::Ready,
                    Some(progress) => progress,
                    None => {
                        eprintln!("[loadgen {index}] {line}");
                        continue;
                    }
                };
                let _ = events.send(event);
            }
            let _ = events.send(PartEvent::Ended(index));
        });
        Ok(Self {
            index,
            stdin: child.stdin.take(),
            child,
            out,
        })
    }

    /// Tells the process to start holding.
    async fn go(&mut self) -> anyhow::Result<()> {
        let stdin = self.stdin.as_mut().context("the process has no stdin")?;
        stdin.write_all(b"go\n").await?;
        stdin.flush().await?;
        Ok(())
    }

    /// Waits for the process to end and reads what it measured.
    async fn finish(mut self) -> anyhow::Result<Part> {
        let status = self.child.wait().await?;
        if !status.success() {
            bail!("load-generator process {} failed ({status})", self.index);
        }
        let text = std::fs::read_to_string(&self.out).with_context(|| format!("cannot read {}", self.out.display()))?;
        Ok(serde_json::from_str(&text)?)
    }
}

/// Counts fans through a stage and tells the parent every [`Tally::EVERY`] of them.
struct Tally {
    stage: &'static str,
    unsaid: u64,
}

impl Tally {
    const EVERY: u64 = 200;

    fn new(stage: &'static str) -> Self {
        Self { stage, unsaid: 0 }
    }

    fn inc(&mut self) {
        self.unsaid += 1;
        if self.unsaid >= Self::EVERY {
            self.say();
        }
    }

    fn say(&mut self) {
        if self.unsaid > 0 {
            println!("{} {}", self.stage, self.unsaid);
            self.unsaid = 0;
        }
    }
}

/// Says `ready` and waits for the parent's `go`.
async fn wait_for_go(stdin: &mut tokio::io::BufReader<tokio::io::Stdin>) -> anyhow::Result<()> {
    println!("ready");
    let mut go = String::new();
    if stdin.read_line(&mut go).await? == 0 {
        bail!("the parent loadgen went away");
    }
    Ok(())
}

/// Seconds since the Unix epoch, now.
fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64())
}

/// One process's share (`--part`): logs its fans in; at the parent's word joins them and
/// connects their sockets; at its next word holds them for `--hold-seconds`; then writes what
/// it measured.
async fn run_part(args: QueueArgs) -> anyhow::Result<()> {
    let show = args.show.context("--part needs --show")?;
    if args.api.is_empty() {
        bail!("--part needs --api");
    }
    // Fans are spread over the ingresses and source addresses by their account number, so the
    // spread is the same whatever the number of processes.
    let api_of = |index: usize| args.api[(args.first_fan + index) % args.api.len()].as_str();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.concurrency)
        .timeout(Duration::from_secs(60))
        .build()?;

    let mut tally = Tally::new("login");
    let fans = fans::log_in(
        &client,
        api_of(0),
        args.first_fan,
        args.users,
        args.concurrency,
        &ProgressBar::hidden(),
    )
    .await?;
    tally.unsaid = fans.len() as u64;
    tally.say();
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
    wait_for_go(&mut stdin).await?;

    // Timestamp every serving number as it is published.
    let served = Arc::new(Mutex::new(Served::default()));
    let channel = Keys::new(&args.redis_key_prefix, show).channel;
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
    let queue_url = |index: usize| format!("{}/api/v1/shows/{show}/queue", api_of(index));
    wait_until_open(&client, &queue_url(0), &fans[0]).await?;
    let mut tally = Tally::new("join");
    let join_began = unix_now();
    let joins: Vec<(Option<u64>, Duration)> = futures::stream::iter(fans.iter().cloned())
        .map(|fan| {
            let client = client.clone();
            let url = queue_url(fan.index);
            async move {
                let begun = Instant::now();
                let number = match client.post(url).bearer_auth(&fan.access_token).send().await {
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
        .inspect(|_| tally.inc())
        .collect()
        .await;
    let join_ended = unix_now();
    tally.say();
    let mut join_latency = Latency::default();
    for (_, elapsed) in &joins {
        join_latency.record(*elapsed);
    }

    // Hold one WebSocket per fan.
    let mut hosts = Vec::new();
    for api in &args.api {
        let host: SocketAddr = tokio::net::lookup_host(api.trim_start_matches("http://"))
            .await?
            .next()
            .context("cannot resolve the API host")?;
        hosts.push((
            host,
            format!("{}/api/v1/shows/{show}/queue/ws", api.replace("http://", "ws://")),
        ));
    }
    let deadline = Arc::new(tokio::sync::Notify::new());
    let stats = Arc::new(Mutex::new(FanStats::default()));
    let mut tally = Tally::new("connect");
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(fans.len());
    let sources = usize::from(args.sources.max(1));
    let connects = futures::stream::iter(fans.iter().zip(&joins))
        .map(|(fan, (number, _))| {
            let spread = args.first_fan + fan.index;
            let (host, url) = hosts[spread % hosts.len()].clone();
            let source = Ipv4Addr::new(127, 0, 0, 1 + (spread % sources) as u8);
            let token = fan.access_token.clone();
            let number = *number;
            async move {
                // A refused or failed handshake is tried again a second later, as a browser's
                // client does (ingress answers 503 when Redis is slow to tell the fan's place).
                let mut retries = 0;
                loop {
                    match connect(host, source, &url, &token).await {
                        Err(err) if retries + 1 < HANDSHAKE_ATTEMPTS => {
                            tracing::debug!(error = %err, "handshake failed; trying again");
                            retries += 1;
                            tokio::time::sleep(Duration::from_secs(1)).await;
                        }
                        outcome => break (outcome, number, retries),
                    }
                }
            }
        })
        .buffer_unordered(args.concurrency);
    futures::pin_mut!(connects);
    let mut open = 0;
    let mut handshake_retries = 0_u64;
    while let Some((socket, number, retries)) = connects.next().await {
        tally.inc();
        handshake_retries += u64::from(retries);
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
    tally.say();

    wait_for_go(&mut stdin).await?;
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
    let part = Part {
        joined: joins.iter().filter(|(number, _)| number.is_some()).count(),
        join_began,
        join_ended,
        join_latency: join_latency.buckets(),
        websockets_open: open,
        handshake_retries,
        connect_seconds,
        serving_to_position: stats.position_latency.buckets(),
        position_staleness: stats.staleness.buckets(),
        turn_to_admitted: stats.admission_lag.buckets(),
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
    };
    std::fs::write(&args.out, serde_json::to_string(&part)?)
        .with_context(|| format!("cannot write {}", args.out.display()))?;
    Ok(())
}

#[derive(Default)]
struct FanStats {
    position_latency: Latency,
    staleness: Latency,
    admission_lag: Latency,
    admitted: Vec<u64>,
    messages: u64,
    errors: u64,
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
    staleness: Vec<Duration>,
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
    // Serving numbers published before the socket opened are answered by its first message,
    // which measures the connect, not a change: only later ones count.
    let opened = Instant::now();
    let mut told: Option<u64> = None;
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
                        let served = served.lock().expect("not poisoned");
                        if let Some(seen) = served.seen.get(&serving).filter(|seen| **seen >= opened) {
                            local.position_latency.push(now.saturating_duration_since(*seen));
                        }
                        // The first change this fan had not heard of yet.
                        if let Some(missed) = told
                            .filter(|told| serving > *told)
                            .and_then(|told| served.reached(told + 1))
                            .filter(|missed| *missed >= opened)
                        {
                            local.staleness.push(now.saturating_duration_since(missed));
                        }
                        told = Some(serving);
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
    for sample in local.staleness {
        shared.staleness.record(sample);
    }
    for sample in local.admission_lag {
        shared.admission_lag.record(sample);
    }
    shared.admitted.extend(local.admitted);
    shared.messages += local.messages;
    shared.errors += local.errors;
}
