//! One fan of a flash sale, behaving like a person: signed in beforehand (most fans of a big
//! on-sale are; the others log in when they arrive, and anyone whose access token expires logs
//! in again), joins the waiting room, watches their place (over a WebSocket, or by polling the queue like a client without
//! one), and once admitted thinks, asks for seats, and then abandons the hold, or pays (some
//! with a card that is declined first), and may cancel afterwards.
//!
//! Every step is timed; a fan never panics or gives up the run: what went wrong is counted, and
//! the fan ends with an [`End`] saying what they got.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine as _;
use futures::{SinkExt as _, StreamExt as _};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

use super::timeline::{Event, Timeline};
use crate::{
    holds::{HotRows, SplitMix64, send},
    queue::{Served, Socket, connect},
    report::Latency,
};

/// The longest a fan waits for any one thing the system does for it (a hold result, a
/// payment's outcome, a refund) before it counts as lost.
const PATIENCE: Duration = Duration::from_secs(90);
/// Hold requests a fan makes before giving up (the first refused one falls back to best
/// available).
const HOLD_ATTEMPTS: usize = 3;
/// `?wait=` of hold requests, seconds.
const HOLD_WAIT: u64 = 10;

/// What a fan does, drawn before the run from the seed.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// Fan account number.
    pub account: usize,
    /// Signed in before the pre-queue opened (otherwise logs in on arrival).
    pub signed_in: bool,
    /// When the fan arrives, from the start of the run.
    pub arrival: Duration,
    /// Watches the room over a WebSocket (otherwise polls).
    pub websocket: bool,
    /// Asks for specific seats in the hot front rows first.
    pub hot: bool,
    /// Seats wanted.
    pub quantity: u32,
    /// Wants them side by side.
    pub adjacent: bool,
    /// Lets the hold go instead of paying.
    pub abandon: bool,
    /// Pays with a declined card first, then with a good one.
    pub decline_first: bool,
    /// Cancels after buying.
    pub cancel: bool,
    /// Time from admission to the hold request, and from the hold to paying.
    pub think: Duration,
}

/// The share of fans behaving each way.
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub signed_in_share: f64,
    pub websocket_share: f64,
    pub hot_share: f64,
    pub adjacent_share: f64,
    pub abandon_share: f64,
    pub decline_share: f64,
    pub cancel_share: f64,
    pub think_seconds: f64,
    pub max_quantity: u32,
}

/// Draws every fan's plan. Arrivals: `before_share` of the fans arrive during the pre-queue,
/// more and more of them as the on-sale nears (density rising linearly), the rest in a tail
/// after it that thins out exponentially over the remaining arrival window.
pub fn plans(
    fans: usize,
    first_account: usize,
    prequeue: Duration,
    arrival_window: Duration,
    before_share: f64,
    behaviour: &Behaviour,
    seed: u64,
) -> Vec<Plan> {
    let mut rng = SplitMix64(seed);
    let mut unit = move || (rng.next_u64() >> 11) as f64 / (1_u64 << 53) as f64;
    let tail = arrival_window.saturating_sub(prequeue).as_secs_f64().max(1.0);
    let mut plans: Vec<Plan> = (0..fans)
        .map(|n| {
            // Every value is drawn for every fan, whatever the shares: changing one share
            // changes that behaviour only, not every later fan's plan.
            let (early, when) = (unit(), unit());
            let arrival = if early < before_share {
                prequeue.as_secs_f64() * when.sqrt()
            } else {
                // Exponential with a third of the tail as mean, truncated at the window's end
                // (inverse CDF of the truncated law: no pile-up in the last second).
                let truncated = 1.0 - (-3.0_f64).exp();
                prequeue.as_secs_f64() - (1.0 - when * truncated).ln() * tail / 3.0
            };
            let [
                websocket,
                hot,
                size,
                adjacent,
                abandon,
                decline,
                cancel,
                think,
                signed_in,
            ] = std::array::from_fn(|_| unit());
            // Most fans want two seats, few want one or many.
            let quantity = match size {
                x if x < 0.15 => 1,
                x if x < 0.60 => 2,
                x if x < 0.75 => 3,
                x if x < 0.92 => 4,
                x if x < 0.97 => 5,
                _ => 6,
            }
            .min(behaviour.max_quantity.max(1));
            let abandon = abandon < behaviour.abandon_share;
            Plan {
                account: first_account + n,
                signed_in: signed_in < behaviour.signed_in_share,
                arrival: Duration::from_secs_f64(arrival),
                websocket: websocket < behaviour.websocket_share,
                hot: hot < behaviour.hot_share,
                quantity,
                adjacent: quantity > 1 && adjacent < behaviour.adjacent_share,
                abandon,
                decline_first: !abandon && decline < behaviour.decline_share,
                cancel: !abandon && cancel < behaviour.cancel_share,
                // Between a quarter and twice the mean: people are not all equally quick.
                think: Duration::from_secs_f64(behaviour.think_seconds * (0.25 + 1.75 * think)),
            }
        })
        .collect();
    plans.sort_by_key(|plan| plan.arrival);
    plans
}

