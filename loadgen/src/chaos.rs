//! Faults injected into a running Floodgate while a sale is on (`loadgen flash-sale --chaos`):
//! the active booking-worker of the show is killed with SIGKILL, the payment-worker and the
//! notifier are restarted, the admission controller holding the show's lease is paused. Each
//! fault is returned as a [`Fault`] with its time, for the report.
//!
//! A [`Deployment`] is the set of processes described by a run directory laid out the way
//! `scripts/up` lays out `.run/`: `<name>.pid` (just the pid) and `<name>.log` per process,
//! with names such as `ingress`, `waiting-room`, `booking-worker`, `booking-worker-1`. The pid
//! files are read again on every call, so a process restarted by anyone (this module included)
//! is found under its new pid.
//!
//! A process is started again "identically", the way an orchestrator would replace it: its
//! `/proc/<pid>/cmdline`, `/proc/<pid>/environ` and `/proc/<pid>/cwd` are read before it is
//! stopped, and the same program runs with exactly that argv, environment and working
//! directory, in its own process group, stdin closed, output appended to `<name>.log`, its
//! pid written to `<name>.pid`.
//!
//! Which booking-worker writes a show, and which admission controller holds its lease, is read
//! from the processes' own admin `/metrics` (`floodgate_booking_active_writer` and
//! `floodgate_waiting_room_lease_held`, 1 on the one that has it): that is what an operator
//! sees, and it needs no access to RabbitMQ's or Redis's internals.

