#!/usr/bin/env python3
"""Static checks of Floodgate's monitoring files; run through scripts/check-monitoring.

    check_monitoring.py list-metrics           metric names the dashboard and the rules use
    check_monitoring.py check --promql-out F   validate everything that needs no promtool, and
                                               write the dashboard's queries to F as recording
                                               rules so that `promtool check rules F` parses them
    check_monitoring.py write-prometheusrule   regenerate alerts/prometheusrule.yaml

Standard library only. PyYAML is used when importable (structural comparison of the two rule
files); without it the rules are read with a small reader for the subset of YAML that
floodgate-rules.yaml uses, and the PrometheusRule must equal the generated text.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

MONITORING = Path(__file__).resolve().parent.parent
ROOT = MONITORING.parent.parent
DASHBOARD = MONITORING / "grafana" / "floodgate.json"
RULES = MONITORING / "alerts" / "floodgate-rules.yaml"
PROMETHEUS_RULE = MONITORING / "alerts" / "prometheusrule.yaml"
RUNBOOK = MONITORING / "RUNBOOK.md"

# Prometheus' own series: allowed in queries, never printed by list-metrics.
BUILTINS = {
    "up",
    "scrape_duration_seconds",
    "scrape_samples_scraped",
    "scrape_samples_post_metric_relabeling",
    "scrape_series_added",
}

# What the `process` feature of the prometheus crate (0.14, Linux) registers in every process.
PROCESS_METRICS = {
    "process_cpu_seconds_total",
    "process_open_fds",
    "process_max_fds",
    "process_virtual_memory_bytes",
    "process_resident_memory_bytes",
    "process_start_time_seconds",
    "process_threads",
}

# rabbitmq_prometheus names used here, checked against the plugin's collectors (3.10) and its
# metrics.md upstream. A new RabbitMQ panel adds its names here after the same check.
RABBITMQ_METRICS = {
    "rabbitmq_alarms_file_descriptor_limit",
    "rabbitmq_alarms_free_disk_space_watermark",
    "rabbitmq_alarms_memory_used_watermark",
    "rabbitmq_channel_messages_acked_total",
    "rabbitmq_channel_messages_confirmed_total",
    "rabbitmq_channel_messages_delivered_ack_total",
    "rabbitmq_channel_messages_published_total",
    "rabbitmq_channel_messages_redelivered_total",
    "rabbitmq_channel_messages_unroutable_dropped_total",
    "rabbitmq_channels",
    "rabbitmq_connections",
    "rabbitmq_connections_closed_total",
    "rabbitmq_connections_opened_total",
    "rabbitmq_consumers",
    "rabbitmq_disk_space_available_bytes",
    "rabbitmq_disk_space_available_limit_bytes",
    "rabbitmq_global_messages_acknowledged_total",
    "rabbitmq_global_messages_dead_lettered_delivery_limit_total",
    "rabbitmq_global_messages_dead_lettered_expired_total",
    "rabbitmq_global_messages_dead_lettered_maxlen_total",
    "rabbitmq_global_messages_dead_lettered_rejected_total",
    "rabbitmq_global_messages_delivered_total",
    "rabbitmq_global_messages_received_total",
    "rabbitmq_global_messages_routed_total",
    "rabbitmq_process_resident_memory_bytes",
    "rabbitmq_queue_messages_ready",
    "rabbitmq_queue_messages_unacked",
    "rabbitmq_queues",
    "rabbitmq_resident_memory_limit_bytes",
}

# Labels that Prometheus or Kubernetes service discovery put on every scraped series.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "service", "endpoint", "node"}

ROWS = ["Waiting room", "Booking pipeline", "Payments & delivery", "HTTP", "Processes", "RabbitMQ"]
SEVERITIES = {"page", "ticket"}

PROMQL_KEYWORDS = {
    "and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right",
    "offset", "bool", "inf", "nan", "start", "end",
}

errors: list[str] = []


def error(message: str) -> None:
    errors.append(message)


# ------------------------------------------------------------------------------------------
# PromQL: metric names and selector labels (a tokenizer, not a parser: promtool parses).


def _strip_grafana_variables(expr: str) -> str:
    return re.sub(r"\$\{?\w+(?::\w+)?\}?", "X", expr)


def selectors(expr: str) -> list[tuple[str, set[str]]]:
    """(metric name, label names in its matchers) for every series selector in `expr`."""
    text = _strip_grafana_variables(expr)
    out = []
    # Matchers first (their strings are removed with them), then drop all other strings.
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`', '""', text)
    pattern = re.compile(r"([A-Za-z_:][A-Za-z0-9_:]*)?\s*\{([^}]*)\}")
    plain = text
    for match in pattern.finditer(text):
        labels = set(re.findall(r"([A-Za-z_][A-Za-z0-9_]*)\s*(?:=~|!~|!=|=)", match.group(2)))
        if match.group(1) and match.group(1) not in PROMQL_KEYWORDS:
            out.append((match.group(1), labels))
    plain = pattern.sub(lambda m: (m.group(1) or "") + " ", text)
    plain = re.sub(r"\[[^\]]*\]", " ", plain)
    plain = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", plain)
    tokens = re.finditer(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*|([A-Za-z_:][A-Za-z0-9_:]*)(\s*\()?", plain)
    seen_with_labels = {name for name, _ in out}
    for token in tokens:
        name, call = token.group(1), token.group(2)
        if not name or call or name in PROMQL_KEYWORDS:
            continue
        if name not in seen_with_labels:
            out.append((name, set()))
    return out


def metric_names(expr: str) -> set[str]:
    return {name for name, _ in selectors(expr)}


# ------------------------------------------------------------------------------------------
# Floodgate metric definitions, read from the crates' sources.


def _macro_body(text: str, start: int) -> str:
    """The text from `start` (just after an opening parenthesis) to its closing one."""
    depth, i = 1, start
    while i < len(text) and depth:
        c = text[i]
        if c == '"':
            i += 1
            while i < len(text) and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
        i += 1
    return text[start : i - 1]


def floodgate_definitions() -> dict[str, tuple[str, set[str]]]:
    """name -> (kind, label names) for every floodgate_* metric the crates register."""
    found: dict[str, tuple[str, set[str]]] = {}
    sources = [
        p
        for p in ROOT.glob("*/src/**/*.rs")
        if p.parts[len(ROOT.parts)] not in {"target", "loadgen"}
    ]
    # Every register_* macro of the prometheus crate: int and float kinds, plain or _vec
    # (register_int_gauge_vec!, register_gauge_vec!, register_histogram!, ...).
    register = re.compile(r'(register_\w+|Opts::new|HistogramOpts::new)\s*!?\s*\(\s*"(floodgate_\w+)"')
    for path in sources:
        text = path.read_text(encoding="utf-8", errors="replace")
        for match in register.finditer(text):
            macro, name = match.group(1), match.group(2)
            kind = "histogram" if "histogram" in macro.lower() else "other"
            if macro.startswith("register_"):
                body = _macro_body(text, text.index("(", match.start()) + 1)
            else:
                # Opts::new(...) is passed to a `...Vec::new(opts, &["label"])` just after.
                body = text[match.end() : match.end() + 400]
            labels_match = re.search(r"&\[([^\]]*)\]", body)
            labels = set(re.findall(r'"(\w+)"', labels_match.group(1))) if labels_match else set()
            found[name] = (kind, labels)
    return found


def allowed_floodgate_series(defs: dict[str, tuple[str, set[str]]]) -> dict[str, set[str]]:
    """Series names a query may select -> their own labels."""
    allowed: dict[str, set[str]] = {}
    for name, (kind, labels) in defs.items():
        if kind == "histogram":
            allowed[f"{name}_bucket"] = labels | {"le"}
            allowed[f"{name}_sum"] = set(labels)
            allowed[f"{name}_count"] = set(labels)
        else:
            allowed[name] = set(labels)
    return allowed


# ------------------------------------------------------------------------------------------
# The dashboard.


def dashboard_queries(dashboard: dict) -> list[tuple[str, str]]:
    """(where, PromQL) for every panel target; label_values() variables give their selector."""
    out = []

    def walk(panels):
        for panel in panels:
            for target in panel.get("targets", []):
                if target.get("expr"):
                    out.append((f"panel {panel.get('id')} '{panel.get('title')}' {target.get('refId')}", target["expr"]))
            walk(panel.get("panels", []))

    walk(dashboard.get("panels", []))
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("type") != "query":
            continue
        query = var.get("query")
        query = query.get("query", "") if isinstance(query, dict) else (query or "")
        match = re.fullmatch(r"\s*label_values\((.*),\s*(\w+)\s*\)\s*", query)
        if match:
            out.append((f"variable ${var['name']}", f"group by ({match.group(2)}) ({match.group(1)})"))
        elif query:
            out.append((f"variable ${var['name']}", query))
    return out


def variable_label(dashboard: dict, name: str) -> tuple[str, str] | None:
    for var in dashboard.get("templating", {}).get("list", []):
        if var.get("name") == name and var.get("type") == "query":
            query = var.get("query")
            query = query.get("query", "") if isinstance(query, dict) else (query or "")
            match = re.fullmatch(r"\s*label_values\((\w+)\s*,\s*(\w+)\s*\)\s*", query)
            if match:
                return match.group(1), match.group(2)
    return None


def check_dashboard(dashboard: dict) -> None:
    if not isinstance(dashboard.get("schemaVersion"), int) or dashboard["schemaVersion"] < 36:
        error("dashboard: schemaVersion missing or older than 36")
    if not dashboard.get("uid"):
        error("dashboard: no uid (provisioning and links need a stable one)")
    variables = {v.get("name"): v for v in dashboard.get("templating", {}).get("list", [])}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        error("dashboard: needs a `datasource` variable of type datasource, query prometheus")
    show = variables.get("show")
    if not show or not show.get("includeAll"):
        error("dashboard: needs a `show` query variable with an All option")
    elif not variable_label(dashboard, "show"):
        error("dashboard: the `show` variable must be label_values(<metric>, <label>)")

    top = dashboard.get("panels", [])
    rows = [p.get("title") for p in top if p.get("type") == "row"]
    if rows != ROWS:
        error(f"dashboard: rows are {rows}, expected {ROWS}")
    ids = []

    def walk(panels):
        for panel in panels:
            ids.append(panel.get("id"))
            if "gridPos" not in panel:
                error(f"dashboard: panel '{panel.get('title')}' has no gridPos")
            if panel.get("type") != "row":
                if (panel.get("datasource") or {}).get("uid") != "${datasource}":
                    error(f"dashboard: panel '{panel.get('title')}' does not use ${{datasource}}")
                if not panel.get("targets"):
                    error(f"dashboard: panel '{panel.get('title')}' has no query")
                for target in panel.get("targets", []):
                    if (target.get("datasource") or {}).get("uid") != "${datasource}":
                        error(f"dashboard: a query of '{panel.get('title')}' does not use ${{datasource}}")
            walk(panel.get("panels", []))

    walk(top)
    if len(ids) != len(set(ids)) or None in ids:
        error("dashboard: panel ids are missing or not unique")


def promql_rules_for(queries: list[tuple[str, str]]) -> str:
    """The queries as a rules file (Grafana variables replaced) for `promtool check rules`."""

    def concrete(expr: str) -> str:
        def value(match):
            name = match.group(1)
            if name in {"__rate_interval", "__interval"}:
                return "1m"
            if name == "__range":
                return "1h"
            return ".*"

        return re.sub(r"\$\{?(\w+)(?::\w+)?\}?", value, expr)

    lines = ["# Generated by check_monitoring.py from the dashboard's queries.", "groups:", "  - name: dashboard-queries", "    rules:"]
    for where, expr in queries:
        # promtool names the failing rule: make its name say which panel the query is from.
        name = re.sub(r"[^A-Za-z0-9_]+", "_", where).strip("_")
        lines.append(f"      - record: dashboard:{name}")
        lines.append("        expr: " + json.dumps(concrete(expr)))
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------
# The rules files.


def _yaml():
    if os.environ.get("FLOODGATE_NO_YAML"):
        return None
    try:
        import yaml  # type: ignore

        return yaml
    except ImportError:
        return None


def _unquote(value: str) -> str:
    value = value.strip()
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return json.loads(value)
    if len(value) >= 2 and value[0] == value[-1] == "'":
        return value[1:-1].replace("''", "'")
    return value


def _read_rules_without_yaml(text: str) -> list[dict]:
    """Rules of floodgate-rules.yaml with the subset of YAML it uses (block and inline scalars)."""
    lines = text.splitlines()
    rules: list[dict] = []
    current: dict | None = None
    section: str | None = None  # "labels" or "annotations" while inside that mapping
    section_indent = 0
    rule_indent = 0
    i = 0

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            i += 1
            continue
        rule_start = re.match(r"^(\s*)- (alert|record):\s*(.+)$", line)
        if rule_start:
            current = {rule_start.group(2): _unquote(rule_start.group(3)), "labels": {}, "annotations": {}}
            rules.append(current)
            rule_indent = len(rule_start.group(1))
            section = None
            i += 1
            continue
        if current is not None and indent(line) <= rule_indent:
            current, section = None, None  # back at group level (`- name:`, `rules:`)
        key = re.match(r"^(\s*)([A-Za-z_]+):\s*(.*)$", line)
        if current is not None and key:
            key_indent, name, value = len(key.group(1)), key.group(2), key.group(3)
            if section and key_indent <= section_indent:
                section = None
            if name in {"labels", "annotations"} and not value:
                section, section_indent = name, key_indent
                i += 1
                continue
            if value[:1] in {"|", ">"}:
                folded = value.startswith(">")
                body = []
                i += 1
                while i < len(lines) and (not lines[i].strip() or indent(lines[i]) > key_indent):
                    body.append(lines[i].rstrip())
                    i += 1
                while body and not body[-1]:
                    body.pop()
                margin = min(indent(b) for b in body if b) if any(body) else 0
                body = [b[margin:] for b in body]
                value = " ".join(body) if folded else "\n".join(body) + ("" if value.startswith("|-") else "\n")
            else:
                value = _unquote(value)
                i += 1
            if section:
                current[section][name] = value
            else:
                current[name] = value
            continue
        i += 1
    return rules


def load_rules() -> list[dict]:
    yaml = _yaml()
    text = RULES.read_text(encoding="utf-8")
    if yaml:
        doc = yaml.safe_load(text)
        return [rule for group in doc["groups"] for rule in group["rules"]]
    return _read_rules_without_yaml(text)


PROMETHEUS_RULE_HEADER = """\
# GENERATED from floodgate-rules.yaml by `scripts/check-monitoring --write-prometheusrule`:
# edit floodgate-rules.yaml, then regenerate. scripts/check-monitoring fails while they differ.
#
# The same alerting rules as a Prometheus Operator resource. The Prometheus that should load it
# must select it: kube-prometheus-stack's default ruleSelector wants the label
# `release: <helm release>` (add it with a kustomize patch or commonLabels).
apiVersion: monitoring.coreos.com/v1
kind: PrometheusRule
metadata:
  name: floodgate
  labels:
    app.kubernetes.io/name: floodgate
    app.kubernetes.io/component: monitoring
    role: alert-rules