/// How a fan's visit ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum End {
    /// Bought tickets and kept them.
    Bought,
    /// Bought, cancelled and was refunded.
    Refunded,
    /// Held seats and let them go.
    Abandoned,
    /// Admitted, but every hold request was refused.
    NoSeats,
    /// Still waiting when the room was sold out.
    SoldOutWhileWaiting,
    /// Not admitted before the run ended.
    NotAdmitted,
    /// Something failed (an error, an unexpected answer or a timeout; counted under `errors`).
    Failed,
}

/// An API instance: where a fan's HTTP calls and WebSocket go.
#[derive(Debug, Clone)]
pub struct Api {
    /// Base URL, `http://host:port`.
    pub http: String,
    /// The socket address of the WebSocket endpoint.
    pub host: SocketAddr,
    /// `ws://.../queue/ws` of the show.
    pub ws_url: String,
}

/// What every fan shares.
pub struct Crowd {
    pub client: reqwest::Client,
    pub apis: Vec<Api>,
    pub show: common::ids::ShowId,
    pub timeline: Arc<Timeline>,
    pub served: Arc<Mutex<Served>>,
    pub hot: HotRows,
    pub tally: Mutex<Tally>,
    /// Client source addresses 127.0.0.1..=127.0.0.N for WebSockets.
    pub sources: u8,
    /// Fans still waiting give up at this time.
    pub deadline: Instant,
    /// Bounds the HTTP requests in flight ([`super::HTTP_IN_FLIGHT`]).
    pub in_flight: tokio::sync::Semaphore,
}

/// What the crowd measured, beyond the per-second timeline.
#[derive(Default)]
pub struct Tally {
    pub login: Latency,
    pub join: Latency,
    pub serving_to_position: Latency,
    pub turn_to_admitted: Latency,
    pub hold: Latency,
    pub payment_to_confirmed: Latency,
    pub cancel_to_refunded: Latency,
    /// Refusals by problem `code` (or HTTP status).
    pub rejections: BTreeMap<String, u64>,
    /// Failures by what failed.
    pub errors: BTreeMap<String, u64>,
    pub ends: BTreeMap<End, u64>,
    /// Each admitted fan and the queue number its admission token binds.
    pub admissions: Vec<(Uuid, u64)>,
    /// Bookings their fan saw confirmed.
    pub confirmed: u64,
    pub seats_bought: u64,
    pub websockets: u64,
    /// WebSockets opened again after closing under their fan.
    pub websocket_reconnects: u64,
    /// Times a fan moved to another ingress because its own did not answer.
    pub failovers: u64,
    /// Fans whose queue number changed while they waited (must be 0).
    pub places_lost: u64,
}

impl Crowd {
    pub(crate) fn tally(&self, update: impl FnOnce(&mut Tally)) {
        update(&mut self.tally.lock().expect("not poisoned"));
    }

    fn error(&self, what: &str) {
        self.tally(|tally| *tally.errors.entry(what.to_owned()).or_default() += 1);
    }

    fn reject(&self, code: &str) {
        self.tally(|tally| *tally.rejections.entry(code.to_owned()).or_default() += 1);
    }
}