use std::{
    ffi::{OsStr, OsString},
    fs,
    io::Write as _,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    os::unix::{
        ffi::{OsStrExt as _, OsStringExt as _},
        process::CommandExt as _,
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use common::{config::defaults, ids::ShowId};
use rustix::process::{Pid, Signal};
use serde::Serialize;
use time::OffsetDateTime;

/// How long a scrape of an admin endpoint may take (a stopped process never answers).
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a graceful stop may take before SIGKILL (as `scripts/up` and `scripts/down`).
const TERM_GRACE: Duration = Duration::from_secs(15);
/// How long a killed process may take to disappear.
const KILL_GRACE: Duration = Duration::from_secs(5);
/// How long a replacement started after a kill must stay up to count as started.
const REPLACEMENT_SETTLE: Duration = Duration::from_secs(1);
/// How long a restarted process may take to be ready.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long to look for the show's writer or lease holder (one may be taking over right now).
const FIND_TIMEOUT: Duration = Duration::from_secs(10);
/// How often waits poll.
const POLL: Duration = Duration::from_millis(100);

/// One live process of a deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Process {
    /// Its name in the run directory (`booking-worker-1`).
    pub name: String,
    /// What it is: the name without an instance suffix (`booking-worker`), also its binary.
    pub role: String,
    /// Its pid.
    pub pid: u32,
    /// Its admin server (`http://127.0.0.1:9102`), if it has one: `ADMIN_LISTEN` from its
    /// environment, else the default admin port of its role.
    pub admin_url: Option<String>,
    /// What answers 200 once it is ready: `<admin>/readyz`, or the gateway simulator's
    /// `/healthz`; `None` for the SMTP sink.
    pub ready_url: Option<String>,
    /// An ingress's public API (`http://127.0.0.1:8081`): `API_LISTEN` from its environment,
    /// else the default port.
    pub api_url: Option<String>,
}

/// A fault that was injected.
#[derive(Debug, Clone, Serialize)]
pub struct Fault {
    /// When it was injected (the signal was sent).
    #[serde(skip)]
    pub at: Instant,
    /// The same moment on the wall clock.
    #[serde(with = "time::serde::rfc3339")]
    pub wall_clock: OffsetDateTime,
    /// What was done, for people (`SIGKILL to the active booking-worker of show ...`).
    pub what: String,
    /// The same in a few words, for a chart's marker (`kill -9 writer`).
    pub label: String,
    /// The process it was done to (its name in the run directory).
    pub process: String,
    /// Its pid at the time.
    pub pid: u32,
    /// The pid of the process started in its place, if one was.
    pub new_pid: Option<u32>,
    /// From the signal to the end of the fault: the replacement started (kill), ready
    /// (restart), or the process continued (pause).
    pub lasted_ms: u64,
}

impl Fault {
    fn new(what: String, label: String, process: &Process, at: Instant, wall_clock: OffsetDateTime) -> Self {
        Self {
            at,
            wall_clock,
            what,
            label,
            process: process.name.clone(),
            pid: process.pid,
            new_pid: None,
            lasted_ms: 0,
        }
    }

    fn ended(mut self, new_pid: Option<u32>) -> Self {
        self.new_pid = new_pid;
        self.lasted_ms = u64::try_from(self.at.elapsed().as_millis()).unwrap_or(u64::MAX);
        self
    }
}

/// The processes of a run directory, and the faults that can be injected into them.
#[derive(Debug, Clone)]
pub struct Deployment {
    run_dir: PathBuf,
    http: reqwest::Client,
}

impl Deployment {
    /// The deployment whose pid files are in `run_dir` (`.run` for `scripts/up`). Fails when
    /// no pid file there names a live process.
    pub fn discover(run_dir: &Path) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(SCRAPE_TIMEOUT)
            .build()
            .context("cannot build an HTTP client")?;
        let deployment = Self {
            run_dir: run_dir.to_owned(),
            http,
        };
        if deployment.processes().is_empty() {
            bail!(
                "no live Floodgate process has a pid file in {} (start one with scripts/up)",
                run_dir.display()
            );
        }
        Ok(deployment)
    }

    /// The run directory.
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    /// The live processes, by name. A pid file whose process is gone, or whose pid now belongs
    /// to another program, is left out.
    pub fn processes(&self) -> Vec<Process> {
        let Ok(entries) = fs::read_dir(&self.run_dir) else {
            return Vec::new();
        };
        let mut processes: Vec<Process> = entries
            .flatten()
            .filter_map(|entry| {
                let path = entry.path();
                let name = path.file_name()?.to_str()?.strip_suffix(".pid")?.to_owned();
                let pid: u32 = fs::read_to_string(&path).ok()?.trim().parse().ok()?;
                live_process(name, pid)
            })
            .collect();
        processes.sort_by(|a, b| a.name.cmp(&b.name));
        processes
    }

    /// The live process called `name`.
    pub fn process(&self, name: &str) -> anyhow::Result<Process> {
        self.processes()
            .into_iter()
            .find(|process| process.name == name)
            .with_context(|| format!("no live process {name} in {}", self.run_dir.display()))
    }

    /// The booking-workers that say they are the writer of `show` right now (normally one;
    /// none while a standby takes over).
    pub async fn writers(&self, show: ShowId) -> Vec<Process> {
        self.reporting("booking-worker", "floodgate_booking_active_writer", show)
            .await
    }

    /// The admission controllers that say they hold the lease of `show` right now.
    pub async fn lease_holders(&self, show: ShowId) -> Vec<Process> {
        self.reporting("waiting-room", "floodgate_waiting_room_lease_held", show)
            .await
    }

    /// Kills the active booking-worker of `show` with SIGKILL, then starts it again
    /// identically (it comes back as a standby) without waiting for it to be ready. Refuses
    /// when no other booking-worker is running and ready to take over.
    pub async fn kill_active_booking_worker(&self, show: ShowId) -> anyhow::Result<Fault> {
        let active = self
            .the_one(show, "the active booking-worker", |show| self.writers(show))
            .await?;
        self.kill_and_start_again(
            active,
            format!("SIGKILL to the active booking-worker of show {show}"),
            "kill -9 writer".to_owned(),
            "scripts/up --workers 2 starts one",
        )
        .await
    }

    /// Kills the admission controller holding the lease of `show` with SIGKILL (another one
    /// must take the lease over), then starts it again identically. Refuses when no other
    /// admission controller is running and ready.
    pub async fn kill_lease_holder(&self, show: ShowId) -> anyhow::Result<Fault> {
        let holder = self
            .the_one(show, "the admission controller holding the lease", |show| {
                self.lease_holders(show)
            })
            .await?;
        self.kill_and_start_again(
            holder,
            format!("SIGKILL to the admission controller holding the lease of show {show}"),
            "kill -9 controller".to_owned(),
            "scripts/up --replicas 2 starts one",
        )
        .await
    }

    /// Kills ingress replica `name` with SIGKILL (its fans must carry on through another),
    /// then starts it again identically. Refuses when no other ingress is running and ready.
    pub async fn kill_ingress(&self, name: &str) -> anyhow::Result<Fault> {
        let victim = self.process(name)?;
        if victim.role != "ingress" {
            bail!("{name} is not an ingress");
        }
        self.kill_and_start_again(
            victim,
            format!("SIGKILL to ingress replica {name}"),
            format!("kill -9 {name}"),
            "scripts/up --replicas 2 starts one",
        )
        .await
    }

    /// SIGKILL to `victim`, then the same program started again in its place, without
    /// waiting for it to be ready. Refuses when no other ready process of its role could
    /// carry on meanwhile (`how` says how to start one).
    async fn kill_and_start_again(
        &self,
        victim: Process,
        what: String,
        label: String,
        how: &str,
    ) -> anyhow::Result<Fault> {
        let mut peer = false;
        for other in self.processes() {
            if other.role == victim.role && other.pid != victim.pid && self.is_ready(&other).await {
                peer = true;
                break;
            }
        }
        if !peer {
            bail!(
                "refusing to kill {}: no other {} is running and ready ({how})",
                victim.name,
                victim.role
            );
        }
        let launch = Launch::of(victim.pid)?;
        let (at, wall_clock) = (Instant::now(), OffsetDateTime::now_utc());
        send(victim.pid, Signal::KILL)?;
        let fault = Fault::new(what, label, &victim, at, wall_clock);
        if !wait_for_exit(victim.pid, KILL_GRACE).await {
            bail!("{} (pid {}) is still alive after SIGKILL", victim.name, victim.pid);
        }
        let new_pid = launch.spawn(&self.run_dir, &victim.name, "started again after SIGKILL")?;
        // Not waiting for it to be ready (its peers carry on meanwhile), but a replacement that
        // dies at once (a port still taken, say) is this fault failing, not a fault caused.
        tokio::time::sleep(REPLACEMENT_SETTLE).await;
        if !is_running(new_pid) {
            bail!(
                "{} was killed, but its replacement (pid {new_pid}) exited at once:\n{}",
                victim.name,
                log_tail(&self.run_dir, &victim.name, 12)
            );
        }
        tracing::info!(process = %victim.name, pid = victim.pid, new_pid, what = %fault.what, "killed");
        Ok(fault.ended(Some(new_pid)))
    }

    /// Restarts `name` gracefully: SIGTERM, wait for it to exit (SIGKILL after 15 s), start
    /// it again identically, wait until it is ready.
    pub async fn restart(&self, name: &str) -> anyhow::Result<Fault> {
        let process = self.process(name)?;
        let launch = Launch::of(process.pid)?;
        let (at, wall_clock) = (Instant::now(), OffsetDateTime::now_utc());
        send(process.pid, Signal::TERM)?;
        let mut fault = Fault::new(
            format!("restart of {name} (SIGTERM)"),
            format!("restart {name}"),
            &process,
            at,
            wall_clock,
        );
        if !wait_for_exit(process.pid, TERM_GRACE).await {
            tracing::warn!(
                process = name,
                pid = process.pid,
                "still running after SIGTERM: SIGKILL"
            );
            fault.what = format!("restart of {name} (SIGTERM, SIGKILL after {}s)", TERM_GRACE.as_secs());
            send(process.pid, Signal::KILL)?;
            if !wait_for_exit(process.pid, KILL_GRACE).await {
                bail!("{name} (pid {}) is still alive after SIGKILL", process.pid);
            }
        }
        let new_pid = launch.spawn(&self.run_dir, name, "restarted")?;
        if let Some(url) = &process.ready_url {
            self.wait_ready(name, new_pid, url).await?;
        }
        tracing::info!(process = name, pid = process.pid, new_pid, "restarted");
        Ok(fault.ended(Some(new_pid)))
    }

    /// Pauses the admission controller holding the lease of `show` for `pause` (SIGSTOP, then
    /// SIGCONT). The process is continued even if this future is dropped mid-pause.
    pub async fn pause_admission_controller(&self, show: ShowId, pause: Duration) -> anyhow::Result<Fault> {
        let holder = self
            .the_one(show, "the admission controller holding the lease", |show| {
                self.lease_holders(show)
            })
            .await?;
        let (at, wall_clock) = (Instant::now(), OffsetDateTime::now_utc());
        send(holder.pid, Signal::STOP)?;
        let resume = Resume(holder.pid);
        let fault = Fault::new(
            format!(
                "SIGSTOP for {} ms to the admission controller holding the lease of show {show}",
                pause.as_millis()
            ),
            format!("SIGSTOP controller {:.0} s", pause.as_secs_f64()),
            &holder,
            at,
            wall_clock,
        );
        tokio::time::sleep(pause).await;
        drop(resume);
        tracing::info!(process = %holder.name, pid = holder.pid, %show, ?pause, "paused the lease holder");
        Ok(fault.ended(None))
    }

    /// The live processes of `role` whose `/metrics` give `metric{show_id="<show>"}` 1.
    async fn reporting(&self, role: &str, metric: &str, show: ShowId) -> Vec<Process> {
        let show = show.to_string();
        let mut found = Vec::new();
        for process in self.processes() {
            let Some(admin) = process.admin_url.as_deref().filter(|_| process.role == role) else {
                continue;
            };
            let Some(text) = self.get_text(&format!("{admin}/metrics")).await else {
                continue;
            };
            if sample_value(&text, metric, "show_id", &show) == Some(1.0) {
                found.push(process);
            }
        }
        found
    }

    /// Waits (up to 10 s) until exactly one process is `what` for `show`.
    async fn the_one<'a, F, Fut>(&'a self, show: ShowId, what: &str, find: F) -> anyhow::Result<Process>
    where
        F: Fn(ShowId) -> Fut,
        Fut: Future<Output = Vec<Process>> + 'a,
    {
        let deadline = Instant::now() + FIND_TIMEOUT;
        loop {
            let mut found = find(show).await;
            if found.len() == 1 {
                return Ok(found.remove(0));
            }
            if Instant::now() >= deadline {
                let names: Vec<&str> = found.iter().map(|p| p.name.as_str()).collect();
                bail!(
                    "cannot tell {what} of show {show} after {}s: {} process(es) claim it {names:?}",
                    FIND_TIMEOUT.as_secs(),
                    found.len()
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn is_ready(&self, process: &Process) -> bool {
        match &process.ready_url {
            Some(url) => self.answers_ok(url).await,
            None => true,
        }
    }

    async fn wait_ready(&self, name: &str, pid: u32, url: &str) -> anyhow::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.answers_ok(url).await {
            if !is_running(pid) {
                bail!(
                    "{name} exited after its restart; the end of its log:\n{}",
                    log_tail(&self.run_dir, name, 30)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "{name} is not ready at {url} {}s after its restart; the end of its log:\n{}",
                    READY_TIMEOUT.as_secs(),
                    log_tail(&self.run_dir, name, 30)
                );
            }
            tokio::time::sleep(POLL).await;
        }
        Ok(())
    }

    async fn answers_ok(&self, url: &str) -> bool {
        matches!(self.http.get(url).send().await, Ok(response) if response.status().is_success())
    }

    async fn get_text(&self, url: &str) -> Option<String> {
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        response.text().await.ok()
    }
}

/// Sends SIGCONT when dropped, so a pause always ends.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        if let Err(err) = send(self.0, Signal::CONT) {
            tracing::warn!(pid = self.0, error = %err, "cannot continue a paused process");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Processes

/// The process `name` with `pid`, if that pid is alive and runs the binary of `name`'s role (a
/// stale pid file whose number was reused by another program is ignored, as `scripts/up` does).
fn live_process(name: String, pid: u32) -> Option<Process> {
    if !is_running(pid) {
        return None;
    }
    let role = role_of(&name).to_owned();
    let exe = fs::read_link(format!("/proc/{pid}/exe")).ok()?;
    if binary_name(&exe)? != role {
        return None;
    }
    let environ = fs::read(format!("/proc/{pid}/environ")).ok()?;
    let env = parse_environ(&environ);
    let admin_url = admin_url(&role, &env);
    let ready_url = ready_url(&role, admin_url.as_deref(), &env);
    let api_url = (role == "ingress")
        .then(|| {
            let listen = match env_value(&env, "API_LISTEN") {
                Some(value) => value.parse().ok()?,
                None => SocketAddr::from((Ipv4Addr::LOCALHOST, defaults::API_PORT)),
            };
            (listen.port() != 0).then(|| http_url(listen))
        })
        .flatten();
    Some(Process {
        name,
        role,
        pid,
        admin_url,
        ready_url,
        api_url,
    })
}

/// A name without its instance suffix: `booking-worker-1` → `booking-worker`.
pub fn role_of(name: &str) -> &str {
    match name.rsplit_once('-') {
        Some((role, instance)) if !instance.is_empty() && instance.bytes().all(|b| b.is_ascii_digit()) => role,
        _ => name,
    }
}

/// The file name of an executable, without the ` (deleted)` the kernel appends once the file
/// was replaced (a rebuild while the process runs).
fn binary_name(exe: &Path) -> Option<&str> {
    let name = exe.file_name()?.to_str()?;
    Some(name.strip_suffix(" (deleted)").unwrap_or(name))
}

fn env_value<'a>(env: &'a [(OsString, OsString)], key: &str) -> Option<&'a str> {
    env.iter()
        .rev()
        .find(|(name, _)| name == key)
        .and_then(|(_, value)| value.to_str())
        .map(str::trim)
        .filter(|value| !value.is_empty())
}

