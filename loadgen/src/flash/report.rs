//! The flash sale's report: every figure as JSON, a Markdown summary, and PNG charts over time
//! with the on-sale, the sell-out and every chaos fault marked.

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    path::{Path, PathBuf},
};

use anyhow::Context as _;
use common::ids::ShowId;
use serde::Serialize;

use super::{
    FaultMark, FlashArgs,
    fan::{End, Tally},
    got_nothing,
    timeline::{ProcessUsage, Sample, Second, Timeline, quantile},
};
use crate::{
    audit,
    chart::{self, Chart, Marker, Panel, Series},
    report::{Latency, Summary},
};

/// What the report is built from.
pub struct Inputs<'a> {
    pub args: &'a FlashArgs,
    pub show: ShowId,
    pub timeline: &'a Timeline,
    pub tally: Tally,
    /// Seconds from the start to the on-sale.
    pub on_sale: f64,
    /// Seconds from the start to the last fan leaving.
    pub crowd_done: f64,
    pub faults: Vec<FaultMark>,
    pub audit: audit::Report,
    /// From each booking's confirmation to its e-mail being sent ([`confirmed_to_email`]).
    pub confirmed_to_email: Vec<std::time::Duration>,
    pub websocket_share: f64,
    /// CPU by command over the run (every process on the machine), cores.
    pub machine_cpu: BTreeMap<String, f64>,
}

/// The run's settings, as the report repeats them.
#[derive(Debug, Serialize)]
pub struct Settings {
    pub seats: usize,
    pub fans: usize,
    pub prequeue_seconds: u64,
    pub arrival_seconds: u64,
    pub admit_per_second: u32,
    pub max_active: u32,
    pub hold_seconds: u32,
    pub websocket_share: f64,
    pub hot_share: f64,
    pub abandon_share: f64,
    pub decline_share: f64,
    pub cancel_share: f64,
    pub think_seconds: f64,
    pub chaos: bool,
    pub seed: u64,
}

/// A rate: the whole count, its mean over a window and its best second.
#[derive(Debug, Serialize)]
pub struct Rate {
    pub total: u64,
    /// Over `window_seconds`.
    pub mean_per_second: f64,
    pub window_seconds: f64,
    /// The best five seconds' mean.
    pub best_5s_per_second: f64,
    pub peak_second: u64,
}

/// Every figure of a run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub show_id: ShowId,
    pub settings: Settings,
    /// Seconds from the start of the run.
    pub on_sale_at: f64,
    pub sold_out_at: Option<f64>,
    /// When the last fan was done.
    pub last_fan_left_at: f64,
    /// Seconds from the on-sale to the first moment no seat was available.
    pub on_sale_to_sold_out_seconds: Option<f64>,
    pub joins: Rate,
    /// Admissions; the window runs from the on-sale to the last admission.
    pub admissions: Rate,
    /// Holds placed during the rush (from the on-sale to the sell-out, or the last hold).
    pub holds: Rate,
    /// Seats held during the rush.
    pub seats_held: Rate,
    pub bookings_confirmed: u64,
    pub seats_bought: u64,
    pub latency: BTreeMap<&'static str, Summary>,
    /// Refused hold requests by problem code.
    pub rejections: BTreeMap<String, u64>,
    /// What failed for fans, by kind.
    pub errors: BTreeMap<String, u64>,
    /// How each fan's visit ended.
    pub ends: BTreeMap<End, u64>,
    /// Fans who got no ticket (not admitted, sold out while waiting, refused, failed).
    pub got_nothing: u64,
    pub websockets_opened: u64,
    /// WebSockets opened again after closing under their fan (an ingress killed, say).
    pub websocket_reconnects: u64,
    /// Times a fan moved to another ingress because its own stopped answering.
    pub failovers: u64,
    /// Fans whose queue number changed while they waited: must be 0.
    pub places_lost: u64,
    /// CPU and memory of each Floodgate process.
    pub processes: BTreeMap<String, ProcessUsage>,
    /// CPU by command over the rush, every process on the machine (cores).
    pub machine_cpu: BTreeMap<String, f64>,
    pub faults: Vec<FaultMark>,
    pub audit: audit::Report,
    /// Charts written next to the report.
    pub charts: Vec<String>,
}