/// A logged-in fan's calls.
struct Fan<'a> {
    crowd: &'a Crowd,
    /// Index into the crowd's APIs of the ingress the fan talks to; moves on to the next one
    /// when that one stops answering (a replica killed or restarting), as a load balancer
    /// would send the client elsewhere.
    api: std::sync::atomic::AtomicUsize,
    account: usize,
    /// The fan's queue number, from joining: the place must survive any failover.
    number: Option<u64>,
    /// The access token; replaced when it expires.
    token: Mutex<String>,
    socket: Option<Socket>,
    /// Jitter of the fan's polling.
    rng: SplitMix64,
}

impl Fan<'_> {
    fn api(&self) -> &Api {
        let index = self.api.load(std::sync::atomic::Ordering::Relaxed);
        &self.crowd.apis[index % self.crowd.apis.len()]
    }

    /// Moves on to the next ingress (when there is more than one); true if it did.
    fn fail_over(&self) -> bool {
        if self.crowd.apis.len() < 2 {
            return false;
        }
        self.api.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.crowd.tally(|tally| tally.failovers += 1);
        true
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.api().http)
    }

    fn token(&self) -> String {
        self.token.lock().expect("not poisoned").clone()
    }

    /// Sends one request. When its ingress does not answer and there is another, sends it
    /// there (every call of a fan is safe to repeat: reads, the idempotent join and leave,
    /// and POSTs with an `Idempotency-Key`). When the access token has expired (a long wait),
    /// logs in again and sends it once more, as a client refreshes its session.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
        headers: &[(&str, &str)],
    ) -> Option<(u16, Value)> {
        let mut answer = self.call_once(method.clone(), path, body.as_ref(), headers).await;
        if answer.is_none() && self.fail_over() {
            answer = self.call_once(method.clone(), path, body.as_ref(), headers).await;
        }
        if !matches!(&answer, Some((401, problem)) if problem["code"] == "invalid_token") {
            return answer;
        }
        let token = log_in(self.crowd, self.api(), self.account).await?;
        *self.token.lock().expect("not poisoned") = token;
        self.call_once(method, path, body.as_ref(), headers).await
    }

    async fn call_once(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Option<(u16, Value)> {
        let mut request = self
            .crowd
            .client
            .request(method, self.url(path))
            .bearer_auth(self.token());
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let Ok(_permit) = self.crowd.in_flight.acquire().await else {
            return None;
        };
        match send(request).await {
            Ok(answer) => Some(answer),
            Err(err) => {
                tracing::debug!(error = %err, path, "request failed");
                self.crowd.error("transport");
                None
            }
        }
    }
}