/// `http://host:port` for a listen address; a wildcard address is reached on loopback.
fn http_url(listen: SocketAddr) -> String {
    let ip = match listen.ip() {
        ip if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        ip => ip,
    };
    format!("http://{}", SocketAddr::new(ip, listen.port()))
}

/// The admin server of a process of `role` with environment `env`: `ADMIN_LISTEN`, else the
/// role's default port (DESIGN.md "Processes"). `None` for processes without one.
fn admin_url(role: &str, env: &[(OsString, OsString)]) -> Option<String> {
    let default_port = match role {
        "ingress" => defaults::ADMIN_PORT_INGRESS,
        "waiting-room" => defaults::ADMIN_PORT_WAITING_ROOM,
        "booking-worker" => defaults::ADMIN_PORT_BOOKING_WORKER,
        "payment-worker" => defaults::ADMIN_PORT_PAYMENT_WORKER,
        "notifier" => defaults::ADMIN_PORT_NOTIFIER,
        _ => return None,
    };
    let listen = match env_value(env, "ADMIN_LISTEN") {
        Some(value) => value.parse().ok()?,
        None => SocketAddr::from((Ipv4Addr::LOCALHOST, default_port)),
    };
    // Port 0 (tests): the port is known only to the process itself.
    (listen.port() != 0).then(|| http_url(listen))
}

