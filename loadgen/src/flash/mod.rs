//! `loadgen flash-sale`: a whole on-sale rehearsed against a running Floodgate.
//!
//! It creates a venue and a show whose pre-queue opens at once and whose sale starts after
//! `--prequeue-seconds`; fans arrive over `--arrival-seconds` (most before the on-sale) and
//! behave like people ([`fan`]); the system is sampled every second ([`timeline`]); with
//! `--chaos`, processes are killed, restarted and paused during the sale ([`crate::chaos`]).
//! When every fan is done and the system has settled, the [`crate::audit`] reads PostgreSQL,
//! the gateway's ledger, the SMTP sink and the waiting room, and the [`report`] is written:
//! Markdown, JSON and PNG charts. A violation in the audit makes the run fail.
//!
//! Defaults are the local deployment `scripts/up` starts: its `.run/env` gives the admin
//! account, database, Redis and mail directory, `.run/*.pid` the processes to watch.

pub mod fan;
pub mod report;
pub mod timeline;

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use common::ids::ShowId;
use futures::StreamExt as _;
use indicatif::MultiProgress;
use redis::AsyncCommands as _;
use serde_json::json;
use time::OffsetDateTime;
use waiting_room::{controller::RoomUpdate, keys::Keys};

use self::{
    fan::{Api, Behaviour, Crowd, End},
    timeline::{Sample, Timeline},
};
use crate::{
    audit, chaos,
    holds::{AdminApi, MapSeat, database_url, hot_rows, rfc3339, run_env, send, show_id_of, venue_and_event},
    queue::Served,
    report::{bar, process_cpu_seconds, resident_bytes},
};

