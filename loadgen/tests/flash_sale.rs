//! `loadgen flash-sale` end to end, small: 2,000 fans and 500 seats against a real, isolated
//! Floodgate (every process of the project, started by the harness in `support` with its own
//! database, queue prefix, key prefix, ports and mail directory). The sale must sell out and the
//! audit pass, with and without chaos; the report must be written with its charts. The chaos
//! run is also the scale-out drill: two ingress replicas, two admission controllers and two
//! booking-workers, one of each killed with SIGKILL during the sale.

mod support;

use clap::Parser as _;
use loadgen::flash::{self, FlashArgs, Outcome};
use support::{Floodgate, Options};

/// The rehearsal's arguments for `floodgate`, plus `extra`.
fn args(floodgate: &Floodgate, out_dir: &std::path::Path, extra: &[&str]) -> FlashArgs {
    let apis = floodgate.api_urls.join(",");
    let mut argv: Vec<String> = [
        "flash-sale",
        "--api",
        &apis,
        "--admin-email",
        &floodgate.admin_email,
        "--admin-password",
        &floodgate.admin_password,
        "--database-url",
        &floodgate.database_url,
        "--redis-url",
        &floodgate.redis_url,
        "--redis-key-prefix",
        &floodgate.redis_prefix,
        "--gateway-url",
        &floodgate.gateway_url,
        "--mail-dir",
        &floodgate.mail_dir.to_string_lossy(),
        "--run-dir",
        &floodgate.run_dir.to_string_lossy(),
        "--out-dir",
        &out_dir.to_string_lossy(),
        "--fans",
        "2000",
        "--seats",
        "500",
        // Fans arrive over 12 s, most during the 6 s pre-queue; admitted slowly enough that the
        // sale lasts a few seconds, so chaos lands inside it.
        "--prequeue-seconds",
        "6",
        "--arrival-seconds",
        "12",
        "--admit-per-second",
        "100",
        "--max-active",
        "400",
        "--think-seconds",
        "0.5",
        "--hold-seconds",
        "120",
        "--settle-seconds",
        "90",
        "--sale-timeout-seconds",
        "60",
        "--quiet",
    ]
    .iter()
    .map(|arg| (*arg).to_owned())
    .collect();
    argv.extend(extra.iter().map(|arg| (*arg).to_owned()));
    FlashArgs::try_parse_from(argv).expect("the arguments parse")
}

/// Runs the rehearsal and prints its report, so a failure shows what happened.
async fn rehearse(floodgate: &Floodgate, out_dir: &std::path::Path, extra: &[&str]) -> Outcome {
    common::telemetry::init("loadgen-test", common::config::LogFormat::Text);
    let outcome = flash::run(args(floodgate, out_dir, extra))
        .await
        .expect("the rehearsal runs");
    eprintln!("{}", outcome.report.markdown());
    if !outcome.passed() {
        for name in [
            "booking-worker",
            "booking-worker-1",
            "payment-worker",
            "notifier",
            "ingress",
        ] {
            eprintln!("--- {name}\n{}", floodgate.log_tail(name, 30));
        }
    }
    outcome
}

fn assert_sold_out_with_a_clean_audit(outcome: &Outcome) {
    let report = &outcome.report;
    assert!(outcome.passed(), "the audit passes:\n{}", report.audit.to_markdown());
    assert!(report.sold_out_at.is_some(), "the show sold out");
    assert!(report.bookings_confirmed > 0, "fans bought tickets");
    for check in &report.audit.checks {
        assert!(
            check.skipped.is_none(),
            "the audit ran {} ({:?})",
            check.name,
            check.skipped
        );
    }
    for file in ["report.md", "report.json", "queue.png", "sales.png", "latency.png"] {
        assert!(outcome.out_dir.join(file).is_file(), "the report has {file}");
    }
}