/// What answers 200 once a process of `role` is ready.
fn ready_url(role: &str, admin_url: Option<&str>, env: &[(OsString, OsString)]) -> Option<String> {
    if let Some(admin) = admin_url {
        return Some(format!("{admin}/readyz"));
    }
    if role == "gateway-simulator" {
        let listen: SocketAddr = match env_value(env, "GATEWAY_SIM_LISTEN") {
            Some(value) => value.parse().ok()?,
            None => SocketAddr::from((Ipv4Addr::LOCALHOST, 8090)),
        };
        return (listen.port() != 0).then(|| format!("{}/healthz", http_url(listen)));
    }
    None
}

/// The state letter of `/proc/<pid>/stat` (`R`, `S`, `D`, `T` stopped, `Z` zombie, ...), or
/// `None` when there is no such process.
pub fn process_state(pid: u32) -> Option<char> {
    parse_state(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The state field of a `/proc/<pid>/stat` line: the first one after the command name, which
/// is in parentheses and may itself contain spaces and parentheses.
fn parse_state(stat: &str) -> Option<char> {
    fields_after_command(stat)?.next()?.chars().next()
}

/// The fields of a `/proc/<pid>/stat` line after the command name (the state first).
fn fields_after_command(stat: &str) -> Option<std::str::SplitWhitespace<'_>> {
    Some(stat.get(stat.rfind(')')? + 1..)?.split_whitespace())
}

/// The number of threads field of a `/proc/<pid>/stat` line (the 20th).
fn parse_threads(stat: &str) -> Option<u32> {
    fields_after_command(stat)?.nth(17)?.parse().ok()
}

/// Whether `pid` exists and has not finished exiting. A zombie has exited (it only waits to be
/// reaped) once it is the last of its threads: a multi-threaded process's main thread turns
/// zombie first, and until its other threads are gone the process still holds its files, such
/// as the listening socket its replacement must bind (a full chaos rehearsal restarted an
/// ingress into "address already in use" that way).
pub fn is_running(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    match parse_state(&stat) {
        None => false,
        Some('Z' | 'X') => parse_threads(&stat).is_some_and(|threads| threads > 1),
        Some(_) => true,
    }
}

async fn wait_for_exit(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while is_running(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
    true
}

fn send(pid: u32, signal: Signal) -> anyhow::Result<()> {
    let target = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .with_context(|| format!("{pid} is not a valid pid"))?;
    rustix::process::kill_process(target, signal).with_context(|| format!("cannot send {signal:?} to pid {pid}"))
}

/// The last `lines` lines of `<run_dir>/<name>.log`.
pub fn log_tail(run_dir: &Path, name: &str, lines: usize) -> String {
    let path = run_dir.join(format!("{name}.log"));
    match fs::read(&path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(err) => format!("({} cannot be read: {err})", path.display()),
    }
}

// ---------------------------------------------------------------------------------------------
// Starting a process again

/// How a process was started: enough to start it again identically.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launch {
    /// The program to run: the process's executable if it still exists, else `argv[0]`.
    pub program: PathBuf,
    /// Its arguments, `argv[0]` included.
    pub argv: Vec<OsString>,
    /// Its environment, in order.
    pub env: Vec<(OsString, OsString)>,
    /// Its working directory.
    pub cwd: PathBuf,
}

impl Launch {
    /// Reads how `pid` was started from `/proc/<pid>/{cmdline,environ,cwd,exe}`.
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        let proc = PathBuf::from(format!("/proc/{pid}"));
        let read = |file: &str| fs::read(proc.join(file)).with_context(|| format!("cannot read /proc/{pid}/{file}"));
        let mut argv = split_nul(&read("cmdline")?);
        // A process caught in the middle of its execve (just spawned) shows an empty command
        // line for a moment; one that has exited shows one for good.
        for _ in 0..50 {
            if !argv.is_empty() || !is_running(pid) {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
            argv = split_nul(&read("cmdline")?);
        }
        if argv.is_empty() {
            bail!("pid {pid} has no command line (it has exited)");
        }
        let env = parse_environ(&read("environ")?);
        let cwd = fs::read_link(proc.join("cwd")).with_context(|| format!("cannot read /proc/{pid}/cwd"))?;
        let exe = fs::read_link(proc.join("exe")).ok().map(|exe| {
            // A rebuilt binary replaces the file: run the new one at the same path.
            let bytes = exe.as_os_str().as_bytes();
            let bytes = bytes.strip_suffix(b" (deleted)").unwrap_or(bytes);
            PathBuf::from(OsStr::from_bytes(bytes))
        });
        let program = match exe {
            Some(exe) if exe.is_file() => exe,
            _ => {
                let argv0 = Path::new(&argv[0]);
                // A relative path with a slash is relative to the process's directory; a bare
                // name is looked up in the PATH of its environment.
                if argv0.is_relative() && argv[0].as_bytes().contains(&b'/') {
                    cwd.join(argv0)
                } else {
                    argv0.to_owned()
                }
            }
        };
        Ok(Self {
            program,
            argv,
            env,
            cwd,
        })
    }

    /// Starts the process as `name` of `run_dir`: in its own process group, stdin closed,
    /// output appended to `<name>.log` (after a line saying `why`), pid written to `<name>.pid`.
    /// A thread reaps it when it exits, so it never lingers as a zombie of this process.
    pub fn spawn(&self, run_dir: &Path, name: &str, why: &str) -> anyhow::Result<u32> {
        let log_path = run_dir.join(format!("{name}.log"));
        let mut log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("cannot open {}", log_path.display()))?;
        let now = OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default();
        writeln!(log, "\n=== {now}: {why} by loadgen chaos")?;
        let mut command = Command::new(&self.program);
        if let Some(argv0) = self.argv.first() {
            command.arg0(argv0);
        }
        command
            .args(self.argv.iter().skip(1))
            .env_clear()
            .envs(self.env.iter().map(|(key, value)| (key, value)))
            .current_dir(&self.cwd)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            // Its own process group: signals meant for loadgen (Ctrl-C) do not reach it.
            .process_group(0);
        let mut child = command
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", self.program.display()))?;
        let pid = child.id();
        write_pid_file(run_dir, name, pid)?;
        std::thread::Builder::new()
            .name(format!("reap-{pid}"))
            .spawn(move || {
                let _ = child.wait();
            })
            .context("cannot start a reaper thread")?;
        Ok(pid)
    }
}