/// `loadgen flash-sale` options.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "flash-sale")]
pub struct FlashArgs {
    /// The API's base URL; repeat (or separate with commas) for several ingress replicas: fans
    /// are spread over them. Default: every ingress with a pid file in `--run-dir` (all the
    /// replicas `scripts/up --replicas N` started), else `http://127.0.0.1:8080`.
    #[arg(long, value_delimiter = ',')]
    pub api: Vec<String>,
    /// The admin account that creates the show (default: `.run/env`, then the environment).
    #[arg(long, env = "FLOODGATE_ADMIN_EMAIL")]
    pub admin_email: Option<String>,
    /// Its password (default: `.run/env`, then the environment).
    #[arg(long, env = "FLOODGATE_ADMIN_PASSWORD", hide_env_values = true)]
    pub admin_password: Option<String>,
    /// An admin or organizer access token to use instead of logging in.
    #[arg(long)]
    pub admin_token: Option<String>,
    /// The deployment's database (fans are seeded there; the audit reads it).
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// The deployment's Redis (the waiting room is sampled and audited there).
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// The deployment's `REDIS_KEY_PREFIX`.
    #[arg(long, env = "REDIS_KEY_PREFIX", default_value = "")]
    pub redis_key_prefix: String,
    /// The card gateway (the simulator's ledger is audited).
    #[arg(long, default_value = "http://127.0.0.1:8090")]
    pub gateway_url: String,
    /// Where the SMTP sink writes e-mails (default: `SMTP_SINK_DIR` of `.run/env`).
    #[arg(long)]
    pub mail_dir: Option<PathBuf>,
    /// Where the deployment's pid files are (CPU and memory per process; chaos).
    #[arg(long, default_value = ".run")]
    pub run_dir: PathBuf,
    /// Seats of the venue.
    #[arg(long, default_value_t = 50_000)]
    pub seats: usize,
    /// Fans taking part.
    #[arg(long, default_value_t = 200_000)]
    pub fans: usize,
    /// Number of the first fan account.
    #[arg(long, default_value_t = 0)]
    pub first_fan: usize,
    /// Seconds from the pre-queue opening (at once) to the on-sale.
    #[arg(long, default_value_t = 30)]
    pub prequeue_seconds: u64,
    /// Seconds over which fans arrive, from the pre-queue opening.
    #[arg(long, default_value_t = 60)]
    pub arrival_seconds: u64,
    /// Share of fans arriving before the on-sale.
    #[arg(long, default_value_t = 0.8)]
    pub before_share: f64,
    /// The waiting room's admission rate, fans per second.
    #[arg(long, default_value_t = 2_000)]
    pub admit_per_second: u32,
    /// The waiting room's cap on fans shopping at once.
    #[arg(long, default_value_t = 20_000)]
    pub max_active: u32,
    /// How long a hold lasts, seconds.
    #[arg(long, default_value_t = 300)]
    pub hold_seconds: u32,
    /// Tickets one fan may buy.
    #[arg(long, default_value_t = 6)]
    pub max_tickets: u32,
    /// Share of fans signed in before the pre-queue opens, as most fans of a big on-sale are
    /// (the others log in when they arrive, in the rush).
    #[arg(long, default_value_t = 0.9)]
    pub signed_in_share: f64,
    /// Share of fans watching the room over a WebSocket (the others poll). Default: every fan,
    /// or as many as the open-file limits of this process and of the ingress replicas allow.
    #[arg(long)]
    pub websocket_share: Option<f64>,
    /// Share of fans asking for specific seats in the hot front rows.
    #[arg(long, default_value_t = 0.15)]
    pub hot_share: f64,
    /// How many front rows are hot.
    #[arg(long, default_value_t = 4)]
    pub hot_rows: usize,
    /// Share of best-available requests wanting adjacent seats.
    #[arg(long, default_value_t = 0.5)]
    pub adjacent_share: f64,
    /// Share of fans letting their hold go instead of paying.
    #[arg(long, default_value_t = 0.1)]
    pub abandon_share: f64,
    /// Share of paying fans whose first card is declined.
    #[arg(long, default_value_t = 0.1)]
    pub decline_share: f64,
    /// Share of paying fans who cancel afterwards.
    #[arg(long, default_value_t = 0.05)]
    pub cancel_share: f64,
    /// Mean time a fan takes to choose, and to pay, seconds.
    #[arg(long, default_value_t = 2.0)]
    pub think_seconds: f64,
    /// WebSocket source addresses 127.0.0.1..=127.0.0.N (ephemeral ports are per address).
    #[arg(long, default_value_t = 16)]
    pub sources: u8,
    /// Fans not admitted this many seconds after the on-sale give up.
    #[arg(long, default_value_t = 600)]
    pub sale_timeout_seconds: u64,
    /// After the last fan: how long the system may take to settle (payments, e-mails).
    #[arg(long, default_value_t = 300)]
    pub settle_seconds: u64,
    /// Faults during the sale: kill -9 the active booking-worker (needs a standby:
    /// `scripts/up --workers 2`), restart the payment-worker and the notifier, pause the
    /// admission controller; with replicas (`scripts/up --replicas 2`) also kill -9 one
    /// ingress and the admission controller holding the show's lease.
    #[arg(long)]
    pub chaos: bool,
    /// Seed of the fans' behaviour.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Where the report goes (`report.md`, `report.json`, `*.png`).
    #[arg(long, default_value = "flash-sale-report")]
    pub out_dir: PathBuf,
    /// No progress bars (tests, CI logs).
    #[arg(long)]
    pub quiet: bool,
}

/// What a run produced.
#[derive(Debug)]
pub struct Outcome {
    /// The report's figures.
    pub report: report::Report,
    /// Where the report was written.
    pub out_dir: PathBuf,
}

impl Outcome {
    /// True when the audit found nothing wrong and no fan lost its place in the queue.
    pub fn passed(&self) -> bool {
        self.report.audit.passed() && self.report.places_lost == 0
    }
}

