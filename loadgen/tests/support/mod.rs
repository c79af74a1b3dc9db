//! A complete Floodgate for loadgen's integration tests, started from the debug binaries and
//! isolated from everything else on the machine: its own database (dropped at the end), its
//! own RabbitMQ prefix and Redis key prefix (deleted at the end), free ports for every
//! listener, and a temporary directory for the mail sink and the run directory.
//!
//! The run directory is laid out like `scripts/up`'s `.run/` (`<name>.pid`, `<name>.log`,
//! `env`; `booking-worker`, `booking-worker-1`, ...), so `loadgen::chaos::Deployment` works on
//! it. Processes start in `scripts/up`'s order; each must answer its readiness check within
//! 60 s. They stay in the test's process group, so a test runner that kills a hung test's group
//! takes them along; dropping [`Floodgate`] kills them (from the pid files, which chaos may have
//! rewritten) and removes everything the deployment created.

#![allow(dead_code)] // each test binary uses part of it

use std::{
    collections::BTreeMap,
    fs,
    io::Write as _,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    config::{defaults, env_string},
    contracts::{Envelope, ReleaseHold},
    ids::{BookingId, CommandId, ShowId, UserId},
    mq::{self, Publisher, Topology},
    testing::TestDatabase,
};
use loadgen::chaos;
use rustix::process::{Pid, Signal, kill_process};
use serde_json::{Value, json};
use sqlx::{Connection as _, PgPool};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

/// How long a process may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// What to start.
#[derive(Debug, Clone)]
pub struct Options {
    /// Booking-workers (`booking-worker`, `booking-worker-1`, ...): one writes each show, the
    /// others stand by. Default 2.
    pub booking_workers: usize,
    /// Admission controllers (`waiting-room`, `waiting-room-1`, ...). Default 1.
    pub admission_controllers: usize,
    /// Ingress replicas (`ingress`, `ingress-1`, ...), each with its own API port. Default 1.
    pub ingresses: usize,
    /// Extra settings for every process (they win over the harness's).
    pub env: Vec<(String, String)>,
    /// Extra settings for the processes of one role (`notifier`, `booking-worker`, ...), as
    /// `(role, key, value)`; they win over everything else.
    pub process_env: Vec<(String, String, String)>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            booking_workers: 2,
            admission_controllers: 1,
            ingresses: 1,
            env: Vec::new(),
            process_env: Vec::new(),
        }
    }
}

/// A running Floodgate.
pub struct Floodgate {
    /// The public API (`http://127.0.0.1:<port>`) of the first ingress, without a trailing
    /// slash.
    pub api_url: String,
    /// The public API of every ingress replica, the first one first.
    pub api_urls: Vec<String>,
    /// The first admin's e-mail (`FLOODGATE_ADMIN_EMAIL`).
    pub admin_email: String,
    /// Its password.
    pub admin_password: String,
    /// The test database.
    pub database_url: String,
    /// Redis.
    pub redis_url: String,
    /// Every Redis key of this deployment starts with it.
    pub redis_prefix: String,
    /// RabbitMQ.
    pub amqp_url: String,
    /// Every exchange and queue of this deployment starts with it.
    pub mq_prefix: String,
    /// The gateway simulator (ledger at `/v1/_ledger`).
    pub gateway_url: String,
    /// The SMTP sink (`smtp://127.0.0.1:<port>`).
    pub smtp_url: String,
    /// Where the SMTP sink writes each e-mail (`*.eml`).
    pub mail_dir: PathBuf,
    /// The run directory (pid files, logs, `env`).
    pub run_dir: PathBuf,
    /// The admin server of every process that has one, by name (`booking-worker-1` →
    /// `http://127.0.0.1:<port>`).
    pub admin_urls: BTreeMap<String, String>,
    /// The settings every process got (`JWT_SECRET`, `TICKET_SIGNING_KEY`, ...).
    pub settings: BTreeMap<String, String>,
    root: PathBuf,
    bin_dir: PathBuf,
    http: reqwest::Client,
    publisher: Option<(lapin::Connection, Publisher)>,
    database: Option<TestDatabase>,
}