impl Report {
    /// Computes the figures.
    pub fn build(inputs: Inputs<'_>) -> Self {
        let Inputs {
            args,
            show,
            timeline,
            tally,
            on_sale,
            crowd_done,
            faults,
            audit,
            confirmed_to_email,
            websocket_share,
            machine_cpu,
        } = inputs;
        let seconds = timeline.seconds();
        let samples = timeline.samples();
        let sold_out_at = samples
            .iter()
            .find(|sample| sample.at >= on_sale && sample.available == 0 && sample.held + sample.sold > 0)
            .map(|sample| sample.at);
        let last = |f: fn(&Second) -> u64| {
            seconds
                .iter()
                .rposition(|second| f(second) > 0)
                .map_or(0.0, |i| i as f64 + 1.0)
        };
        let first = |f: fn(&Second) -> u64| {
            seconds
                .iter()
                .position(|second| f(second) > 0)
                .map_or(0.0, |i| i as f64)
        };
        let rush_end = sold_out_at.unwrap_or_else(|| last(|s| s.holds)).max(on_sale + 1.0);
        let joins = rate(&seconds, |s| s.joins, first(|s| s.joins), last(|s| s.joins));
        let admissions = rate(
            &seconds,
            |s| s.admitted,
            on_sale,
            last(|s| s.admitted).max(on_sale + 1.0),
        );
        let holds = rate(&seconds, |s| s.holds, on_sale, rush_end);
        let seats_held = rate(&seconds, |s| s.seats, on_sale, rush_end);

        let mut latency = BTreeMap::new();
        latency.insert("login", tally.login.summary());
        latency.insert("join", tally.join.summary());
        latency.insert(
            "serving_change_to_position_message",
            tally.serving_to_position.summary(),
        );
        latency.insert("turn_to_admitted", tally.turn_to_admitted.summary());
        latency.insert("hold_request_to_result", tally.hold.summary());
        latency.insert("payment_to_confirmed", tally.payment_to_confirmed.summary());
        latency.insert("confirmed_to_email", {
            let mut latency = Latency::default();
            for elapsed in &confirmed_to_email {
                latency.record(*elapsed);
            }
            latency.summary()
        });
        latency.insert("cancel_to_refunded", tally.cancel_to_refunded.summary());

        Self {
            show_id: show,
            settings: Settings {
                seats: args.seats,
                fans: args.fans,
                prequeue_seconds: args.prequeue_seconds,
                arrival_seconds: args.arrival_seconds,
                admit_per_second: args.admit_per_second,
                max_active: args.max_active,
                hold_seconds: args.hold_seconds,
                websocket_share,
                hot_share: args.hot_share,
                abandon_share: args.abandon_share,
                decline_share: args.decline_share,
                cancel_share: args.cancel_share,
                think_seconds: args.think_seconds,
                chaos: args.chaos,
                seed: args.seed,
            },
            on_sale_at: round(on_sale),
            sold_out_at: sold_out_at.map(round),
            on_sale_to_sold_out_seconds: sold_out_at.map(|at| round(at - on_sale)),
            joins,
            admissions,
            holds,
            seats_held,
            bookings_confirmed: tally.confirmed,
            seats_bought: tally.seats_bought,
            latency,
            rejections: tally.rejections,
            errors: tally.errors,
            got_nothing: got_nothing(&tally.ends),
            ends: tally.ends,
            websockets_opened: tally.websockets,
            websocket_reconnects: tally.websocket_reconnects,
            failovers: tally.failovers,
            places_lost: tally.places_lost,
            processes: timeline.usage(),
            machine_cpu,
            faults,
            audit,
            charts: Vec::new(),
            last_fan_left_at: round(crowd_done),
        }
    }

    /// Writes `report.json`, `report.md` and the charts into `dir`.
    pub fn write(&mut self, dir: &Path, timeline: &Timeline) -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let charts = charts(self, &timeline.seconds(), &timeline.samples());
        self.charts = charts.iter().map(|(file, _)| (*file).to_owned()).collect();
        // The figures first: a chart that cannot be drawn loses only itself.
        std::fs::write(dir.join("report.json"), serde_json::to_string_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        for (file, chart) in charts {
            let path: PathBuf = dir.join(file);
            chart::render_png(&chart, &path).with_context(|| format!("cannot draw {}", path.display()))?;
        }
        Ok(())
    }