/// The public API of every ingress of the deployment in `run_dir`, or the default one.
pub(crate) fn local_apis(run_dir: &std::path::Path) -> Vec<String> {
    let found: Vec<String> = chaos::Deployment::discover(run_dir)
        .map(|deployment| {
            deployment
                .processes()
                .into_iter()
                .filter_map(|process| process.api_url)
                .collect()
        })
        .unwrap_or_default();
    if found.is_empty() {
        vec![format!("http://127.0.0.1:{}", common::config::defaults::API_PORT)]
    } else {
        found
    }
}

/// What signing fans in ahead of the pre-queue measured.
struct SigningIn {
    latency: crate::report::Latency,
    /// Failures by what failed (those fans log in again on arrival).
    errors: BTreeMap<String, u64>,
}

/// Logs in the fans whose plan says they are signed in before the sale, a few at a time (the
/// minutes before an on-sale, compressed), each at the API its visit will use. Returns their
/// access tokens by account.
async fn sign_in_ahead(
    client: &reqwest::Client,
    apis: &[String],
    plans: &[fan::Plan],
    progress: &MultiProgress,
) -> (std::collections::HashMap<usize, String>, SigningIn) {
    let accounts: Vec<usize> = plans
        .iter()
        .filter(|plan| plan.signed_in)
        .map(|plan| plan.account)
        .collect();
    let signing = progress.add(bar(accounts.len(), "signing in"));
    let mut tokens = std::collections::HashMap::with_capacity(accounts.len());
    let mut measured = SigningIn {
        latency: crate::report::Latency::default(),
        errors: BTreeMap::new(),
    };
    let mut answers = futures::stream::iter(accounts)
        .map(|account| async move {
            let api = &apis[account % apis.len()];
            (account, fan::sign_in(client, api.trim_end_matches('/'), account).await)
        })
        .buffer_unordered(SIGN_IN_CONCURRENCY);
    while let Some((account, answer)) = answers.next().await {
        signing.inc(1);
        match answer {
            Ok((token, took)) => {
                measured.latency.record(took);
                tokens.insert(account, token);
            }
            Err(what) => *measured.errors.entry(format!("sign-in ahead: {what}")).or_default() += 1,
        }
    }
    signing.finish_and_clear();
    (tokens, measured)
}

/// A fault chaos mode caused, for the report and the charts.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FaultMark {
    /// Seconds since the run started.
    pub at: f64,
    /// What happened.
    pub what: String,
    /// The same in a few words, for the charts.
    pub label: String,
}

/// Settings resolved from the flags, `.run/env` and the defaults.
struct Settings {
    database_url: String,
    redis_url: String,
    mail_dir: PathBuf,
}