impl Floodgate {
    /// Starts everything with the default [`Options`].
    pub async fn start() -> Self {
        Self::start_with(Options::default()).await
    }

    /// Starts everything: smtp-sink, gateway-simulator, ingress, the admission controllers,
    /// the booking-workers, payment-worker, notifier.
    pub async fn start_with(options: Options) -> Self {
        let bin_dir = binaries_dir();
        let database = TestDatabase::create().await;
        let tag = uuid::Uuid::new_v4().simple().to_string();
        let root = std::env::temp_dir().join(format!("floodgate-loadgen-{tag}"));
        let run_dir = root.join("run");
        let mail_dir = root.join("mail");
        fs::create_dir_all(&run_dir).expect("the temporary run directory can be created");
        fs::create_dir_all(&mail_dir).expect("the temporary mail directory can be created");

        let workers = options.booking_workers;
        let controllers = options.admission_controllers;
        let ingresses = options.ingresses.max(1);
        // smtp, gateway, an API port per ingress, then one admin port per ingress, controller,
        // worker, payment, notifier.
        let mut ports = free_ports(2 + 2 * ingresses + controllers + workers + 2).into_iter();
        let mut next = || ports.next().expect("enough ports were reserved");
        let (smtp_port, gateway_port) = (next(), next());
        let api_ports: Vec<u16> = (0..ingresses).map(|_| next()).collect();
        let mut admin_ports: Vec<(String, &'static str, u16)> = Vec::new();
        let mut api_listen = BTreeMap::new();
        for (i, api_port) in api_ports.iter().enumerate() {
            let name = instance_name("ingress", i);
            api_listen.insert(name.clone(), format!("127.0.0.1:{api_port}"));
            admin_ports.push((name, "ingress", next()));
        }
        for i in 0..controllers {
            admin_ports.push((instance_name("waiting-room", i), "waiting-room", next()));
        }
        for i in 0..workers {
            admin_ports.push((instance_name("booking-worker", i), "booking-worker", next()));
        }
        admin_ports.push(("payment-worker".into(), "payment-worker", next()));
        admin_ports.push(("notifier".into(), "notifier", next()));

        let api_urls: Vec<String> = api_ports
            .iter()
            .map(|port| format!("http://127.0.0.1:{port}"))
            .collect();
        let api_url = api_urls[0].clone();
        let gateway_url = format!("http://127.0.0.1:{gateway_port}");
        let smtp_url = format!("smtp://127.0.0.1:{smtp_port}");
        let secret = || uuid::Uuid::new_v4().simple().to_string();
        let admin_email = format!("admin-{}@floodgate.test", &tag[..8]);
        let admin_password = format!("Fg-{}", secret());
        let redis_url = env_string("REDIS_URL", defaults::REDIS_URL);
        let amqp_url = env_string("AMQP_URL", defaults::AMQP_URL);
        let mq_prefix = format!("loadgen-test-{tag}.");
        let redis_prefix = format!("loadgen-test-{tag}:");

        let mut settings: BTreeMap<String, String> = [
            ("PATH", env_string("PATH", "/usr/local/bin:/usr/bin:/bin")),
            ("RUST_BACKTRACE", "1".into()),
            ("RUST_LOG", "info,sqlx=warn,lapin=warn".into()),
            ("LOG_FORMAT", "json".into()),
            ("DATABASE_URL", database.url().to_owned()),
            // Several deployments may share the test server (max_connections 100).
            ("DATABASE_MAX_CONNECTIONS", "4".into()),
            ("REDIS_URL", redis_url.clone()),
            ("REDIS_KEY_PREFIX", redis_prefix.clone()),
            ("AMQP_URL", amqp_url.clone()),
            ("MQ_PREFIX", mq_prefix.clone()),
            ("FLOODGATE_ADMIN_EMAIL", admin_email.clone()),
            ("FLOODGATE_ADMIN_PASSWORD", admin_password.clone()),
            ("JWT_SECRET", secret()),
            ("ADMISSION_TOKEN_KEYS", format!("k1:{}", secret())),
            ("TICKET_SIGNING_KEY", secret()),
            ("GATEWAY_WEBHOOK_SECRET", format!("whsec_{}", secret())),
            ("SMTP_SINK_DIR", mail_dir.display().to_string()),
        ]
        .into_iter()
        .map(|(key, value)| (key.to_owned(), value))
        .collect();
        settings.extend(options.env.iter().cloned());

        let mut floodgate = Self {
            api_url,
            api_urls,
            admin_email,
            admin_password,
            database_url: database.url().to_owned(),
            redis_url,
            redis_prefix,
            amqp_url,
            mq_prefix,
            gateway_url,
            smtp_url,
            mail_dir,
            run_dir,
            admin_urls: admin_ports
                .iter()
                .map(|(name, _, port)| (name.clone(), format!("http://127.0.0.1:{port}")))
                .collect(),
            settings,
            root,
            bin_dir,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .expect("an HTTP client"),
            publisher: None,
            database: Some(database),
        };
        floodgate.write_env_file();

        // From here on a panic drops `floodgate`, which stops what started and cleans up.
        let started = Instant::now();
        let own = |pairs: &[(&str, String)]| -> Vec<(String, String)> {
            pairs.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect()
        };
        let smtp = floodgate.spawn(
            "smtp-sink",
            "smtp-sink",
            &options,
            own(&[("SMTP_SINK_LISTEN", format!("127.0.0.1:{smtp_port}"))]),
        );
        let gateway = floodgate.spawn(
            "gateway-simulator",
            "gateway-simulator",
            &options,
            own(&[
                ("GATEWAY_SIM_LISTEN", format!("127.0.0.1:{gateway_port}")),
                (
                    "GATEWAY_WEBHOOK_URL",
                    format!("{}/api/v1/payments/webhook", floodgate.api_url),
                ),
            ]),
        );
        floodgate.wait_listening("smtp-sink", smtp, smtp_port).await;
        floodgate
            .wait_ready(
                "gateway-simulator",
                gateway,
                &format!("{}/healthz", floodgate.gateway_url),
            )
            .await;

        // Ingress first (it creates the admin and, like every process, the topology); the
        // others do not depend on each other, so they start together and are waited for together.
        let mut starting = Vec::new();
        for (name, role, port) in &admin_ports {
            let admin = ("ADMIN_LISTEN", format!("127.0.0.1:{port}"));
            let env = match *role {
                "ingress" => own(&[
                    admin,
                    ("API_LISTEN", api_listen[name].clone()),
                    // TestDatabase applied the migrations.
                    ("MIGRATE_ON_START", "false".into()),
                    ("DATABASE_MAX_CONNECTIONS", "8".into()),
                    ("AUTH_RATE_PER_MINUTE", "1000000".into()),
                    ("AUTH_RATE_BURST", "1000000".into()),
                    ("CORS_ALLOWED_ORIGINS", floodgate.api_url.clone()),
                ]),
                "waiting-room" => own(&[admin, ("WAITING_ROOM_TICK_MS", "100".into())]),
                "booking-worker" => own(&[
                    admin,
                    // New shows are subscribed to quickly.
                    ("BOOKING_DISCOVERY_MS", "250".into()),
                    ("BOOKING_RELAY_SWEEP_MS", "500".into()),
                ]),
                "payment-worker" => own(&[admin, ("GATEWAY_URL", floodgate.gateway_url.clone())]),
                "notifier" => own(&[
                    admin,
                    ("SMTP_URL", floodgate.smtp_url.clone()),
                    ("PUBLIC_URL", floodgate.api_url.clone()),
                ]),
                other => unreachable!("no settings for {other}"),
            };
            let pid = floodgate.spawn(name, role, &options, env);
            let ready = format!("{}/readyz", floodgate.admin_urls[name]);
            if *role == "ingress" {
                floodgate.wait_ready(name, pid, &ready).await;
            } else {
                starting.push((name.clone(), pid, ready));
            }
        }
        let floodgate_ref = &floodgate;
        futures::future::join_all(
            starting
                .iter()
                .map(|(name, pid, ready)| floodgate_ref.wait_ready(name, *pid, ready)),
        )
        .await;

        let connection = mq::connect(&floodgate.amqp_url, "loadgen-test")
            .await
            .expect("RabbitMQ answers");
        let publisher = Publisher::new(&connection, Duration::from_secs(10))
            .await
            .expect("a confirm channel");
        floodgate.publisher = Some((connection, publisher));
        eprintln!(
            "[harness] Floodgate up in {:.1}s: api {}, run dir {}",
            started.elapsed().as_secs_f64(),
            floodgate.api_url,
            floodgate.run_dir.display()
        );
        floodgate
    }

    /// The deployment as `loadgen chaos` sees it.
    pub fn deployment(&self) -> chaos::Deployment {
        chaos::Deployment::discover(&self.run_dir).expect("the harness's processes are discoverable")
    }

    /// A pool on the test database.
    pub fn db(&self) -> &PgPool {
        self.database
            .as_ref()
            .expect("the database lives as long as the harness")
            .pool()
    }

    /// The exchange and queue names of this deployment.
    pub fn topology(&self) -> Topology {
        Topology::new(self.mq_prefix.clone())
    }

    /// The end of a process's log.
    pub fn log_tail(&self, name: &str, lines: usize) -> String {
        chaos::log_tail(&self.run_dir, name, lines)
    }

    /// Logs in as the admin.
    pub async fn admin(&self) -> Admin {
        let response = self
            .http
            .post(format!("{}/api/v1/auth/login", self.api_url))
            .json(&json!({ "email": self.admin_email, "password": self.admin_password }))
            .send()
            .await
            .expect("ingress answers");
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        let token = body["access_token"]
            .as_str()
            .unwrap_or_else(|| panic!("the admin login answered {status}: {body}"));
        Admin {
            http: self.http.clone(),
            api_url: self.api_url.clone(),
            token: token.to_owned(),
        }
    }

    /// Creates a show of `seats` seats (rows of up to 20, tier `floor`) that is on sale now,
    /// with a wide-open waiting room; returns its id.
    pub async fn create_show(&self, seats: usize) -> ShowId {
        self.admin().await.create_show(seats).await
    }

    /// Publishes a command to `show`'s queue that the writer answers without changing anything
    /// (releasing a booking that does not exist). A booking-worker learns that it is the show's
    /// single active consumer from its first delivery, so this makes the writer known (and, after
    /// a failover, makes the standby take over) without fan traffic.
    pub async fn poke(&self, show: ShowId) {
        let (_, publisher) = self.publisher.as_ref().expect("the publisher is set up");
        let command = ReleaseHold {
            command_id: CommandId::new(),
            user_id: UserId::new(),
            booking_id: BookingId::new(),
        };
        publisher
            .publish(
                &self.topology().shows_exchange(),
                &show.to_string(),
                &Envelope::new(Some(show), command),
            )
            .await
            .expect("the show's queue takes the command");
    }

    fn write_env_file(&self) {
        let mut text = String::from("# Written by the loadgen test harness, like scripts/up's .run/env.\n");
        for (key, value) in &self.settings {
            if key != "PATH" {
                text.push_str(&format!("{key}={}\n", shell_quote(value)));
            }
        }
        fs::write(self.run_dir.join("env"), text).expect("the env file can be written");
    }

    /// Starts `binary` as `name`: output appended to `<name>.log`, pid in `<name>.pid`.
    fn spawn(&self, name: &str, role: &str, options: &Options, own: Vec<(String, String)>) -> u32 {
        let program = self.bin_dir.join(role);
        let log_path = self.run_dir.join(format!("{name}.log"));
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .expect("the log can be opened");
        let now = OffsetDateTime::now_utc().format(&Rfc3339).unwrap_or_default();
        writeln!(log, "\n=== {now}: started by the loadgen test harness").expect("the log can be written");
        let mut env = self.settings.clone();
        env.extend(own);
        // The caller's settings win over the harness's, the per-role ones over everything.
        env.extend(options.env.iter().cloned());
        env.extend(
            options
                .process_env
                .iter()
                .filter(|(for_role, _, _)| for_role == role)
                .map(|(_, key, value)| (key.clone(), value.clone())),
        );
        let mut child = Command::new(&program)
            .env_clear()
            .envs(&env)
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log can be shared"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start {}: {err}", program.display()));
        let pid = child.id();
        chaos::write_pid_file(&self.run_dir, name, pid).expect("the pid file can be written");
        // Reaped when it exits, so a killed process does not linger as a zombie of the test.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        pid
    }

    async fn wait_ready(&self, name: &str, pid: u32, url: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            let ok = matches!(
                self.http.get(url).timeout(Duration::from_secs(2)).send().await,
                Ok(response) if response.status().is_success()
            );
            if ok {
                return;
            }
            self.check_starting(name, pid, deadline, url);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn wait_listening(&self, name: &str, pid: u32, port: u16) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            self.check_starting(name, pid, deadline, &format!("127.0.0.1:{port}"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn check_starting(&self, name: &str, pid: u32, deadline: Instant, at: &str) {
        if !chaos::is_running(pid) {
            panic!(
                "{name} exited during start-up; the end of its log:\n{}",
                self.log_tail(name, 40)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "{name} is not ready at {at} after {}s; the end of its log:\n{}",
                READY_TIMEOUT.as_secs(),
                self.log_tail(name, 40)
            );
        }
    }

    /// SIGKILLs every process named by a pid file that still runs one of the harness's
    /// binaries, and waits until they are gone.
    fn kill_all(&self) {
        let Ok(entries) = fs::read_dir(&self.run_dir) else {
            return;
        };
        let mut pids = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_none_or(|ext| ext != "pid") {
                continue;
            }
            let Some(pid) = fs::read_to_string(&path)
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
            else {
                continue;
            };
            let ours = fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|exe| exe.starts_with(&self.bin_dir));
            if ours && chaos::is_running(pid) {
                if let Some(target) = i32::try_from(pid).ok().and_then(Pid::from_raw) {
                    let _ = kill_process(target, Signal::KILL);
                }
                pids.push(pid);
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while pids.iter().any(|pid| chaos::is_running(*pid)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Floodgate {
    fn drop(&mut self) {
        self.kill_all();
        if std::thread::panicking() {
            for name in [
                "ingress",
                "waiting-room",
                "booking-worker",
                "booking-worker-1",
                "payment-worker",
                "notifier",
            ] {
                eprintln!("[harness] the end of {name}.log:\n{}", self.log_tail(name, 15));
            }
        }
        // Drop runs inside the test's runtime, which is blocked while we wait: the clean-up
        // gets its own thread and runtime (as TestDatabase's does).
        let database_url = self.database_url.clone();
        let amqp_url = self.amqp_url.clone();
        let topology = self.topology();
        let redis_url = self.redis_url.clone();
        let redis_prefix = self.redis_prefix.clone();
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(clean_up(&database_url, &amqp_url, &topology, &redis_url, &redis_prefix))
        });
        match cleanup.join() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => eprintln!("[harness] clean-up failed: {err:#}"),
            Err(_) => eprintln!("[harness] clean-up panicked"),
        }
        drop(self.publisher.take());
        drop(self.database.take());
        let _ = fs::remove_dir_all(&self.root);
    }
}

/// Deletes the RabbitMQ topology (with every show's queue) and the Redis keys of a deployment.
async fn clean_up(
    database_url: &str,
    amqp_url: &str,
    topology: &Topology,
    redis_url: &str,
    redis_prefix: &str,
) -> anyhow::Result<()> {
    let mut db = sqlx::PgConnection::connect(database_url).await?;
    let shows: Vec<ShowId> = sqlx::query_scalar("SELECT show_id FROM show")
        .fetch_all(&mut db)
        .await?;
    db.close().await?;

    let connection = mq::connect(amqp_url, "loadgen-test-cleanup").await?;
    let channel = connection.create_channel().await?;
    topology.delete(&channel, &shows).await?;
    let _ = connection.close(200, "done".into()).await;

    let client = redis::Client::open(redis_url)?;
    let mut redis = client.get_multiplexed_async_connection().await?;
    let pattern = format!("{redis_prefix}*");
    let mut cursor = 0_u64;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(&pattern)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut redis)
            .await?;
        if !keys.is_empty() {
            redis::cmd("DEL").arg(&keys).query_async::<()>(&mut redis).await?;
        }
        if next == 0 {
            return Ok(());
        }
        cursor = next;
    }
}