    /// The Markdown summary.
    pub fn markdown(&self) -> String {
        let mut md = String::new();
        let s = &self.settings;
        let _ = writeln!(md, "# Flash sale rehearsal\n");
        let _ = writeln!(
            md,
            "{} fans, {} seats, pre-queue {} s, arrivals over {} s, admission {}/s (cap {} shopping), \
             {:.0}% on WebSockets{}; show `{}`.\n",
            s.fans,
            s.seats,
            s.prequeue_seconds,
            s.arrival_seconds,
            s.admit_per_second,
            s.max_active,
            s.websocket_share * 100.0,
            if s.chaos { ", **chaos mode**" } else { "" },
            self.show_id,
        );
        let verdict = if self.audit.passed() { "passed" } else { "**FAILED**" };
        let _ = writeln!(md, "Audit: {verdict}.\n");
        if self.places_lost > 0 {
            let _ = writeln!(
                md,
                "**{} fans lost their place in the queue** (their queue number changed while they waited).\n",
                self.places_lost
            );
        }
        let _ = writeln!(md, "| figure | value |\n|---|---|");
        let row = |md: &mut String, name: &str, value: String| {
            let _ = writeln!(md, "| {name} | {value} |");
        };
        row(
            &mut md,
            "joins per second (mean over arrivals / best 5 s)",
            format!(
                "{:.0} / {:.0}",
                self.joins.mean_per_second, self.joins.best_5s_per_second
            ),
        );
        row(
            &mut md,
            "admissions per second (mean / best 5 s / configured)",
            format!(
                "{:.0} / {:.0} / {}",
                self.admissions.mean_per_second, self.admissions.best_5s_per_second, s.admit_per_second
            ),
        );
        row(
            &mut md,
            "on-sale to sold out",
            self.on_sale_to_sold_out_seconds
                .map_or("not sold out".to_owned(), |t| format!("{t:.1} s")),
        );
        row(
            &mut md,
            "seats held per second in the rush (mean / best 5 s)",
            format!(
                "{:.0} / {:.0}",
                self.seats_held.mean_per_second, self.seats_held.best_5s_per_second
            ),
        );
        row(
            &mut md,
            "holds per second in the rush (mean / best 5 s)",
            format!(
                "{:.0} / {:.0}",
                self.holds.mean_per_second, self.holds.best_5s_per_second
            ),
        );
        row(
            &mut md,
            "bookings confirmed / seats bought",
            format!("{} / {}", self.bookings_confirmed, self.seats_bought),
        );
        row(&mut md, "fans who got nothing", self.got_nothing.to_string());
        row(&mut md, "WebSockets opened", self.websockets_opened.to_string());
        if self.failovers + self.websocket_reconnects + self.places_lost > 0 {
            row(
                &mut md,
                "fail-overs to another ingress / WebSockets reconnected / places lost",
                format!(
                    "{} / {} / {}",
                    self.failovers, self.websocket_reconnects, self.places_lost
                ),
            );
        }
        let _ = writeln!(
            md,
            "\n| latency | count | p50 | p95 | p99 | max |\n|---|---|---|---|---|---|"
        );
        for (name, summary) in &self.latency {
            let _ = writeln!(
                md,
                "| {} | {} | {:.0} ms | {:.0} ms | {:.0} ms | {:.0} ms |",
                name.replace('_', " "),
                summary.count,
                summary.p50_ms,
                summary.p95_ms,
                summary.p99_ms,
                summary.max_ms
            );
        }
        let counts = |md: &mut String, title: &str, map: &BTreeMap<String, u64>| {
            if !map.is_empty() {
                let list: Vec<String> = map.iter().map(|(k, v)| format!("{k} {v}")).collect();
                let _ = writeln!(md, "\n{title}: {}.", list.join(", "));
            }
        };
        let ends: BTreeMap<String, u64> = self
            .ends
            .iter()
            .map(|(end, n)| {
                (
                    serde_json::to_value(end)
                        .ok()
                        .and_then(|v| v.as_str().map(str::to_owned))
                        .unwrap_or_default(),
                    *n,
                )
            })
            .collect();
        counts(&mut md, "How fans' visits ended", &ends);
        counts(&mut md, "Hold requests refused, by code", &self.rejections);
        counts(&mut md, "Errors", &self.errors);
        if !self.faults.is_empty() {
            let _ = writeln!(md, "\n| fault | at |\n|---|---|");
            for fault in &self.faults {
                let _ = writeln!(
                    md,
                    "| {} | {:.1} s ({:+.1} s from the on-sale) |",
                    fault.what,
                    fault.at,
                    fault.at - self.on_sale_at
                );
            }
        }
        let _ = writeln!(md, "\n| process | CPU mean | CPU max | memory max |\n|---|---|---|---|");
        for (name, usage) in &self.processes {
            let _ = writeln!(
                md,
                "| {name} | {:.2} cores | {:.2} cores | {:.0} MiB |",
                usage.cpu_cores_mean,
                usage.cpu_cores_max,
                usage.rss_max_bytes as f64 / (1024.0 * 1024.0)
            );
        }
        if !self.machine_cpu.is_empty() {
            let mut busiest: Vec<(&String, &f64)> = self.machine_cpu.iter().collect();
            busiest.sort_by(|a, b| b.1.total_cmp(a.1));
            let list: Vec<String> = busiest
                .iter()
                .take(10)
                .map(|(name, cores)| format!("{name} {cores:.2}"))
                .collect();
            let _ = writeln!(
                md,
                "\nCPU by command on the machine while fans were active (cores): {}.",
                list.join(", ")
            );
        }
        let _ = writeln!(md, "\n## Audit\n\n{}", self.audit.to_markdown());
        for chart in &self.charts {
            let _ = writeln!(md, "\n![{chart}]({chart})");
        }
        md
    }
}