fn settings(args: &FlashArgs) -> Settings {
    Settings {
        database_url: database_url(args.database_url.clone()),
        redis_url: args
            .redis_url
            .clone()
            .or_else(|| run_env("REDIS_URL"))
            .unwrap_or_else(|| common::config::defaults::REDIS_URL.to_owned()),
        mail_dir: args
            .mail_dir
            .clone()
            .or_else(|| run_env("SMTP_SINK_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(".run/mail")),
    }
}

/// Runs the rehearsal and writes its report. Errors are failures to run it at all; a finished
/// run whose audit found violations is an `Ok` whose [`Outcome::passed`] is false.
pub async fn run(mut args: FlashArgs) -> anyhow::Result<Outcome> {
    if args.api.is_empty() {
        args.api = local_apis(&args.run_dir);
    }
    validate(&args)?;
    let settings = settings(&args);
    let open_files = rlimit::increase_nofile_limit(u64::MAX).unwrap_or(0);
    // Connections are pooled and reused (no idle cap); how many requests are in flight at once
    // is the crowd's semaphore's business.
    // Idle connections are files too: at most the in-flight bound of them, over all replicas.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .pool_max_idle_per_host(HTTP_IN_FLIGHT / args.api.len().max(1))
        .build()?;
    let admin = admin(&client, &args).await?;
    let progress = if args.quiet {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };

    // Fans first (they take a while for 200,000), then the show, so the pre-queue is fresh.
    let seeding = progress.add(bar(args.fans, "accounts"));
    crate::fans::ensure_accounts(&settings.database_url, args.first_fan, args.fans).await?;
    seeding.finish_and_clear();

    let websocket_share = args.websocket_share.unwrap_or_else(|| {
        // Each WebSocket is a file here and in ingress: keep a reserve for HTTP connections
        // (those in flight, as many idle in the pool) and for everything else (the sampler,
        // chaos, the audit).
        let here = open_files.saturating_sub(2 * HTTP_IN_FLIGHT as u64 + 1_000) as f64;
        let there = 18_000.0 * args.api.len() as f64;
        (here.min(there) / args.fans.max(1) as f64).min(1.0)
    });
    let behaviour = Behaviour {
        signed_in_share: args.signed_in_share,
        websocket_share,
        hot_share: args.hot_share,
        adjacent_share: args.adjacent_share,
        abandon_share: args.abandon_share,
        decline_share: args.decline_share,
        cancel_share: args.cancel_share,
        think_seconds: args.think_seconds,
        max_quantity: args.max_tickets,
    };
    let plans = fan::plans(
        args.fans,
        args.first_fan,
        Duration::from_secs(args.prequeue_seconds),
        Duration::from_secs(args.arrival_seconds),
        args.before_share,
        &behaviour,
        args.seed,
    );
    let (mut tokens, signing_in) = sign_in_ahead(&client, &args.api, &plans, &progress).await;

    let show = create_show(&admin, &args).await?;
    // Second 0 of every figure and chart: the pre-queue opening.
    let timeline = Arc::new(Timeline::new());
    let created = timeline.started();
    let on_sale = created + Duration::from_secs(args.prequeue_seconds);
    tracing::info!(show_id = %show, seats = args.seats, fans = args.fans, "show created");
    let apis = apis(&args.api, show).await?;
    let hot = {
        let (status, map) = send(client.get(format!("{}/api/v1/shows/{show}/seats", apis[0].http))).await?;
        if status != 200 {
            bail!("the seat map answered {status}: {map}");
        }
        let seats: Vec<MapSeat> = serde_json::from_value(map["seats"].clone()).context("the seat map's seats")?;
        hot_rows(&seats, args.hot_rows)
    };

    // Serving numbers, timestamped as they are published.
    let served = Arc::new(Mutex::new(Served::default()));
    let keys = Keys::new(&args.redis_key_prefix, show);
    let listener = listen_serving(&settings.redis_url, &keys, Arc::clone(&served)).await?;

    let deadline = on_sale + Duration::from_secs(args.sale_timeout_seconds);
    let crowd = Arc::new(Crowd {
        client: client.clone(),
        apis: apis.clone(),
        show,
        timeline: Arc::clone(&timeline),
        served: Arc::clone(&served),
        hot,
        tally: Mutex::default(),
        sources: args.sources,
        deadline,
        in_flight: tokio::sync::Semaphore::new(HTTP_IN_FLIGHT),
    });
    crowd.tally(|tally| {
        tally.login = signing_in.latency;
        tally.errors = signing_in.errors;
    });

    // The sampler and, in chaos mode, the faults.
    let taken = Arc::new(AtomicU64::new(0));
    let sampler = tokio::spawn(sample(
        SampleSources {
            client: client.clone(),
            availability: format!("{}/api/v1/shows/{show}/availability", apis[0].http),
            redis_url: settings.redis_url.clone(),
            keys: keys.clone(),
            run_dir: args.run_dir.clone(),
        },
        Arc::clone(&timeline),
        Arc::clone(&taken),
        progress.add(bar(args.seats, "seats")),
    ));
    let faults: Arc<Mutex<Vec<FaultMark>>> = Arc::default();
    let crowd_gone = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let chaos_task = args.chaos.then(|| {
        tokio::spawn(chaos_schedule(
            args.run_dir.clone(),
            show,
            args.seats as u64,
            Arc::clone(&taken),
            Arc::clone(&crowd_gone),
            Arc::clone(&timeline),
            Arc::clone(&faults),
        ))
    });
    let background = AbortOnDrop(vec![sampler, listener]);

    // The crowd: each fan is spawned at its arrival time.
    let cpu_before = (Instant::now(), crate::report::cpu_seconds_by_command());
    let arrived = progress.add(bar(args.fans, "arrived"));
    let done = progress.add(bar(args.fans, "done"));
    let start = timeline.started();
    let mut visits = futures::stream::FuturesUnordered::new();
    for plan in plans {
        let at = (created + plan.arrival).max(start);
        tokio::time::sleep_until(at.into()).await;
        arrived.inc(1);
        let token = tokens.remove(&plan.account);
        visits.push(tokio::spawn(fan::visit(Arc::clone(&crowd), plan, token)));
        // Reap finished fans as we go, so their memory goes back.
        while let Some(Some(_)) = futures::FutureExt::now_or_never(visits.next()) {
            done.inc(1);
        }
    }
    arrived.finish();
    while visits.next().await.is_some() {
        done.inc(1);
    }
    done.finish();
    let crowd_done = Instant::now();
    let cpu_after = crate::report::cpu_seconds_by_command();
    crowd_gone.store(true, Ordering::Relaxed);
    if let Some(task) = chaos_task {
        // A fault still in progress (a pause) finishes before the audit.
        if let Err(err) = task.await {
            tracing::warn!(error = %err, "the chaos task failed");
        }
    }

    // Settle, then audit: the audit is re-run until it passes or the settle time is over,
    // because e-mails, refunds and late webhooks finish after the last fan.
    let admissions: Vec<audit::Admitted> = crowd
        .tally
        .lock()
        .expect("not poisoned")
        .admissions
        .iter()
        .map(|(user, number)| audit::Admitted {
            user: (*user).into(),
            number: *number,
        })
        .collect();
    let ledger_client = client.clone();
    let sources = audit::Sources {
        database_url: settings.database_url.clone(),
        show,
        ledger: None,
        mail_dir: Some(settings.mail_dir.clone()),
        room: Some(audit::RoomSources {
            redis_url: settings.redis_url.clone(),
            key_prefix: args.redis_key_prefix.clone(),
        }),
        admissions,
    };
    let settling = progress.add(indicatif::ProgressBar::new_spinner().with_message("settling and auditing"));
    let settle_until = Instant::now() + Duration::from_secs(args.settle_seconds);
    let audit = loop {
        settling.tick();
        // A source still recovering (the gateway after chaos, say) is a reason to try again,
        // not to lose the run.
        let attempt = async {
            let mut sources = sources.clone();
            sources.ledger = Some(audit::fetch_ledger(&ledger_client, &args.gateway_url).await?);
            audit::run(&sources).await
        }
        .await;
        let settled = Instant::now() >= settle_until;
        match attempt {
            Ok(audit) if audit.passed() || settled => break audit,
            Err(err) if settled => return Err(err.context("the audit could not read its sources")),
            Err(err) => tracing::warn!(error = %err, "audit attempt failed; retrying"),
            Ok(_) => {}
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    settling.finish_and_clear();
    drop(background);

    let faults = faults.lock().expect("not poisoned").clone();
    let tally = std::mem::take(&mut *crowd.tally.lock().expect("not poisoned"));
    let mut report = report::Report::build(report::Inputs {
        args: &args,
        show,
        timeline: &timeline,
        tally,
        on_sale: timeline.offset(on_sale),
        crowd_done: timeline.offset(crowd_done),
        faults,
        audit,
        confirmed_to_email: report::confirmed_to_email(&settings.database_url, show)
            .await
            .unwrap_or_default(),
        websocket_share,
        machine_cpu: crate::report::cpu_shares(
            &cpu_before.1,
            &cpu_after,
            crowd_done.saturating_duration_since(cpu_before.0).as_secs_f64(),
        ),
    });
    report.write(&args.out_dir, &timeline)?;
    Ok(Outcome {
        report,
        out_dir: args.out_dir,
    })
}

fn validate(args: &FlashArgs) -> anyhow::Result<()> {
    let shares = [
        ("--before-share", args.before_share),
        ("--signed-in-share", args.signed_in_share),
        ("--hot-share", args.hot_share),
        ("--adjacent-share", args.adjacent_share),
        ("--abandon-share", args.abandon_share),
        ("--decline-share", args.decline_share),
        ("--cancel-share", args.cancel_share),
        ("--websocket-share", args.websocket_share.unwrap_or(0.0)),
    ];
    for (flag, share) in shares {
        if !(0.0..=1.0).contains(&share) {
            bail!("{flag} is a share between 0 and 1, not {share}");
        }
    }
    if args.seats == 0 || args.fans == 0 || args.api.is_empty() {
        bail!("a flash sale needs seats, fans and an API");
    }
    if args.arrival_seconds < args.prequeue_seconds {
        bail!("--arrival-seconds counts from the pre-queue opening, so it cannot be shorter than --prequeue-seconds");
    }
    if args.max_tickets == 0 || args.think_seconds < 0.0 {
        bail!("--max-tickets must be positive and --think-seconds not negative");
    }
    Ok(())
}

async fn admin(client: &reqwest::Client, args: &FlashArgs) -> anyhow::Result<AdminApi> {
    AdminApi::from_flags(
        client,
        &args.api[0],
        args.admin_token.as_deref(),
        args.admin_email.as_deref(),
        args.admin_password.as_deref(),
    )
    .await
}

/// The venue, event and show of the rehearsal: the pre-queue opens now, the sale after
/// `--prequeue-seconds`.
async fn create_show(admin: &AdminApi, args: &FlashArgs) -> anyhow::Result<ShowId> {
    let (venue_id, event_id, prices) = venue_and_event(admin, args.seats, "flash-sale rehearsal").await?;
    let now = OffsetDateTime::now_utc();
    let show = admin
        .call(
            reqwest::Method::POST,
            "/api/v1/admin/shows",
            &json!({
                "event_id": event_id, "venue_id": venue_id,
                // Far enough ahead that cancellations are inside the cut-off.
                "starts_at": rfc3339(now + time::Duration::days(7))?,
                "on_sale_at": rfc3339(now + time::Duration::seconds(args.prequeue_seconds as i64))?,
                "currency": "EUR", "prices": prices,
                "max_tickets_per_user": args.max_tickets,
                "hold_seconds": args.hold_seconds,
                "waiting_room": {
                    "admit_per_second": args.admit_per_second, "max_active": args.max_active,
                    "prequeue_opens_at": rfc3339(now - time::Duration::seconds(1))?,
                },
            }),
            201,
        )
        .await?;
    show_id_of(&show)
}

/// The API instances and their WebSocket addresses.
async fn apis(urls: &[String], show: ShowId) -> anyhow::Result<Vec<Api>> {
    let mut apis = Vec::with_capacity(urls.len());
    for url in urls {
        let url = url.trim_end_matches('/');
        let authority = url.trim_start_matches("http://");
        let host: SocketAddr = tokio::net::lookup_host(authority)
            .await?
            .next()
            .with_context(|| format!("cannot resolve {authority}"))?;
        apis.push(Api {
            http: url.to_owned(),
            host,
            ws_url: format!("{}/api/v1/shows/{show}/queue/ws", url.replacen("http://", "ws://", 1)),
        });
    }
    Ok(apis)
}

/// Subscribes to the room's serving numbers and timestamps each as it is published.
async fn listen_serving(
    redis_url: &str,
    keys: &Keys,
    served: Arc<Mutex<Served>>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let mut pubsub = redis::Client::open(redis_url)?.get_async_pubsub().await?;
    pubsub.subscribe(&keys.channel).await?;
    Ok(tokio::spawn(async move {
        let mut messages = pubsub.into_on_message();
        while let Some(message) = messages.next().await {
            let Ok(payload) = message.get_payload::<String>() else {
                continue;
            };
            if let Ok(update) = serde_json::from_str::<RoomUpdate>(&payload) {
                let now = Instant::now();
                served
                    .lock()
                    .expect("not poisoned")
                    .seen
                    .entry(update.serving)
                    .or_insert(now);
            }
        }
    }))
}

/// Where the sampler looks.
struct SampleSources {
    client: reqwest::Client,
    availability: String,
    redis_url: String,
    keys: Keys,
    run_dir: PathBuf,
}

/// Once a second: the room (Redis), the seats (the public availability snapshot) and every
/// Floodgate process's CPU and memory (`/proc`, pids from the run directory).
async fn sample(
    sources: SampleSources,
    timeline: Arc<Timeline>,
    taken: Arc<AtomicU64>,
    seats_bar: indicatif::ProgressBar,
) {
    let redis = match redis::Client::open(sources.redis_url.as_str()) {
        Ok(client) => client.get_multiplexed_async_connection().await.ok(),
        Err(_) => None,
    };
    let mut redis = redis;
    let deployment = chaos::Deployment::discover(&sources.run_dir).ok();
    let mut previous = Sample::default();
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let at = timeline.offset(Instant::now());
        // A source that does not answer this second (an overloaded ingress) leaves its
        // figures as they were last seen rather than dropping them to zero on the charts.
        let mut sample = Sample { at, ..previous.clone() };
        if let Some(redis) = redis.as_mut() {
            let keys = &sources.keys;
            let room: Result<(u64, Option<u64>, u64, Option<String>), _> = redis::pipe()
                .scard(&keys.pre)
                .get(&keys.serving)
                .zcard(&keys.active)
                .hget(&keys.cfg, "state")
                .query_async(redis)
                .await;
            if let Ok((pre, serving, active, state)) = room {
                let serving = serving.unwrap_or(0);
                let waiting: u64 = redis
                    .zcount(&keys.queue, format!("({serving}"), "+inf")
                    .await
                    .unwrap_or(0);
                sample.waiting = pre + waiting;
                sample.serving = serving;
                sample.active = active;
                sample.room = state.unwrap_or_default();
            }
        }
        if let Ok((200, body)) = send(sources.client.get(&sources.availability)).await {
            let count = |status: &str| body["counts"][status].as_u64().unwrap_or(0);
            sample.available = count("available");
            sample.held = count("held");
            sample.sold = count("sold");
        }
        previous = sample.clone();
        taken.store(sample.held + sample.sold, Ordering::Relaxed);
        seats_bar.set_position(sample.held + sample.sold);
        timeline.sample(sample);
        // Pid files are read again on every call: restarted processes are followed.
        for process in deployment.iter().flat_map(chaos::Deployment::processes) {
            let at = timeline.offset(Instant::now());
            if let Some(cpu) = process_cpu_seconds(process.pid) {
                timeline.process(&process.name, process.pid, at, cpu, resident_bytes(process.pid));
            }
        }
    }
}

/// Chaos mode's faults, each when the sale has come so far (a share of the seats taken), so
/// they land inside the rush whatever its size: the admission controller paused early while
/// fans wait, then the writer killed, then the payment-worker and the notifier restarted.
async fn chaos_schedule(
    run_dir: PathBuf,
    show: ShowId,
    seats: u64,
    taken: Arc<AtomicU64>,
    crowd_gone: Arc<std::sync::atomic::AtomicBool>,
    timeline: Arc<Timeline>,
    faults: Arc<Mutex<Vec<FaultMark>>>,
) {
    #[derive(Clone)]
    enum Fault {
        Pause,
        KillWriter,
        KillIngress(String),
        KillLeaseHolder,
        Restart(&'static str),
    }
    // With replicas (`scripts/up --replicas N`), one ingress and the lease holder are killed
    // too: fans must carry on through the other ingress, and another controller must take
    // the lease.
    // Found once, before the crowd takes this process's files: the faults need no new ones.
    let deployment = match chaos::Deployment::discover(&run_dir) {
        Ok(deployment) => deployment,
        Err(err) => {
            tracing::error!(error = %err, "chaos: cannot find the deployment's processes");
            faults.lock().expect("not poisoned").push(FaultMark {
                at: timeline.offset(Instant::now()),
                what: format!("FAILED to find the deployment's processes: {err:#}"),
                label: "chaos FAILED".to_owned(),
            });
            return;
        }
    };
    let processes = deployment.processes();
    let replicas = |role: &str| processes.iter().filter(|process| process.role == role).count();
    let mut schedule = vec![(0.05, Fault::Pause)];
    if replicas("ingress") > 1 {
        let last = processes.iter().rev().find(|process| process.role == "ingress");
        if let Some(ingress) = last {
            schedule.push((0.10, Fault::KillIngress(ingress.name.clone())));
        }
    }
    if replicas("waiting-room") > 1 {
        schedule.push((0.15, Fault::KillLeaseHolder));
    }
    schedule.extend([
        (0.20, Fault::KillWriter),
        (0.35, Fault::Restart("payment-worker")),
        (0.50, Fault::Restart("notifier")),
    ]);
    for (share, fault) in schedule {
        while (taken.load(Ordering::Relaxed) as f64) < share * seats as f64 {
            if crowd_gone.load(Ordering::Relaxed) {
                // The sale never came this far: the faults left are not caused (and the
                // report says so), rather than waiting for seats nobody will take.
                faults.lock().expect("not poisoned").push(FaultMark {
                    at: timeline.offset(Instant::now()),
                    what: format!(
                        "SKIPPED: the sale never reached {:.0}% of the seats taken",
                        share * 100.0
                    ),
                    label: "faults SKIPPED".to_owned(),
                });
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let begun = Instant::now();
        let result = match fault {
            Fault::Pause => {
                deployment
                    .pause_admission_controller(show, Duration::from_secs(5))
                    .await
            }
            Fault::KillWriter => deployment.kill_active_booking_worker(show).await,
            Fault::KillIngress(name) => deployment.kill_ingress(&name).await,
            Fault::KillLeaseHolder => deployment.kill_lease_holder(show).await,
            Fault::Restart(name) => deployment.restart(name).await,
        };
        match result {
            Ok(done) => {
                tracing::info!(fault = %done.what, "chaos");
                faults.lock().expect("not poisoned").push(FaultMark {
                    at: timeline.offset(done.at),
                    what: done.what,
                    label: done.label,
                });
            }
            Err(err) => {
                tracing::error!(error = %err, "chaos: a fault could not be caused");
                faults.lock().expect("not poisoned").push(FaultMark {
                    at: timeline.offset(begun),
                    what: format!("FAILED to cause a fault: {err:#}"),
                    label: "fault FAILED".to_owned(),
                });
            }
        }
    }
}

/// Requests the crowd has in flight at once, at most: each is a connection (a file here and in
/// ingress), and a load generator that opened one per waiting fan would measure its own
/// connection storms rather than Floodgate.
const HTTP_IN_FLIGHT: usize = 2_048;

/// Logins in flight while fans sign in ahead of the sale (each commits a session row).
const SIGN_IN_CONCURRENCY: usize = 64;

/// Background tasks of a run, stopped however the run ends.
struct AbortOnDrop(Vec<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Tallies fans' ends into what the report calls them.
pub fn got_nothing(ends: &BTreeMap<End, u64>) -> u64 {
    [End::NoSeats, End::SoldOutWhileWaiting, End::NotAdmitted, End::Failed]
        .iter()
        .map(|end| ends.get(end).copied().unwrap_or(0))
        .sum()
}