/// An admin's authenticated calls.
pub struct Admin {
    http: reqwest::Client,
    api_url: String,
    token: String,
}

impl Admin {
    /// `method path` with a JSON body; panics unless it answers `expect`.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: &Value, expect: u16) -> Value {
        let response = self
            .http
            .request(method.clone(), format!("{}{path}", self.api_url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|err| panic!("{method} {path}: {err}"));
        let status = response.status().as_u16();
        let answer: Value = response.json().await.unwrap_or(Value::Null);
        assert_eq!(status, expect, "{method} {path} answered {status}: {answer}");
        answer
    }

    /// See [`Floodgate::create_show`].
    pub async fn create_show(&self, seats: usize) -> ShowId {
        let tag = &uuid::Uuid::new_v4().simple().to_string()[..12];
        let rows: Vec<Value> = (0..seats.div_ceil(20))
            .map(
                |row| json!({ "label": format!("R{}", row + 1), "seats": (seats - row * 20).min(20), "tier": "floor" }),
            )
            .collect();
        let venue = self
            .call(
                reqwest::Method::POST,
                "/api/v1/admin/venues",
                &json!({
                    "name": format!("Harness Hall {tag}"), "city": "Testville", "address": "1 Test Street",
                    "timezone": "UTC", "sections": [{ "name": "Floor", "rows": rows }],
                }),
                201,
            )
            .await;
        let event = self
            .call(
                reqwest::Method::POST,
                "/api/v1/admin/events",
                &json!({ "title": format!("Harness night {tag}"), "category": "concert", "city": "Testville",
                         "description": "Started by the loadgen test harness." }),
                201,
            )
            .await;
        let now = OffsetDateTime::now_utc();
        let at = |offset: time::Duration| (now + offset).format(&Rfc3339).expect("a valid time");
        let show = self
            .call(
                reqwest::Method::POST,
                "/api/v1/admin/shows",
                &json!({
                    "event_id": event["event_id"], "venue_id": venue["venue_id"],
                    "starts_at": at(time::Duration::hours(2)),
                    "on_sale_at": at(time::Duration::seconds(-5)),
                    "currency": "EUR", "prices": { "floor": 5000 },
                    "max_tickets_per_user": 6, "hold_seconds": 600,
                    "waiting_room": {
                        "admit_per_second": 1000, "max_active": 100_000,
                        "prequeue_opens_at": at(time::Duration::minutes(-1)),
                    },
                }),
                201,
            )
            .await;
        show["show_id"]
            .as_str()
            .and_then(|id| id.parse().ok())
            .unwrap_or_else(|| panic!("the show answer has no show_id: {show}"))
    }
}