fn round(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

/// A count's rate over `[from, to)` seconds, its best five seconds and best second.
fn rate(seconds: &[Second], count: fn(&Second) -> u64, from: f64, to: f64) -> Rate {
    let total: u64 = seconds.iter().map(count).sum();
    let from_i = from.floor().max(0.0) as usize;
    // A window is at least one second long.
    let to_i = (to.ceil() as usize).max(from_i + 1).min(seconds.len());
    let in_window: u64 = seconds
        .get(from_i..to_i.max(from_i))
        .unwrap_or_default()
        .iter()
        .map(count)
        .sum();
    let window = (to_i.saturating_sub(from_i)).max(1) as f64;
    let per_second: Vec<u64> = seconds.iter().map(count).collect();
    let best_5s = per_second
        .windows(5.min(per_second.len()).max(1))
        .map(|five| five.iter().sum::<u64>() as f64 / five.len() as f64)
        .fold(0.0, f64::max);
    Rate {
        total,
        mean_per_second: (in_window as f64 / window).round(),
        window_seconds: round(window),
        best_5s_per_second: best_5s.round(),
        peak_second: per_second.iter().copied().max().unwrap_or(0),
    }
}

/// From each confirmation (the writer's commit) to the notifier handing its e-mail to the SMTP
/// server, both as PostgreSQL recorded them (one clock).
pub async fn confirmed_to_email(database_url: &str, show: ShowId) -> anyhow::Result<Vec<std::time::Duration>> {
    let mut db = <sqlx::PgConnection as sqlx::Connection>::connect(database_url).await?;
    let seconds: Vec<f64> = sqlx::query_scalar(
        "SELECT extract(epoch FROM n.sent_at - b.confirmed_at)::float8
           FROM notification n JOIN booking b USING (booking_id)
          WHERE b.show_id = $1 AND n.kind = 'booking_confirmed' AND n.channel = 'email'
            AND n.sent_at IS NOT NULL AND b.confirmed_at IS NOT NULL",
    )
    .bind(show)
    .fetch_all(&mut db)
    .await?;
    Ok(seconds
        .into_iter()
        .map(|s| std::time::Duration::from_secs_f64(s.max(0.0)))
        .collect())
}

/// The charts: the room, the sale, latencies.
fn charts(report: &Report, seconds: &[Second], samples: &[Sample]) -> Vec<(&'static str, Chart)> {
    let mut markers = vec![Marker {
        at: report.on_sale_at,
        label: "on-sale".to_owned(),
    }];
    if let Some(at) = report.sold_out_at {
        markers.push(Marker {
            at,
            label: "sold out".to_owned(),
        });
    }
    markers.extend(report.faults.iter().map(|fault| Marker {
        at: fault.at,
        label: fault.label.clone(),
    }));
    let per_second = |name: &str, count: fn(&Second) -> u64| Series {
        name: name.to_owned(),
        points: seconds
            .iter()
            .enumerate()
            .map(|(i, s)| (i as f64, count(s) as f64))
            .collect(),
    };
    let sampled = |name: &str, value: fn(&Sample) -> u64| Series {
        name: name.to_owned(),
        points: samples.iter().map(|s| (s.at, value(s) as f64)).collect(),
    };
    let percentile = |name: &str, samples: fn(&Second) -> &Vec<f32>, q: f64| Series {
        name: name.to_owned(),
        points: seconds
            .iter()
            .enumerate()
            .filter_map(|(i, s)| quantile(samples(s), q).map(|v| (i as f64, v)))
            .collect(),
    };
    let x_label = "seconds since the pre-queue opened".to_owned();
    vec![
        (
            "queue.png",
            Chart {
                title: "Waiting room: fans waiting and admissions".to_owned(),
                x_label: x_label.clone(),
                panels: vec![
                    Panel {
                        y_label: "fans".to_owned(),
                        series: vec![
                            sampled("waiting", |s| s.waiting),
                            sampled("shopping (active)", |s| s.active),
                        ],
                    },
                    Panel {
                        y_label: "fans per second".to_owned(),
                        series: vec![
                            per_second("joins/s", |s| s.joins),
                            per_second("admitted/s", |s| s.admitted),
                        ],
                    },
                ],
                markers: markers.clone(),
            },
        ),
        (
            "sales.png",
            Chart {
                title: "Sales: holds and seats per second, seats over time".to_owned(),
                x_label: x_label.clone(),
                panels: vec![
                    Panel {
                        y_label: "per second".to_owned(),
                        series: vec![
                            per_second("seats held/s", |s| s.seats),
                            per_second("holds/s", |s| s.holds),
                            per_second("refused/s", |s| s.rejected),
                            per_second("confirmed/s", |s| s.confirmed),
                        ],
                    },
                    Panel {
                        y_label: "seats".to_owned(),
                        series: vec![
                            sampled("available", |s| s.available),
                            sampled("held", |s| s.held),
                            sampled("sold", |s| s.sold),
                        ],
                    },
                ],
                markers: markers.clone(),
            },
        ),
        (
            "latency.png",
            Chart {
                title: "Latency percentiles per second".to_owned(),
                x_label,
                panels: vec![
                    Panel {
                        y_label: "hold request → result (ms)".to_owned(),
                        series: vec![
                            percentile("p50", |s| &s.hold_ms, 0.50),
                            percentile("p95", |s| &s.hold_ms, 0.95),
                            percentile("p99", |s| &s.hold_ms, 0.99),
                        ],
                    },
                    Panel {
                        y_label: "join (ms)".to_owned(),
                        series: vec![
                            percentile("p50", |s| &s.join_ms, 0.50),
                            percentile("p99", |s| &s.join_ms, 0.99),
                        ],
                    },
                ],
                markers,
            },
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seconds(counts: &[u64]) -> Vec<Second> {
        counts
            .iter()
            .map(|n| Second {
                seats: *n,
                ..Second::default()
            })
            .collect()
    }

    #[test]
    fn a_rate_is_the_mean_over_its_window_and_its_best_five_seconds() {
        let seconds = seconds(&[0, 0, 10, 20, 30, 40, 50, 0, 0]);
        let rate = rate(&seconds, |s| s.seats, 2.0, 7.0);
        assert_eq!(rate.total, 150);
        assert_eq!(rate.mean_per_second, 30.0);
        assert_eq!(rate.best_5s_per_second, 30.0);
        assert_eq!(rate.peak_second, 50);
    }

    #[test]
    fn a_rate_of_a_short_run_has_no_empty_window() {
        let rate = rate(&seconds(&[4]), |s| s.seats, 0.0, 0.0);
        assert_eq!(
            (rate.total, rate.mean_per_second, rate.best_5s_per_second),
            (4, 4.0, 4.0)
        );
    }
}
