//! What a flash sale looked like second by second: the fans' events (counted by the fan tasks as
//! they happen) and the system's state (sampled once a second from Redis, the public
//! availability snapshot and `/proc`).

use std::{
    collections::BTreeMap,
    sync::Mutex,
    time::{Duration, Instant},
};

use serde::Serialize;

/// Something a fan did or saw, counted in the second it happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// The join answer arrived.
    Joined,
    /// The fan learnt it was admitted.
    Admitted,
    /// A hold request was answered with a hold of this many seats.
    Held(u32),
    /// A hold request was refused.
    Rejected,
    /// A booking was seen confirmed.
    Confirmed,
    /// A payment was declined.
    Declined,
    /// A hold was let go by its fan.
    Abandoned,
    /// A confirmed booking was cancelled and refunded.
    Refunded,
}

/// One second of fan events; latencies are raw samples in milliseconds (a histogram per second
/// would cost far more memory than the samples of a run).
#[derive(Debug, Default, Clone)]
pub struct Second {
    pub joins: u64,
    pub admitted: u64,
    pub holds: u64,
    pub seats: u64,
    pub rejected: u64,
    pub confirmed: u64,
    pub declined: u64,
    pub abandoned: u64,
    pub refunded: u64,
    pub hold_ms: Vec<f32>,
    pub join_ms: Vec<f32>,
}

/// The system's state at one sample.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    /// Seconds since the run started.
    pub at: f64,
    /// Fans in the pre-queue plus fans numbered and waiting.
    pub waiting: u64,
    /// The highest queue number admitted.
    pub serving: u64,
    /// Admitted fans whose session is open.
    pub active: u64,
    /// Seats by status, from the public availability snapshot.
    pub available: u64,
    pub held: u64,
    pub sold: u64,
    /// The waiting room's state (`prequeue`, `open`, `sold_out`, ...).
    pub room: String,
}

/// CPU and memory of one Floodgate process over the run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ProcessUsage {
    /// Share of one core, averaged over the run.
    pub cpu_cores_mean: f64,
    /// Highest share of one core in a one-second sample.
    pub cpu_cores_max: f64,
    /// Highest resident memory seen, bytes.
    pub rss_max_bytes: u64,
}

/// Everything recorded over time.
pub struct Timeline {
    started: Instant,
    seconds: Mutex<Vec<Second>>,
    samples: Mutex<Vec<Sample>>,
    processes: Mutex<BTreeMap<String, ProcessTrack>>,
}

#[derive(Debug, Default)]
struct ProcessTrack {
    pid: u32,
    first: Option<(f64, f64)>,
    last: Option<(f64, f64)>,
    previous: Option<(f64, f64)>,
    cpu_max: f64,
    rss_max: u64,
}