/// The directory of the workspace's debug binaries (where cargo put loadgen).
fn binaries_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_loadgen"))
        .parent()
        .expect("the loadgen binary is in a directory")
        .to_owned();
    for binary in [
        "smtp-sink",
        "gateway-simulator",
        "ingress",
        "waiting-room",
        "booking-worker",
        "payment-worker",
        "notifier",
    ] {
        assert!(
            dir.join(binary).is_file(),
            "{} is missing: run `cargo build --workspace --bins` first (scripts/test does)",
            dir.join(binary).display()
        );
    }
    dir
}

/// `ingress` for the first instance, `ingress-1`, `ingress-2`, ... after (as `scripts/up`).
fn instance_name(role: &str, index: usize) -> String {
    if index == 0 {
        role.to_owned()
    } else {
        format!("{role}-{index}")
    }
}

/// `count` distinct free TCP ports on 127.0.0.1 (held together while chosen, so none repeats).
fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("a free port"))
        .collect();
    listeners
        .iter()
        .map(|listener| listener.local_addr().expect("a bound address").port())
        .collect()
}

/// A value as `scripts/up` writes it to `.run/env` (`printf %q` style, single quotes here).
fn shell_quote(value: &str) -> String {
    let plain = value
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.,:/@%+=".contains(&b));
    if plain {
        value.to_owned()
    } else {
        format!("'{}'", value.replace('\'', r"'\''"))
    }
}
