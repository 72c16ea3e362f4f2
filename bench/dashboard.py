"""The Grafana board and its picture, from one list of panels.

Each panel holds the PromQL a Grafana would run against Prometheus and the same
computation done here on scrapes of ``GET /metrics`` (``rate`` over a window,
``histogram_quantile`` with Prometheus's linear interpolation), so the picture shows what
the board shows, from real metrics, without a Grafana.

    python bench/dashboard.py grafana   # writes docs/grafana-dashboard.json
    (the "metrics" section of bench/run.py scrapes under load and renders docs/metrics.png)
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
GRAFANA_JSON = ROOT / "docs" / "grafana-dashboard.json"
PICTURE = ROOT / "docs" / "metrics.png"
WINDOW_S = 2.0  # the rate window over the bench's half-second scrapes ($__rate_interval)

# A scrape: {"t": seconds since the first, "samples": [[name, {label: value}, value], …]}
Scrape = dict[str, Any]
Lines = dict[str, list[float]]  # legend → one value per scrape (NaN where undefined)


# --- PromQL, the little of it the board uses -----------------------------------------


def _select(scrape: Scrape, name: str, by: tuple[str, ...], where: dict[str, str]) -> dict:
    """``sum by (by) (name{where})`` at one scrape."""
    out: dict[tuple[str, ...], float] = {}
    for sample_name, labels, value in scrape["samples"]:
        if sample_name == name and all(labels.get(k) == v for k, v in where.items()):
            key = tuple(labels.get(b, "") for b in by)
            out[key] = out.get(key, 0.0) + value
    return out


def rate(
    scrapes: list[Scrape], name: str, by: tuple[str, ...] = (), **where: str
) -> dict[tuple[str, ...], list[float]]:
    """``sum by (by) (rate(name{where}[WINDOW_S]))`` at every scrape."""
    out: dict[tuple[str, ...], list[float]] = {}
    selected = [_select(s, name, by, where) for s in scrapes]
    for i, scrape in enumerate(scrapes):
        j = i
        while j > 0 and scrape["t"] - scrapes[j - 1]["t"] <= WINDOW_S + 1e-9:
            j -= 1
        dt = scrape["t"] - scrapes[j]["t"]
        for key in set(selected[i]) | set(selected[j]):
            series = out.setdefault(key, [math.nan] * len(scrapes))
            if dt > 0:
                series[i] = (selected[i].get(key, 0.0) - selected[j].get(key, 0.0)) / dt
    return out


def histogram_quantile(q: float, scrapes: list[Scrape], name: str, **where: str) -> list[float]:
    """``histogram_quantile(q, sum by (le) (rate(name_bucket{where}[WINDOW_S])))``."""
    buckets = rate(scrapes, name + "_bucket", ("le",), **where)
    bounds = sorted(buckets, key=lambda key: float(key[0]))
    out = []
    for i in range(len(scrapes)):
        counts = [(float(le[0]), buckets[le][i]) for le in bounds]
        out.append(_quantile(q, counts))
    return out


def _quantile(q: float, cumulative: list[tuple[float, float]]) -> float:
    if not cumulative or math.isnan(cumulative[-1][1]) or cumulative[-1][1] <= 0:
        return math.nan
    rank = q * cumulative[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in cumulative:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound  # Prometheus answers the highest finite bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (
                count - lower_count
            )
        lower_bound, lower_count = bound, count
    return math.nan


def gauge(scrapes: list[Scrape], name: str) -> list[float]:
    return [_select(s, name, (), {}).get((), math.nan) for s in scrapes]


def _ratio(a: list[float], b: list[float]) -> list[float]:
    return [x / y if y and not math.isnan(y) else math.nan for x, y in zip(a, b, strict=True)]


def _by(series: dict[tuple[str, ...], list[float]]) -> Lines:
    return {key[0] if key else "": values for key, values in sorted(series.items())}


def _only(series: dict[tuple[str, ...], list[float]]) -> list[float]:
    return next(iter(series.values()), [])


# --- the board -------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    legend: str  # Grafana legendFormat
    expr: str  # PromQL
    compute: Callable[[list[Scrape]], Lines]


@dataclass(frozen=True)
class Panel:
    title: str
    unit: str  # Grafana unit id
    targets: tuple[Target, ...]
    scale: float = 1.0  # for the picture: seconds → ms
    log_scale: bool = False  # rare reasons stay visible beside a flood of another


RI = "$__rate_interval"
EVENTS = 'route="/events"'

PANELS: tuple[Panel, ...] = (
    Panel(
        "Ingest rate (events/s committed)",
        "ops",
        (
            Target(
                "{{event_type}}",
                f"sum by (event_type) (rate(analytics_events_accepted_total[{RI}]))",
                lambda s: _by(rate(s, "analytics_events_accepted_total", ("event_type",))),
            ),
        ),
    ),
    Panel(
        "Rejected requests by reason (/s)",
        "reqps",
        (
            Target(
                "{{reason}}",
                f"sum by (reason) (rate(analytics_events_rejected_total[{RI}]))",
                lambda s: _by(rate(s, "analytics_events_rejected_total", ("reason",))),
            ),
        ),
        log_scale=True,
    ),
    Panel(
        "POST /events latency (ms)",
        "s",
        (
            Target(
                "p99",
                "histogram_quantile(0.99, sum by (le) (rate("
                f"analytics_http_request_duration_seconds_bucket{{{EVENTS}}}[{RI}])))",
                lambda s: {
                    "p99": histogram_quantile(
                        0.99, s, "analytics_http_request_duration_seconds", route="/events"
                    )
                },
            ),
            Target(
                "p50",
                "histogram_quantile(0.5, sum by (le) (rate("
                f"analytics_http_request_duration_seconds_bucket{{{EVENTS}}}[{RI}])))",
                lambda s: {
                    "p50": histogram_quantile(
                        0.5, s, "analytics_http_request_duration_seconds", route="/events"
                    )
                },
            ),
        ),
        scale=1000.0,
    ),
    Panel(
        "Writer queue (events waiting or being committed)",
        "short",
        (
            Target(
                "queued",
                "analytics_writer_queue_events",
                lambda s: {"queued": gauge(s, "analytics_writer_queue_events")},
            ),
        ),
    ),
    Panel(
        "Group commit size (events per transaction)",
        "short",
        (
            Target(
                "mean",
                f"rate(analytics_commit_events_sum[{RI}]) / "
                f"rate(analytics_commit_events_count[{RI}])",
                lambda s: {
                    "mean": _ratio(
                        _only(rate(s, "analytics_commit_events_sum")),
                        _only(rate(s, "analytics_commit_events_count")),
                    )
                },
            ),
            Target(
                "p99",
                f"histogram_quantile(0.99, rate(analytics_commit_events_bucket[{RI}]))",
                lambda s: {"p99": histogram_quantile(0.99, s, "analytics_commit_events")},
            ),
        ),
    ),
    Panel(
        "Group commit time (ms, fsync included)",
        "s",
        (
            Target(
                "p99",
                f"histogram_quantile(0.99, rate(analytics_commit_duration_seconds_bucket[{RI}]))",
                lambda s: {"p99": histogram_quantile(0.99, s, "analytics_commit_duration_seconds")},
            ),
            Target(
                "mean",
                f"rate(analytics_commit_duration_seconds_sum[{RI}]) / "
                f"rate(analytics_commit_duration_seconds_count[{RI}])",
                lambda s: {
                    "mean": _ratio(
                        _only(rate(s, "analytics_commit_duration_seconds_sum")),
                        _only(rate(s, "analytics_commit_duration_seconds_count")),
                    )
                },
            ),
        ),
        scale=1000.0,
    ),
)

# The sample names the panels read (the bench keeps only these from each scrape).
USED = (
    "analytics_events_accepted_total",
    "analytics_events_rejected_total",
    "analytics_http_request_duration_seconds_bucket",
    "analytics_writer_queue_events",
    "analytics_commit_events_sum",
    "analytics_commit_events_count",
    "analytics_commit_events_bucket",
    "analytics_commit_duration_seconds_sum",
    "analytics_commit_duration_seconds_count",
    "analytics_commit_duration_seconds_bucket",
)


def parse_scrape(text: str) -> list[list[Any]]:
    """The samples of one exposition that the panels use."""
    from prometheus_client.parser import text_string_to_metric_families

    out = []
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name in USED and (
                s.name != "analytics_http_request_duration_seconds_bucket"
                or s.labels.get("route") == "/events"
            ):
                out.append([s.name, dict(s.labels), s.value])
    return out


def grafana() -> dict[str, Any]:
    """The dashboard as Grafana imports it (a ``datasource`` variable picks Prometheus)."""
    panels = []
    for i, panel in enumerate(PANELS):
        panels.append(
            {
                "id": i + 1,
                "type": "timeseries",
                "title": panel.title,
                "datasource": {"type": "prometheus", "uid": "${datasource}"},
                "gridPos": {"h": 8, "w": 12, "x": 12 * (i % 2), "y": 8 * (i // 2)},
                "fieldConfig": {
                    "defaults": {
                        "unit": panel.unit,
                        "custom": {
                            "scaleDistribution": {"type": "log", "log": 10}
                            if panel.log_scale
                            else {"type": "linear"}
                        },
                    },
                    "overrides": [],
                },
                "options": {"legend": {"displayMode": "list", "placement": "bottom"}},
                "targets": [
                    {
                        "refId": chr(ord("A") + j),
                        "datasource": {"type": "prometheus", "uid": "${datasource}"},
                        "expr": target.expr,
                        "legendFormat": target.legend,
                    }
                    for j, target in enumerate(panel.targets)
                ],
            }
        )
    return {
        "title": "Analytics event service",
        "uid": "analytics-events",
        "tags": ["analytics"],
        "schemaVersion": 39,
        "version": 1,
        "editable": True,
        "refresh": "10s",
        "time": {"from": "now-1h", "to": "now"},
        "templating": {
            "list": [
                {
                    "name": "datasource",
                    "label": "Prometheus",
                    "type": "datasource",
                    "query": "prometheus",
                }
            ]
        },
        "panels": panels,
    }


def render(scrapes: list[Scrape], path: Path = PICTURE, *, subtitle: str = "") -> Path:
    """The board's panels drawn from ``scrapes`` (one PNG, two panels a row)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [s["t"] for s in scrapes]
    rows = math.ceil(len(PANELS) / 2)
    fig, axes = plt.subplots(rows, 2, figsize=(13, 3.3 * rows), sharex=True)
    for ax, panel in zip(axes.flat, PANELS, strict=False):
        for target in panel.targets:
            for legend, values in target.compute(scrapes).items():
                label = legend or target.legend
                ax.plot(times, [v * panel.scale for v in values], label=label, linewidth=1.4)
        ax.set_title(panel.title, fontsize=10, loc="left")
        ax.grid(alpha=0.3)
        if panel.log_scale:
            ax.set_yscale("log")
        else:
            ax.set_ylim(bottom=0)
        ax.legend(fontsize=8, loc="upper left", ncols=3)
    for ax in axes[-1]:
        ax.set_xlabel("seconds")
    fig.suptitle(
        "Analytics event service: the Grafana board's panels from /metrics scrapes" + subtitle,
        fontsize=11,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def write_grafana(path: Path = GRAFANA_JSON) -> Path:
    path.write_text(json.dumps(grafana(), indent=2) + "\n")
    return path


def _main(argv: Iterable[str]) -> int:
    args = list(argv)
    if args == ["grafana"]:
        print(write_grafana())
        return 0
    print(__doc__)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