impl Fan<'_> {
    /// POSTs `body` and, while the answer is an overload (503, 429, no answer) or a 409 that
    /// `busy` recognises, waits a second and sends the same request again (same idempotency
    /// key: it is the same request), up to five times.
    async fn post_again_when_busy(
        &self,
        path: &str,
        body: &Value,
        headers: &[(&str, &str)],
        busy: impl Fn(&Value) -> bool,
    ) -> Option<(u16, Value)> {
        for _ in 0..5 {
            match self
                .call(reqwest::Method::POST, path, Some(body.clone()), headers)
                .await
            {
                Some((503 | 429, _)) | None => {}
                Some((409, answer)) if busy(&answer) => {}
                answer => return answer,
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        None
    }
}

/// Runs one fan from arrival to leaving; `token` is the access token of a fan who signed in
/// beforehand.
pub async fn visit(crowd: Arc<Crowd>, plan: Plan, token: Option<String>) -> End {
    let end = visit_inner(&crowd, &plan, token).await;
    crowd.tally(|tally| *tally.ends.entry(end).or_default() += 1);
    end
}

async fn visit_inner(crowd: &Crowd, plan: &Plan, token: Option<String>) -> End {
    let api = plan.account % crowd.apis.len();
    let token = match token {
        Some(token) => token,
        None => match log_in(crowd, &crowd.apis[api], plan.account).await {
            Some(token) => token,
            None => return End::Failed,
        },
    };
    let mut fan = Fan {
        crowd,
        api: api.into(),
        account: plan.account,
        number: None,
        token: Mutex::new(token),
        socket: None,
        rng: SplitMix64(plan.account as u64 ^ 0x5EED),
    };
    let show = crowd.show;
    let begun = Instant::now();
    let Some((status, body)) = fan
        .call(reqwest::Method::POST, &format!("/shows/{show}/queue"), None, &[])
        .await
    else {
        return End::Failed;
    };
    let now = Instant::now();
    crowd.tally(|tally| tally.join.record(now - begun));
    crowd.timeline.join_latency(now, now - begun);
    if !matches!(status, 200 | 201) {
        crowd.error(&format!("join {status}"));
        return End::Failed;
    }
    crowd.timeline.count(now, Event::Joined);
    fan.number = body["number"].as_u64();
    if plan.websocket {
        match fan.connect().await {
            Ok(socket) => {
                fan.socket = Some(socket);
                crowd.tally(|tally| tally.websockets += 1);
            }
            // The fan carries on by polling, as a browser falls back.
            Err(_) => crowd.error("websocket connect"),
        }
    }
    let admission = match body["state"].as_str() {
        Some("admitted") => body["admission_token"].as_str().map(str::to_owned),
        Some("sold_out" | "closed") => return End::SoldOutWhileWaiting,
        _ => None,
    };
    let admission = match admission {
        Some(token) => token,
        None => match wait_for_admission(&mut fan).await {
            Ok(token) => token,
            Err(end) => {
                close(&mut fan).await;
                return end;
            }
        },
    };
    let admitted_at = Instant::now();
    crowd.timeline.count(admitted_at, Event::Admitted);
    if let Some((user, number)) = admission_claims(&admission) {
        let reached = crowd.served.lock().expect("not poisoned").reached(number);
        crowd.tally(|tally| {
            tally.admissions.push((user, number));
            if let Some(reached) = reached {
                tally
                    .turn_to_admitted
                    .record(admitted_at.saturating_duration_since(reached));
            }
        });
    }
    let end = shop(&mut fan, plan, &admission).await;
    // Done shopping: leave the room, which frees the active slot for the next fan.
    let _ = fan
        .call(reqwest::Method::DELETE, &format!("/shows/{show}/queue"), None, &[])
        .await;
    close(&mut fan).await;
    end
}

impl Fan<'_> {
    /// Opens the fan's WebSocket to its current ingress.
    async fn connect(&self) -> anyhow::Result<Socket> {
        let source = Ipv4Addr::new(
            127,
            0,
            0,
            1 + (self.account % usize::from(self.crowd.sources.max(1))) as u8,
        );
        let api = self.api();
        connect(api.host, source, &api.ws_url, &self.token()).await
    }

    /// The socket closed under the fan (its ingress died or is restarting): reconnect, to
    /// another ingress when there is one, as a client's reconnect goes through the load
    /// balancer to a live replica. Without success the fan carries on by polling.
    async fn reconnect(&mut self) {
        self.fail_over();
        for attempt in 0..3_u32 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_millis(500 * u64::from(attempt))).await;
                self.fail_over();
            }
            if let Ok(socket) = self.connect().await {
                self.socket = Some(socket);
                self.crowd.tally(|tally| tally.websocket_reconnects += 1);
                return;
            }
        }
        self.crowd.error("websocket reconnect");
    }
}

async fn close(fan: &mut Fan<'_>) {
    if let Some(mut socket) = fan.socket.take() {
        let _ = socket.close(None).await;
    }
}

/// Logs a fan in during the run (on arrival, or again when its token expired).
async fn log_in(crowd: &Crowd, api: &Api, account: usize) -> Option<String> {
    let Ok(_permit) = crowd.in_flight.acquire().await else {
        return None;
    };
    match sign_in(&crowd.client, &api.http, account).await {
        Ok((token, took)) => {
            crowd.tally(|tally| tally.login.record(took));
            Some(token)
        }
        Err(what) => {
            crowd.error(&what);
            None
        }
    }
}

/// Logs fan `account` in at `api` (base URL): its access token and how long that took, or
/// what failed.
pub async fn sign_in(client: &reqwest::Client, api: &str, account: usize) -> Result<(String, Duration), String> {
    let begun = Instant::now();
    let request = client.post(format!("{api}/api/v1/auth/login")).json(&json!({
        "email": crate::fans::email(account), "password": crate::fans::PASSWORD,
    }));
    match send(request).await {
        Ok((200, body)) => body["access_token"]
            .as_str()
            .map(|token| (token.to_owned(), begun.elapsed()))
            .ok_or_else(|| "login without a token".to_owned()),
        Ok((status, _)) => Err(format!("login {status}")),
        Err(_) => Err("transport".to_owned()),
    }
}