spec:
"""


def generated_prometheus_rule() -> str:
    lines = RULES.read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("groups:"))
    body = ["  " + line if line.strip() else "" for line in lines[start:]]
    return PROMETHEUS_RULE_HEADER + "\n".join(body) + "\n"


def check_rules_in_sync() -> None:
    if not PROMETHEUS_RULE.exists():
        error(f"{PROMETHEUS_RULE.relative_to(ROOT)} is missing (scripts/check-monitoring --write-prometheusrule)")
        return
    yaml = _yaml()
    if yaml:
        plain = yaml.safe_load(RULES.read_text(encoding="utf-8"))
        resource = yaml.safe_load(PROMETHEUS_RULE.read_text(encoding="utf-8"))
        if resource.get("apiVersion") != "monitoring.coreos.com/v1" or resource.get("kind") != "PrometheusRule":
            error("prometheusrule.yaml: not a monitoring.coreos.com/v1 PrometheusRule")
        if (resource.get("spec") or {}).get("groups") != plain.get("groups"):
            error("prometheusrule.yaml: spec.groups differ from floodgate-rules.yaml "
                  "(run scripts/check-monitoring --write-prometheusrule)")
    elif PROMETHEUS_RULE.read_text(encoding="utf-8") != generated_prometheus_rule():
        error("prometheusrule.yaml differs from what floodgate-rules.yaml generates "
              "(run scripts/check-monitoring --write-prometheusrule)")


def github_anchor(heading: str) -> str:
    anchor = heading.strip().lower()
    anchor = re.sub(r"[^\w\- ]", "", anchor)
    return anchor.replace(" ", "-")


def check_rules(rules: list[dict]) -> None:
    anchors = set()
    if RUNBOOK.exists():
        for line in RUNBOOK.read_text(encoding="utf-8").splitlines():
            match = re.match(r"^#{1,6}\s+(.*)$", line)
            if match:
                anchors.add(github_anchor(match.group(1)))
    else:
        error("RUNBOOK.md is missing")
    names = set()
    for rule in rules:
        name = rule.get("alert") or rule.get("record")
        if not rule.get("alert"):
            continue
        if name in names:
            error(f"rules: alert {name} is defined twice")
        names.add(name)
        labels, annotations = rule.get("labels") or {}, rule.get("annotations") or {}
        if labels.get("severity") not in SEVERITIES:
            error(f"rules: {name}: labels.severity must be one of {sorted(SEVERITIES)}")
        if not annotations.get("summary"):
            error(f"rules: {name}: no annotations.summary")
        url = annotations.get("runbook_url", "")
        match = re.fullmatch(r"(?:.*/)?RUNBOOK\.md#([\w\-]+)", url)
        if not match:
            error(f"rules: {name}: runbook_url must point to RUNBOOK.md#<anchor>, got {url!r}")
        elif match.group(1) not in anchors:
            error(f"rules: {name}: RUNBOOK.md has no heading for #{match.group(1)}")


# ------------------------------------------------------------------------------------------
# Names.


def used_queries(dashboard: dict, rules: list[dict]) -> list[tuple[str, str]]:
    queries = dashboard_queries(dashboard)
    for rule in rules:
        queries.append((f"rule {rule.get('alert') or rule.get('record')}", rule.get("expr", "")))
    return queries


def listed_metrics(queries: list[tuple[str, str]]) -> list[str]:
    names = set()
    for _, expr in queries:
        names |= metric_names(expr)
    return sorted(n for n in names if not n.startswith("rabbitmq_") and n not in BUILTINS and ":" not in n)


def check_names(queries: list[tuple[str, str]], dashboard: dict) -> None:
    defs = floodgate_definitions()
    if not defs:
        error(f"no floodgate_* metric definitions found under {ROOT}/*/src")
        return
    allowed = allowed_floodgate_series(defs)
    for where, expr in queries:
        for name, labels in selectors(expr):
            if name.startswith("floodgate_"):
                if name not in allowed:
                    hint = " (a histogram: use _bucket, _sum or _count)" if name in defs else ""
                    error(f"{where}: {name} is not a Floodgate metric{hint}")
                    continue
                unknown = labels - allowed[name] - TARGET_LABELS
                if unknown:
                    error(f"{where}: {name} has no label(s) {sorted(unknown)} (it has {sorted(allowed[name])})")
            elif name.startswith("process_"):
                if name not in PROCESS_METRICS:
                    error(f"{where}: {name} is not exported by the prometheus crate's process collector")
            elif name.startswith("rabbitmq_"):
                if name not in RABBITMQ_METRICS:
                    error(f"{where}: {name} is not in the checked list of rabbitmq_prometheus names")
            elif name not in BUILTINS and ":" not in name:
                error(f"{where}: unknown metric {name}")
    show = variable_label(dashboard, "show")
    if show and show[0] in allowed and show[1] not in allowed[show[0]]:
        error(f"variable $show: {show[0]} has no label {show[1]}")


# ------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("list-metrics")
    check = sub.add_parser("check")
    check.add_argument("--promql-out", type=Path, help="write the dashboard queries as a rules file here")
    sub.add_parser("write-prometheusrule")
    args = parser.parse_args()

    if args.command == "write-prometheusrule":
        PROMETHEUS_RULE.write_text(generated_prometheus_rule(), encoding="utf-8")
        print(f"wrote {PROMETHEUS_RULE.relative_to(ROOT)}", file=sys.stderr)
        return 0

    try:
        dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        print(f"error: {DASHBOARD.relative_to(ROOT)}: {err}", file=sys.stderr)
        return 1
    rules = load_rules()
    queries = used_queries(dashboard, rules)

    if args.command == "list-metrics":
        print("\n".join(listed_metrics(queries)))
        return 0

    check_dashboard(dashboard)
    check_rules(rules)
    check_rules_in_sync()
    check_names(queries, dashboard)
    if args.promql_out:
        args.promql_out.write_text(promql_rules_for(dashboard_queries(dashboard)), encoding="utf-8")
    for message in errors:
        print(f"error: {message}", file=sys.stderr)
    if not errors:
        alerts = sum(1 for r in rules if r.get("alert"))
        print(f"{len(queries)} queries, {alerts} alerts, {len(listed_metrics(queries))} Floodgate/process metric names: ok",
              file=sys.stderr)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