/// Writes `<run_dir>/<name>.pid` atomically (a reader never sees an empty file).
pub fn write_pid_file(run_dir: &Path, name: &str, pid: u32) -> anyhow::Result<()> {
    let path = run_dir.join(format!("{name}.pid"));
    let temporary = run_dir.join(format!(".{name}.pid.tmp"));
    fs::write(&temporary, format!("{pid}\n")).with_context(|| format!("cannot write {}", temporary.display()))?;
    fs::rename(&temporary, &path).with_context(|| format!("cannot write {}", path.display()))
}

// ---------------------------------------------------------------------------------------------
// Parsing

/// The NUL-separated strings of `/proc/<pid>/cmdline` (the last one is NUL-terminated too).
pub fn split_nul(bytes: &[u8]) -> Vec<OsString> {
    let bytes = bytes.strip_suffix(b"\0").unwrap_or(bytes);
    if bytes.is_empty() {
        return Vec::new();
    }
    bytes
        .split(|byte| *byte == 0)
        .map(|part| OsString::from_vec(part.to_vec()))
        .collect()
}

/// The `KEY=value` entries of `/proc/<pid>/environ`, in order; the value may contain `=`.
/// Entries without `=` cannot be passed on and are left out.
pub fn parse_environ(bytes: &[u8]) -> Vec<(OsString, OsString)> {
    split_nul(bytes)
        .into_iter()
        .filter_map(|entry| {
            let bytes = entry.as_bytes();
            let at = bytes.iter().position(|byte| *byte == b'=').filter(|at| *at > 0)?;
            Some((
                OsString::from_vec(bytes[..at].to_vec()),
                OsString::from_vec(bytes[at + 1..].to_vec()),
            ))
        })
        .collect()
}