/// The fan and queue number an admission token binds (read from its claims; loadgen has no
/// reason to verify a token ingress just gave it).
pub fn admission_claims(token: &str) -> Option<(Uuid, u64)> {
    let claims = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).ok()?;
    let claims: Value = serde_json::from_slice(&bytes).ok()?;
    Some((claims["sub"].as_str()?.parse().ok()?, claims["num"].as_u64()?))
}

/// Waits until admitted: over the socket when there is one (with a status call now and then,
/// as clients do, in case a message was missed), otherwise by polling at a pace that follows
/// the ETA and stays well inside the room's heartbeat grace.
async fn wait_for_admission(fan: &mut Fan<'_>) -> Result<String, End> {
    let crowd = fan.crowd;
    let path = format!("/shows/{}/queue", crowd.show);
    let mut next_poll = Instant::now() + Duration::from_secs(1);
    // The serving number of the fan's last position message: a message only measures the
    // latency of a change when there was an earlier one (the first after connecting says
    // where the room is, whenever that was reached).
    let mut last_serving = None;
    loop {
        if Instant::now() > crowd.deadline {
            return Err(End::NotAdmitted);
        }
        if let Some(socket) = fan.socket.as_mut() {
            let wait = tokio::time::sleep_until(next_poll.into());
            tokio::select! {
                message = socket.next() => match message {
                    Some(Ok(Message::Text(text))) => {
                        let now = Instant::now();
                        let Ok(body) = serde_json::from_str::<Value>(&text) else { continue };
                        match body["type"].as_str() {
                            Some("position") => {
                                let serving = body["serving"].as_u64().unwrap_or(0);
                                let changed = last_serving.is_some_and(|last| last != serving);
                                last_serving = Some(serving);
                                let seen = crowd.served.lock().expect("not poisoned").seen.get(&serving).copied();
                                if let Some(seen) = seen.filter(|_| changed) {
                                    crowd.tally(|tally| tally.serving_to_position.record(now.saturating_duration_since(seen)));
                                }
                            }
                            Some("admitted") => {
                                if let Some(token) = body["admission_token"].as_str() {
                                    return Ok(token.to_owned());
                                }
                            }
                            Some("sold_out" | "closed") => return Err(End::SoldOutWhileWaiting),
                            _ => {}
                        }
                        continue;
                    }
                    Some(Ok(_)) => continue,
                    // Closed (an ingress killed or restarting, say): reconnect and check the
                    // place at once.
                    _ => {
                        crowd.error("websocket closed while waiting");
                        fan.socket = None;
                        fan.reconnect().await;
                        next_poll = Instant::now();
                        continue;
                    }
                },
                () = wait => {}
            }
        } else {
            tokio::time::sleep_until(next_poll.into()).await;
        }
        let Some((status, body)) = fan.call(reqwest::Method::GET, &path, None, &[]).await else {
            next_poll = Instant::now() + Duration::from_secs(2);
            continue;
        };
        match (status, body["state"].as_str()) {
            (200, Some("admitted")) => {
                if let Some(token) = body["admission_token"].as_str() {
                    return Ok(token.to_owned());
                }
            }
            (200, Some("sold_out" | "closed")) => return Err(End::SoldOutWhileWaiting),
            (200, _) => {
                // Whatever happened to the fan's ingress, its place is the one it joined with.
                let number = body["number"].as_u64();
                if fan.number.is_some() && number.is_some() && number != fan.number {
                    crowd.tally(|tally| tally.places_lost += 1);
                }
            }
            (status, _) => crowd.error(&format!("queue status {status}")),
        }
        // Without an ETA (the pre-queue, a paused room) a client has no reason to hurry; with
        // one it checks back at half of it. Either way inside the room's 30 s heartbeat grace
        // (20 s at most, plus a fifth of jitter), and jittered so that fans who joined together
        // do not poll together.
        let every = match (fan.socket.is_some(), body["eta_seconds"].as_f64()) {
            (true, _) => 15.0,
            (false, Some(eta)) => (eta / 2.0).clamp(2.0, 20.0),
            (false, None) => 15.0,
        };
        let jitter = (fan.rng.next_u64() >> 11) as f64 / (1_u64 << 53) as f64;
        next_poll = Instant::now() + Duration::from_secs_f64(every * (0.8 + 0.4 * jitter));
    }
}