#[tokio::test]
async fn a_small_flash_sale_sells_out_with_a_clean_audit_and_a_report() {
    let floodgate = Floodgate::start().await;
    let out = tempdir("plain");
    let outcome = rehearse(&floodgate, &out, &[]).await;
    assert_sold_out_with_a_clean_audit(&outcome);
    let report = &outcome.report;
    assert!(report.errors.is_empty(), "nothing failed for fans: {:?}", report.errors);
    // Every behaviour happened: some abandoned, some were declined first, some cancelled.
    for (end, what) in [
        (flash::fan::End::Abandoned, "abandoned"),
        (flash::fan::End::Refunded, "refunded"),
    ] {
        assert!(
            report.ends.get(&end).copied().unwrap_or(0) > 0,
            "some fans {what}: {:?}",
            report.ends
        );
    }
    assert!(report.latency["payment_to_confirmed"].count > 0);
    assert!(report.latency["confirmed_to_email"].count > 0, "e-mails were timed");
    let json: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("report.json")).expect("report.json")).expect("valid JSON");
    assert_eq!(
        json["audit"]["checks"].as_array().map(Vec::len),
        Some(report.audit.checks.len())
    );
    let _ = std::fs::remove_dir_all(&out);
    every_monitored_metric_is_exported(&floodgate).await;
}

/// Every metric the Grafana dashboard and the alert rules query (k8s/monitoring, as
/// `scripts/check-monitoring --list-metrics` lists them) is exported by some process of a
/// deployment that has just run a sale: a panel or an alert on a name nobody exports would
/// stay silent forever.
async fn every_monitored_metric_is_exported(floodgate: &Floodgate) {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/check-monitoring");
    let listed = std::process::Command::new("bash")
        .arg(&script)
        .arg("--list-metrics")
        .output()
        .expect("scripts/check-monitoring runs");
    assert!(
        listed.status.success(),
        "scripts/check-monitoring --list-metrics: {}",
        String::from_utf8_lossy(&listed.stderr)
    );
    let wanted: std::collections::BTreeSet<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect();
    assert!(wanted.len() > 20, "the dashboard and rules name metrics: {wanted:?}");
    let http = reqwest::Client::new();
    let mut exported = std::collections::BTreeSet::new();
    for (name, admin) in &floodgate.admin_urls {
        let text = http
            .get(format!("{admin}/metrics"))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .unwrap_or_else(|err| panic!("{name} serves /metrics: {err}"))
            .text()
            .await
            .expect("a metrics body");
        exported.extend(
            text.lines()
                .filter(|line| !line.starts_with('#'))
                .filter_map(|line| line.split(['{', ' ']).next())
                .filter(|name| !name.is_empty())
                .map(str::to_owned),
        );
    }
    let missing: Vec<&String> = wanted.difference(&exported).collect();
    assert!(
        missing.is_empty(),
        "queried by k8s/monitoring but exported by no process: {missing:?}"
    );
}

#[tokio::test]
async fn a_small_flash_sale_keeps_a_clean_audit_through_chaos_on_replicas() {
    let floodgate = Floodgate::start_with(Options {
        ingresses: 2,
        admission_controllers: 2,
        booking_workers: 2,
        ..Options::default()
    })
    .await;
    let out = tempdir("chaos");
    let outcome = rehearse(&floodgate, &out, &["--chaos"]).await;
    assert_sold_out_with_a_clean_audit(&outcome);
    let report = &outcome.report;
    let faults: Vec<&str> = report.faults.iter().map(|fault| fault.what.as_str()).collect();
    assert_eq!(faults.len(), 6, "six faults: {faults:?}");
    assert!(
        faults
            .iter()
            .all(|what| !what.starts_with("FAILED") && !what.starts_with("SKIPPED")),
        "every fault happened: {faults:?}"
    );
    for what in ["ingress replica", "holding the lease", "active booking-worker"] {
        assert!(
            faults
                .iter()
                .any(|fault| fault.starts_with("SIGKILL") && fault.contains(what)),
            "a SIGKILL to the {what}: {faults:?}"
        );
    }
    // The killed ingress's fans carried on through the other one, in the same place.
    assert!(
        report.failovers + report.websocket_reconnects > 0,
        "fans moved to the other ingress"
    );
    assert_eq!(report.places_lost, 0, "no fan lost its place");
    let _ = std::fs::remove_dir_all(&out);
}

fn tempdir(what: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("floodgate-flash-{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    dir
}
