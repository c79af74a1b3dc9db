//! What every benchmark reports with: latency histograms and their summaries, progress bars,
//! process memory and CPU time.

use std::{collections::BTreeMap, time::Duration};

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use serde::Serialize;

/// A latency histogram in microseconds (1 µs to 10 min, 3 significant digits).
pub struct Latency(Histogram<u64>);

impl Default for Latency {
    fn default() -> Self {
        Self(Histogram::new_with_bounds(1, 600_000_000, 3).expect("static bounds are valid"))
    }
}

/// Percentiles of a latency histogram, in milliseconds.
#[derive(Debug, Serialize)]
pub struct Summary {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50_ms: f64,
    /// 95th percentile.
    pub p95_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest sample.
    pub max_ms: f64,
}

impl Latency {
    /// Adds one sample.
    pub fn record(&mut self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros())
            .unwrap_or(u64::MAX)
            .clamp(1, 600_000_000);
        self.0.saturating_record(micros);
    }

    /// The recorded buckets as (value, count) pairs: how a histogram measured in another
    /// process travels (see [`Latency::add_buckets`]).
    pub fn buckets(&self) -> Vec<(u64, u64)> {
        self.0
            .iter_recorded()
            .map(|bucket| (bucket.value_iterated_to(), bucket.count_at_value()))
            .collect()
    }

    /// Adds the samples of another histogram's [`Latency::buckets`].
    pub fn add_buckets(&mut self, buckets: &[(u64, u64)]) {
        for &(value, count) in buckets {
            self.0.saturating_record_n(value.clamp(1, 600_000_000), count);
        }
    }

    /// The percentiles.
    pub fn summary(&self) -> Summary {
        let ms = |micros: u64| micros as f64 / 1000.0;
        Summary {
            count: self.0.len(),
            p50_ms: ms(self.0.value_at_quantile(0.50)),
            p95_ms: ms(self.0.value_at_quantile(0.95)),
            p99_ms: ms(self.0.value_at_quantile(0.99)),
            max_ms: ms(self.0.max()),
        }
    }
}

/// A progress bar of `len` steps labelled `what`.
pub fn bar(len: usize, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(len as u64);
    bar.set_style(
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .expect("static template is valid")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_owned());
    bar
}

/// Resident memory of a process, from `/proc/<pid>/status`.
pub fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|line| line.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Kernel clock ticks per second of `/proc/<pid>/stat` times (`USER_HZ`: 100 on every Linux
/// architecture loadgen runs on).
const USER_HZ: f64 = 100.0;

/// CPU seconds (user + system) used so far by every process on the machine, summed by command
/// name (`postgres`, `beam.smp`, `ingress`, ...). Processes that ended between two samples are
/// missing from the later one, so compare samples of long-lived processes only.
pub fn cpu_seconds_by_command() -> BTreeMap<String, f64> {
    let mut totals = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return totals;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().bytes().all(|byte| byte.is_ascii_digit()) {
            continue;
        }
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        if let Some((command, seconds)) = parse_stat(&stat) {
            *totals.entry(command).or_insert(0.0) += seconds;
        }
    }
    totals
}

/// The command name and CPU seconds of one `/proc/<pid>/stat` line. The name is in parentheses
/// and may itself contain spaces and parentheses, so fields are counted from the last `)`.
fn parse_stat(stat: &str) -> Option<(String, f64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let command = stat.get(open + 1..close)?.to_owned();
    // After the name: state (field 3), ..., utime (14), stime (15).
    let mut fields = stat.get(close + 1..)?.split_whitespace().skip(11);
    let user: f64 = fields.next()?.parse().ok()?;
    let system: f64 = fields.next()?.parse().ok()?;
    Some((command, (user + system) / USER_HZ))
}

/// CPU seconds (user + system) one process has used so far.
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&stat).map(|(_, seconds)| seconds)
}

/// CPU used between two samples, per command, as a share of one core over `seconds` (1.0 =
/// one core busy the whole time); commands under 1% are left out.
pub fn cpu_shares(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    seconds: f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .filter_map(|(command, used)| {
            let share = (used - before.get(command).copied().unwrap_or(0.0)) / seconds.max(1e-9);
            (share >= 0.01).then(|| (command.clone(), (share * 100.0).round() / 100.0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stat_line_gives_the_command_and_its_cpu_seconds_even_with_odd_names() {
        let stat = "4242 (tokio (rt) x) S 1 4242 4242 0 -1 4194560 1 0 0 0 250 50 0 0 20 0 9 0 1 2 3";
        let (command, seconds) = parse_stat(stat).expect("parses");
        assert_eq!(command, "tokio (rt) x");
        assert!((seconds - 3.0).abs() < 1e-9);
    }

    #[test]
    fn cpu_shares_are_per_core_and_leave_out_idle_commands() {
        let before = BTreeMap::from([("postgres".to_owned(), 10.0), ("idle".to_owned(), 1.0)]);
        let after = BTreeMap::from([
            ("postgres".to_owned(), 25.0),
            ("idle".to_owned(), 1.0),
            ("ingress".to_owned(), 5.0),
        ]);
        let shares = cpu_shares(&before, &after, 10.0);
        assert_eq!(shares.get("postgres"), Some(&1.5));
        assert_eq!(shares.get("ingress"), Some(&0.5));
        assert!(!shares.contains_key("idle"));
    }
}