/// Admitted: think, hold, then abandon or pay (and perhaps cancel).
async fn shop(fan: &mut Fan<'_>, plan: &Plan, admission: &str) -> End {
    let crowd = fan.crowd;
    tokio::time::sleep(plan.think).await;
    let Some((booking, seats)) = hold(fan, plan, admission).await else {
        return End::NoSeats;
    };
    tokio::time::sleep(plan.think).await;
    if plan.abandon {
        let path = format!("/bookings/{booking}");
        return match fan.call(reqwest::Method::DELETE, &path, None, &[]).await {
            Some((202 | 204, _)) => {
                crowd.timeline.count(Instant::now(), Event::Abandoned);
                End::Abandoned
            }
            Some((status, _)) => {
                crowd.error(&format!("release {status}"));
                End::Failed
            }
            None => End::Failed,
        };
    }
    if plan.decline_first {
        match pay(fan, booking, "tok_chargeDeclined").await {
            Paid::Declined => crowd.timeline.count(Instant::now(), Event::Declined),
            Paid::Confirmed => crowd.error("a declined card was accepted"),
            Paid::Failed => return End::Failed,
        }
    }
    let begun = Instant::now();
    match pay(fan, booking, "tok_visa").await {
        Paid::Confirmed => {
            let now = Instant::now();
            crowd.timeline.count(now, Event::Confirmed);
            crowd.tally(|tally| {
                tally.payment_to_confirmed.record(now - begun);
                tally.confirmed += 1;
                tally.seats_bought += u64::from(seats);
            });
        }
        Paid::Declined => {
            crowd.error("a good card was declined");
            return End::Failed;
        }
        Paid::Failed => return End::Failed,
    }
    if !plan.cancel {
        return End::Bought;
    }
    tokio::time::sleep(plan.think).await;
    let begun = Instant::now();
    match fan
        .call(reqwest::Method::POST, &format!("/bookings/{booking}/cancel"), None, &[])
        .await
    {
        Some((202 | 200, _)) => {}
        Some((status, body)) => {
            crowd.error(&format!("cancel {status} {}", body["code"].as_str().unwrap_or("")));
            return End::Failed;
        }
        None => return End::Failed,
    }
    match follow(fan, booking, |update| update["status"] == "refunded").await {
        Some(_) => {
            let now = Instant::now();
            crowd.timeline.count(now, Event::Refunded);
            crowd.tally(|tally| tally.cancel_to_refunded.record(now - begun));
            End::Refunded
        }
        None => {
            crowd.error("refund not seen");
            End::Failed
        }
    }
}

/// Asks for seats until a hold is placed: the plan's request first, then best available.
async fn hold(fan: &mut Fan<'_>, plan: &Plan, admission: &str) -> Option<(Uuid, u32)> {
    let crowd = fan.crowd;
    let path = format!("/shows/{}/holds?wait={HOLD_WAIT}", crowd.show);
    let mut rng = SplitMix64(plan.account as u64 ^ 0x5EED);
    for attempt in 0..HOLD_ATTEMPTS {
        let body = if plan.hot && attempt == 0 && !crowd.hot.is_empty() {
            let row = &crowd.hot[rng.below(crowd.hot.len())];
            let quantity = (plan.quantity as usize).min(row.len());
            let start = rng.below(row.len() - quantity + 1);
            json!({ "seat_ids": &row[start..start + quantity] })
        } else {
            json!({ "best_available": { "quantity": plan.quantity, "adjacent": plan.adjacent && attempt == 0 } })
        };
        let key = Uuid::new_v4().to_string();
        let headers = [("admission-token", admission), ("idempotency-key", key.as_str())];
        let begun = Instant::now();
        let (mut status, mut body) = fan.post_again_when_busy(&path, &body, &headers, |_| false).await?;
        if status == 202 {
            // The wait ran out: follow the request.
            (status, body) = follow_request(fan, &body).await?;
        }
        let now = Instant::now();
        crowd.timeline.hold_latency(now, now - begun);
        crowd.tally(|tally| tally.hold.record(now - begun));
        match status {
            201 => {
                let seats = body["seats"].as_array().map_or(0, |seats| seats.len() as u32);
                let booking = body["booking_id"].as_str().and_then(|id| id.parse().ok())?;
                crowd.timeline.count(now, Event::Held(seats));
                return Some((booking, seats));
            }
            409 => {
                let code = body["code"].as_str().unwrap_or("conflict");
                crowd.reject(code);
                crowd.timeline.count(now, Event::Rejected);
                if code != "seats_unavailable" {
                    return None;
                }
            }
            status => {
                crowd.reject(&format!("http {status} {}", body["code"].as_str().unwrap_or("")));
                crowd.timeline.count(now, Event::Rejected);
                return None;
            }
        }
    }
    None
}