/// The value of the first sample of `metric` whose label `label` is `value`, in Prometheus
/// text format.
pub fn sample_value(text: &str, metric: &str, label: &str, value: &str) -> Option<f64> {
    text.lines().find_map(|line| {
        let sample = parse_sample(line)?;
        let wanted = sample.name == metric && sample.labels.iter().any(|(k, v)| *k == label && v == value);
        wanted.then_some(sample.value)
    })
}

/// One sample of a Prometheus text exposition.
#[derive(Debug, PartialEq)]
struct Sample<'a> {
    name: &'a str,
    /// Label names and their unescaped values.
    labels: Vec<(&'a str, String)>,
    value: f64,
}

/// One sample line. Comments, blank and malformed lines give `None`.
fn parse_sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let name_end = line.find(|c: char| c == '{' || c.is_whitespace())?;
    let (name, mut rest) = line.split_at(name_end);
    let mut labels = Vec::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start_matches([' ', ',']);
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once('=')?;
            let mut chars = after.strip_prefix('"')?.char_indices();
            let mut label_value = String::new();
            let end = loop {
                match chars.next()? {
                    (_, '\\') => match chars.next()?.1 {
                        'n' => label_value.push('\n'),
                        other => label_value.push(other),
                    },
                    (at, '"') => break at,
                    (_, c) => label_value.push(c),
                }
            };
            labels.push((key.trim(), label_value));
            rest = &after[1 + end + 1..];
        }
    }
    let value = rest.split_whitespace().next()?.parse().ok()?;
    Some(Sample { name, labels, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    #[test]
    fn a_command_line_splits_on_nul_and_keeps_empty_arguments() {
        assert_eq!(
            split_nul(b"/bin/ingress\0serve\0\0x y\0"),
            ["/bin/ingress", "serve", "", "x y"]
        );
        assert_eq!(split_nul(b"/bin/notifier"), ["/bin/notifier"]);
        assert!(split_nul(b"").is_empty());
    }

    #[test]
    fn an_environment_keeps_its_order_and_values_containing_equals_signs() {
        let env = parse_environ(b"PATH=/bin\0DATABASE_URL=postgres://x/y?sslmode=disable\0EMPTY=\0junk\0=odd\0");
        assert_eq!(
            env,
            os(&[
                ("PATH", "/bin"),
                ("DATABASE_URL", "postgres://x/y?sslmode=disable"),
                ("EMPTY", ""),
            ])
        );
    }

    #[test]
    fn non_utf8_environment_bytes_survive_unchanged() {
        let env = parse_environ(b"K=\xff\xfe\0");
        assert_eq!(env[0].1.as_bytes(), b"\xff\xfe");
    }

    #[test]
    fn instance_suffixes_are_not_part_of_the_role() {
        assert_eq!(role_of("booking-worker-1"), "booking-worker");
        assert_eq!(role_of("waiting-room-12"), "waiting-room");
        assert_eq!(role_of("payment-worker"), "payment-worker");
        assert_eq!(role_of("ingress"), "ingress");
        assert_eq!(role_of("smtp-sink"), "smtp-sink");
        assert_eq!(role_of("x-"), "x-");
    }

    #[test]
    fn a_replaced_binary_keeps_its_name() {
        assert_eq!(
            binary_name(Path::new("/t/release/notifier (deleted)")),
            Some("notifier")
        );
        assert_eq!(binary_name(Path::new("/t/release/ingress")), Some("ingress"));
    }

    #[test]
    fn the_admin_url_comes_from_admin_listen_or_the_role_default() {
        assert_eq!(
            admin_url("booking-worker", &[]).as_deref(),
            Some("http://127.0.0.1:9102")
        );
        assert_eq!(admin_url("notifier", &[]).as_deref(), Some("http://127.0.0.1:9104"));
        let env = os(&[("ADMIN_LISTEN", "127.0.0.1:9131")]);
        assert_eq!(
            admin_url("booking-worker", &env).as_deref(),
            Some("http://127.0.0.1:9131")
        );
        let env = os(&[("ADMIN_LISTEN", "0.0.0.0:9100")]);
        assert_eq!(admin_url("ingress", &env).as_deref(), Some("http://127.0.0.1:9100"));
        let env = os(&[("ADMIN_LISTEN", "127.0.0.1:0")]);
        assert_eq!(admin_url("ingress", &env), None);
        assert_eq!(admin_url("smtp-sink", &[]), None);
    }

    #[test]
    fn readiness_is_readyz_or_the_gateway_simulators_healthz() {
        assert_eq!(
            ready_url("notifier", Some("http://127.0.0.1:9104"), &[]).as_deref(),
            Some("http://127.0.0.1:9104/readyz")
        );
        let env = os(&[("GATEWAY_SIM_LISTEN", "127.0.0.1:18090")]);
        assert_eq!(
            ready_url("gateway-simulator", None, &env).as_deref(),
            Some("http://127.0.0.1:18090/healthz")
        );
        assert_eq!(ready_url("smtp-sink", None, &[]), None);
    }

    #[test]
    fn the_state_is_read_after_the_last_parenthesis() {
        assert_eq!(parse_state("42 (tokio (rt) x) T 1 42 42 0"), Some('T'));
        assert_eq!(parse_state("42 (booking-worker) S 1"), Some('S'));
        assert_eq!(parse_state("garbage"), None);
        let zombie = "42 (ingress) Z 1 42 42 0 -1 4227084 100 0 0 0 10 20 0 0 20 0 3 0 5000 0 0";
        assert_eq!((parse_state(zombie), parse_threads(zombie)), (Some('Z'), Some(3)));
        assert_eq!(parse_threads("42 (x) S 1"), None);
    }

    const METRICS: &str = r#"# HELP floodgate_booking_active_writer 1 while this worker is the show's writer.
# TYPE floodgate_booking_active_writer gauge
floodgate_booking_active_writer{show_id="0190a1b2-0000-7000-8000-000000000001"} 0
floodgate_booking_active_writer{show_id="0190a1b2-0000-7000-8000-000000000002"} 1
floodgate_booking_seats{show_id="0190a1b2-0000-7000-8000-000000000002",status="held"} 12
floodgate_waiting_room_lease_held{odd="a \"}\" b\\",show_id="s1"} 1 1712345678000
floodgate_uptime_seconds 3.5
"#;

    #[test]
    fn a_sample_is_found_by_metric_and_label() {
        let active = |show: &str| sample_value(METRICS, "floodgate_booking_active_writer", "show_id", show);
        assert_eq!(active("0190a1b2-0000-7000-8000-000000000001"), Some(0.0));
        assert_eq!(active("0190a1b2-0000-7000-8000-000000000002"), Some(1.0));
        assert_eq!(active("0190a1b2-0000-7000-8000-000000000003"), None);
        assert_eq!(
            sample_value(METRICS, "floodgate_booking_seats", "status", "held"),
            Some(12.0)
        );
    }

    #[test]
    fn quoted_label_values_may_hold_braces_quotes_and_backslashes() {
        assert_eq!(
            sample_value(METRICS, "floodgate_waiting_room_lease_held", "show_id", "s1"),
            Some(1.0)
        );
        let sample = parse_sample(METRICS.lines().nth(5).unwrap()).unwrap();
        assert_eq!(sample.labels[0], ("odd", "a \"}\" b\\".to_owned()));
        assert_eq!(parse_sample("floodgate_uptime_seconds 3.5").unwrap().value, 3.5);
        assert!(parse_sample("broken{show_id=\"x} 1").is_none());
    }

    #[test]
    fn a_process_started_again_has_the_same_arguments_environment_and_directory() {
        let run_dir = std::env::temp_dir().join(format!("loadgen-chaos-{}", uuid::Uuid::new_v4().simple()));
        fs::create_dir_all(&run_dir).unwrap();
        let mut original = Command::new("sleep")
            .arg("300")
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("FLOODGATE_TEST", "a=b c")
            .current_dir(&run_dir)
            .spawn()
            .unwrap();
        let launch = Launch::of(original.id()).unwrap();
        original.kill().unwrap();
        original.wait().unwrap();
        assert_eq!(launch.argv, ["sleep", "300"]);
        let mut env = launch.env.clone();
        env.sort();
        assert_eq!(env, os(&[("FLOODGATE_TEST", "a=b c"), ("PATH", "/usr/bin:/bin")]));
        assert_eq!(launch.cwd, run_dir.canonicalize().unwrap());

        let pid = launch.spawn(&run_dir, "sleeper", "test").unwrap();
        let again = Launch::of(pid).unwrap();
        send(pid, Signal::KILL).unwrap();
        assert_eq!(
            (&again.argv, &again.env, &again.cwd),
            (&launch.argv, &launch.env, &launch.cwd)
        );
        assert_eq!(
            fs::read_to_string(run_dir.join("sleeper.pid")).unwrap(),
            format!("{pid}\n")
        );
        assert!(
            fs::read_to_string(run_dir.join("sleeper.log"))
                .unwrap()
                .contains("test by loadgen chaos")
        );
        fs::remove_dir_all(&run_dir).unwrap();
    }
}