impl Timeline {
    /// A timeline whose second 0 is now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            seconds: Mutex::new(Vec::new()),
            samples: Mutex::new(Vec::new()),
            processes: Mutex::new(BTreeMap::new()),
        }
    }

    /// When the run started.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Seconds from the start to `at`.
    pub fn offset(&self, at: Instant) -> f64 {
        at.saturating_duration_since(self.started).as_secs_f64()
    }

    fn with_second(&self, at: Instant, update: impl FnOnce(&mut Second)) {
        let index = at.saturating_duration_since(self.started).as_secs() as usize;
        let mut seconds = self.seconds.lock().expect("not poisoned");
        if seconds.len() <= index {
            seconds.resize_with(index + 1, Second::default);
        }
        update(&mut seconds[index]);
    }

    /// Counts `event` at `at`.
    pub fn count(&self, at: Instant, event: Event) {
        self.with_second(at, |second| match event {
            Event::Joined => second.joins += 1,
            Event::Admitted => second.admitted += 1,
            Event::Held(seats) => {
                second.holds += 1;
                second.seats += u64::from(seats);
            }
            Event::Rejected => second.rejected += 1,
            Event::Confirmed => second.confirmed += 1,
            Event::Declined => second.declined += 1,
            Event::Abandoned => second.abandoned += 1,
            Event::Refunded => second.refunded += 1,
        });
    }

    /// A hold request's latency, counted in the second its answer came.
    pub fn hold_latency(&self, at: Instant, elapsed: Duration) {
        self.with_second(at, |second| second.hold_ms.push(elapsed.as_secs_f32() * 1000.0));
    }

    /// A join's latency, counted in the second its answer came.
    pub fn join_latency(&self, at: Instant, elapsed: Duration) {
        self.with_second(at, |second| second.join_ms.push(elapsed.as_secs_f32() * 1000.0));
    }

    /// Records a sample of the system's state.
    pub fn sample(&self, sample: Sample) {
        self.samples.lock().expect("not poisoned").push(sample);
    }

    /// Records a process's CPU seconds used so far and its resident memory.
    pub fn process(&self, name: &str, pid: u32, at: f64, cpu_seconds: f64, rss: Option<u64>) {
        let mut processes = self.processes.lock().expect("not poisoned");
        let track = processes.entry(name.to_owned()).or_default();
        let restarted = track.last.is_some() && track.pid != pid;
        track.pid = pid;
        if let Some((then, used)) = track.last
            && at > then
            && !restarted
        {
            track.cpu_max = track.cpu_max.max((cpu_seconds - used) / (at - then));
        }
        // A restarted process (another pid) counts from zero: bank what the old one used,
        // and count the new one's start-up too.
        if restarted {
            let (first_at, first_used) = track.first.unwrap_or((at, 0.0));
            let (_, last_used) = track.last.unwrap_or((at, 0.0));
            let (since, earlier) = track.previous.unwrap_or((first_at, 0.0));
            track.previous = Some((since, earlier + last_used - first_used));
            track.first = Some((at, 0.0));
        }
        track.first.get_or_insert((at, cpu_seconds));
        track.last = Some((at, cpu_seconds));
        track.rss_max = track.rss_max.max(rss.unwrap_or(0));
    }

    /// The fan events, second by second.
    pub fn seconds(&self) -> Vec<Second> {
        self.seconds.lock().expect("not poisoned").clone()
    }

    /// The samples of the system's state.
    pub fn samples(&self) -> Vec<Sample> {
        self.samples.lock().expect("not poisoned").clone()
    }

    /// CPU and memory per process.
    pub fn usage(&self) -> BTreeMap<String, ProcessUsage> {
        let processes = self.processes.lock().expect("not poisoned");
        processes
            .iter()
            .map(|(name, track)| {
                let (first_at, first_used) = track.first.unwrap_or_default();
                let (last_at, last_used) = track.last.unwrap_or_default();
                let earlier = track.previous.map_or(0.0, |(_, used)| used);
                let start = track.previous.map_or(first_at, |(at, _)| at);
                let span = (last_at - start).max(1e-9);
                let usage = ProcessUsage {
                    cpu_cores_mean: round2((earlier + last_used - first_used) / span),
                    cpu_cores_max: round2(track.cpu_max),
                    rss_max_bytes: track.rss_max,
                };
                (name.clone(), usage)
            })
            .collect()
    }
}

impl Default for Timeline {
    fn default() -> Self {
        Self::new()
    }
}

fn round2(value: f64) -> f64 {
    (value * 100.0).round() / 100.0
}

/// The `q`-quantile of unsorted samples (nearest rank), or `None` without samples.
pub fn quantile(samples: &[f32], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f32::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    Some(f64::from(sorted[rank - 1]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_land_in_the_second_they_happened() {
        let timeline = Timeline::new();
        let start = timeline.started();
        timeline.count(start, Event::Joined);
        timeline.count(start + Duration::from_millis(2500), Event::Held(3));
        timeline.count(start + Duration::from_millis(2900), Event::Held(1));
        let seconds = timeline.seconds();
        assert_eq!(seconds.len(), 3);
        assert_eq!(seconds[0].joins, 1);
        assert_eq!((seconds[2].holds, seconds[2].seats), (2, 4));
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let samples: Vec<f32> = (1..=100).map(|n| n as f32).collect();
        assert_eq!(quantile(&samples, 0.5), Some(50.0));
        assert_eq!(quantile(&samples, 0.99), Some(99.0));
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn a_restarted_process_keeps_the_cpu_its_predecessor_used() {
        let timeline = Timeline::new();
        timeline.process("notifier", 7, 0.0, 10.0, Some(1));
        timeline.process("notifier", 7, 10.0, 15.0, Some(1));
        // Restarted: another pid, its counter starts again from zero.
        timeline.process("notifier", 8, 11.0, 0.0, Some(1));
        timeline.process("notifier", 8, 20.0, 5.0, Some(2));
        let usage = &timeline.usage()["notifier"];
        assert_eq!(usage.cpu_cores_mean, 0.5);
        assert_eq!(usage.rss_max_bytes, 2);
    }
}