/// A hold request answered 202: polls its result until it is decided. Answers as the waiting
/// call would have: 201 with the booking or 409 with the code.
async fn follow_request(fan: &Fan<'_>, accepted: &Value) -> Option<(u16, Value)> {
    let request = accepted["request_id"].as_str()?;
    let until = Instant::now() + PATIENCE;
    while Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let Some((200, body)) = fan
            .call(reqwest::Method::GET, &format!("/hold-requests/{request}"), None, &[])
            .await
        else {
            continue;
        };
        match body["status"].as_str() {
            Some("held") => {
                let booking = body["booking_id"].as_str()?;
                let (status, booking) = fan
                    .call(reqwest::Method::GET, &format!("/bookings/{booking}"), None, &[])
                    .await?;
                return (status == 200).then_some((201, booking));
            }
            Some("rejected") => return Some((409, body)),
            _ => {}
        }
    }
    fan.crowd.error("hold result not seen");
    None
}

/// How a payment attempt ended.
enum Paid {
    Confirmed,
    Declined,
    Failed,
}

/// Pays `booking` with `card` and waits for the booking to be confirmed or the charge declined.
async fn pay(fan: &mut Fan<'_>, booking: Uuid, card: &str) -> Paid {
    let crowd = fan.crowd;
    let key = Uuid::new_v4().to_string();
    let body = json!({ "payment_method": "card", "card_token": card });
    let path = format!("/bookings/{booking}/payments");
    // A 409 `payment_in_progress`: the previous attempt is still being settled, so a client
    // waits and tries again.
    let answer = fan
        .post_again_when_busy(&path, &body, &[("idempotency-key", key.as_str())], |answer| {
            answer["code"] == "payment_in_progress"
        })
        .await;
    let Some((status, answer)) = answer else {
        return Paid::Failed;
    };
    if status != 202 {
        crowd.error(&format!("pay {status} {}", answer["code"].as_str().unwrap_or("")));
        return Paid::Failed;
    }
    let payment = answer["payment_id"].as_str().unwrap_or_default().to_owned();
    // A decline is over for the fan once the booking is back to `held` (the writer has taken
    // the failure in), not when the gateway's answer is first heard: paying again before that
    // is refused as `payment_in_progress`.
    let outcome = follow(fan, booking, |update| {
        update["status"] == "confirmed"
            || (update["status"] == "held"
                && update["payment"]["status"] == "failed"
                && update["payment"]["payment_id"] == payment.as_str())
    })
    .await;
    match outcome {
        Some(update) if update["status"] == "confirmed" => Paid::Confirmed,
        Some(_) => Paid::Declined,
        None => {
            crowd.error("payment outcome not seen");
            Paid::Failed
        }
    }
}

/// Follows a booking until `done` holds for an update of it: the socket's `booking` messages
/// when the fan has a socket, and `GET /bookings/{id}` (the same shape) every so often anyway.
async fn follow(fan: &mut Fan<'_>, booking: Uuid, done: impl Fn(&Value) -> bool) -> Option<Value> {
    let until = Instant::now() + PATIENCE;
    let id = booking.to_string();
    while Instant::now() < until {
        let poll_at = Instant::now()
            + if fan.socket.is_some() {
                Duration::from_secs(2)
            } else {
                Duration::from_millis(500)
            };
        while let Some(socket) = fan.socket.as_mut() {
            let message = tokio::time::timeout_at(poll_at.into(), socket.next()).await;
            match message {
                Ok(Some(Ok(Message::Text(text)))) => {
                    let Ok(update) = serde_json::from_str::<Value>(&text) else {
                        continue;
                    };
                    if update["type"] == "booking" && update["booking_id"] == id.as_str() && done(&update) {
                        return Some(update);
                    }
                }
                Ok(Some(Ok(Message::Ping(payload)))) => {
                    let _ = socket.send(Message::Pong(payload)).await;
                }
                Ok(Some(Ok(_))) => {}
                Ok(_) => fan.socket = None,
                Err(_) => break,
            }
        }
        tokio::time::sleep_until(poll_at.into()).await;
        if let Some((200, body)) = fan
            .call(reqwest::Method::GET, &format!("/bookings/{booking}"), None, &[])
            .await
        {
            if done(&body) {
                return Some(body);
            }
            // The hold lapsed or was let go: nothing the fan waits for can happen any more.
            if matches!(body["status"].as_str(), Some("expired" | "released")) {
                fan.crowd.error(&format!(
                    "booking {} while waiting",
                    body["status"].as_str().unwrap_or("")
                ));
                return None;
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn behaviour() -> Behaviour {
        Behaviour {
            signed_in_share: 0.9,
            websocket_share: 0.5,
            hot_share: 0.2,
            adjacent_share: 0.5,
            abandon_share: 0.1,
            decline_share: 0.1,
            cancel_share: 0.05,
            think_seconds: 1.0,
            max_quantity: 6,
        }
    }

    #[test]
    fn most_fans_arrive_before_the_on_sale_and_the_rest_within_the_window() {
        let plans = plans(
            10_000,
            0,
            Duration::from_secs(30),
            Duration::from_secs(90),
            0.8,
            &behaviour(),
            7,
        );
        let before = plans
            .iter()
            .filter(|plan| plan.arrival < Duration::from_secs(30))
            .count();
        assert!((7_700..8_300).contains(&before), "{before} arrived before the on-sale");
        assert!(plans.iter().all(|plan| plan.arrival <= Duration::from_secs(90)));
        assert!(plans.windows(2).all(|pair| pair[0].arrival <= pair[1].arrival));
        // The pre-queue fills faster as the on-sale nears.
        let early = plans
            .iter()
            .filter(|plan| plan.arrival < Duration::from_secs(15))
            .count();
        assert!(early * 2 < before, "{early} of {before} came in the first half");
    }

    #[test]
    fn plans_are_the_same_for_the_same_seed_and_respect_the_shares() {
        let a = plans(
            5_000,
            100,
            Duration::from_secs(10),
            Duration::from_secs(20),
            0.8,
            &behaviour(),
            1,
        );
        let b = plans(
            5_000,
            100,
            Duration::from_secs(10),
            Duration::from_secs(20),
            0.8,
            &behaviour(),
            1,
        );
        assert_eq!(a, b);
        let share = |f: fn(&Plan) -> bool| a.iter().filter(|plan| f(plan)).count() as f64 / a.len() as f64;
        assert!((share(|plan| plan.abandon) - 0.1).abs() < 0.02);
        assert!((share(|plan| plan.websocket) - 0.5).abs() < 0.03);
        assert!((share(|plan| plan.signed_in) - 0.9).abs() < 0.02);
        assert!(a.iter().all(|plan| (1..=6).contains(&plan.quantity)));
        assert!(
            a.iter()
                .all(|plan| !(plan.abandon && (plan.cancel || plan.decline_first)))
        );
        let mut accounts: Vec<usize> = a.iter().map(|plan| plan.account).collect();
        accounts.sort_unstable();
        assert_eq!(accounts, (100..5_100).collect::<Vec<_>>());
    }

    #[test]
    fn the_fan_and_queue_number_are_read_from_the_admission_token() {
        let user = Uuid::now_v7();
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!(r#"{{"num":42,"sub":"{user}"}}"#));
        assert_eq!(
            admission_claims(&format!("header.{claims}.signature")),
            Some((user, 42))
        );
        assert_eq!(admission_claims("not a token"), None);
    }
}
