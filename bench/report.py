"""The results table (stdout and ``bench/results/table.md``), the targets of issue 6 with
their measured figures, and the plots (``bench/results/*.png``)."""

from __future__ import annotations

import harness as h

TARGETS = {
    "ingest_rps": 10_000,
    "ingest_ratio": 0.60,
    "ingest_p99_ms": 25.0,
    "batch_events_per_s": 100_000,
    "query_whole_day_p99_ms": 5.0,
    "query_cut_day_p99_ms": 25.0,
    "query_speedup_30d": 100.0,
    "rebuild_seconds": 10.0,
    "rebuild_longest_transaction_ms": 100.0,
    "rss_mib": 150.0,
}


def _f(value: float | None, spec: str = ".1f") -> str:
    return "–" if value is None else format(value, spec)


def tables() -> list[str]:
    """Markdown tables of every section that has results."""
    lines: list[str] = []
    ingest = h.load("ingest")
    if ingest:
        lines += [
            "**Single-event ingest** (`POST /events`, wrk 2 threads, median of "
            f"{ingest['settings']['repeats']} × {ingest['settings']['duration']} s runs)",
            "",
            "| server | connections | requests/s | vs baseline | p50 ms | p99 ms | non-2xx | "
            "socket errors | CPU µs/request: loop thread | other threads |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for row in ingest["summary"]:
            ratio = row["ratio_to_baseline"]
            cpu = row.get("cpu_us_per_request") or {}
            lines.append(
                f"| {row['kind']} | {row['connections']} | {row['rps']:,.0f} | "
                f"{'–' if ratio is None or row['kind'] == 'baseline' else f'{ratio:.0%}'} | "
                f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['non_2xx']} | "
                f"{row['socket_errors']} | {_f(cpu.get('loop'), '.0f')} | "
                f"{_f(cpu.get('other'), '.0f')} |"
            )
        if ingest.get("costs"):
            lines += [
                "",
                "`service` is the default configuration (access log and metrics on); each cost "
                "is the median of per-repeat ratios against the same service with that part off:",
                "",
                "| part | connections | default / part off | cost | per repeat |",
                "|---|---:|---:|---:|---|",
            ]
            for row in ingest["costs"]:
                lines.append(
                    f"| {row['what']} | {row['connections']} | {row['on_vs_off']:.2f} | "
                    f"{1 - row['on_vs_off']:.0%} | {', '.join(f'{x:.2f}' for x in row['ratios'])} |"
                )
        checks = ingest["checks"]
        lost = sum(c["lost"] for c in checks)
        ok = all(c["ok"] for c in checks)
        verdict = "log == acknowledged + in flight, rollup == log" if ok else "CHECK FAILED"
        acknowledged = sum(c["acknowledged"] for c in checks)
        lines += [
            "",
            f"Lost acknowledged events: {lost} ({verdict}; {acknowledged:,} acknowledged in all).",
            "",
        ]
    batch = h.load("batch")
    if batch:
        lines += [
            f"**Batch ingest** (`POST /events/batch`, {batch['settings']['batch_connections']} "
            "connections)",
            "",
            "| events per request | events/s | requests/s | p50 ms | p99 ms | non-2xx |",
            "|---:|---:|---:|---:|---:|---:|",
        ]
        for row in batch["results"]:
            lines.append(
                f"| {row['batch_size']} | {row['events_per_s']:,.0f} | "
                f"{row['requests_per_s']:,.0f} | {row['p50_ms']:.1f} | {row['p99_ms']:.1f} | "
                f"{row['non_2xx']} |"
            )
        lines += ["", f"Batch lost: {batch['check']['lost']}.", ""]
    queries = h.load("queries")
    if queries:
        lines += [
            "**Queries** (HTTP: wrk, 1 connection; in process: the handler called in this "
            "process on the service's store, no HTTP; each p50 and p99 the median of 3 passes, "
            "order alternating; `COUNT(*)`: the same answer from the log through its "
            "`(event_type, timestamp)` index, with the same UTC bounds)",
            "",
            "| events | query | HTTP p50 ms | HTTP p99 ms | in-process p50 ms | in-process p99 ms "
            "| in-process CPU p99 ms | `COUNT(*)` p50 ms | speed-up (in process) | speed-up (HTTP) "
            "| equal |",
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for size in queries["sizes"]:
            w = size.get("healthz")
            if w:
                lines.append(
                    f"| {size['events']:,} | `/healthz` (the floor: same server, same run) | "
                    f"{w['p50_ms']:.2f} | {w['p99_ms']:.2f} | | | | | | | |"
                )
            for q in size["queries"]:
                lines.append(
                    f"| {size['events']:,} | {q['name']} | {q['http_p50_ms']:.2f} | "
                    f"{q['http_p99_ms']:.2f} | {q['in_process_p50_ms']:.3f} | "
                    f"{q['in_process_p99_ms']:.3f} | {_f(q.get('in_process_cpu_p99_ms'), '.3f')} | "
                    f"{q['count_p50_ms']:.1f} | "
                    f"{_f(q['speedup_in_process'], ',.0f')}× | {_f(q['speedup_http'], ',.0f')}× | "
                    f"{'yes' if q['equal_to_log'] else 'NO'} |"
                )
        lines.append("")
        for size in queries["sizes"]:
            lines.append(
                f"{size['events']:,} events: database {size['db_bytes'] / 1e6:,.0f} MB = "
                f"{size['bytes_per_event']:.0f} bytes/event "
                f"({size['db_mib_per_million_events']:.0f} MiB per million events); "
                f"query server peak RSS {_f(size['server_peak_rss_mib'])} MiB; load average "
                f"{size.get('load_average_at_start')} → {size.get('load_average_at_end')}."
            )
        lines.append("")
    lines += concurrency_table()
    lines += before_tables()
    rebuild = h.load("rebuild")
    generator = h.load("generator")
    if rebuild or generator:
        lines += [
            "| operation | events | seconds | longest write transaction |",
            "|---|---:|---:|---:|",
        ]
        if rebuild:
            check = rebuild.get("reconcile_check")
            checked = (
                f"; then `reconcile --dry-run`: {check['days_differing']} of "
                f"{check['days_checked']} days differ"
                if check
                else ""
            )
            cpu = f", {rebuild['cpu_seconds']:.2f} s CPU" if "cpu_seconds" in rebuild else ""
            lines.append(
                f"| rollup rebuild from empty rollups, daily and 15-minute "
                f"(`{rebuild['command']}`), median of runs {rebuild['wall_seconds_all']}{cpu}"
                f"{checked} | {rebuild['events']:,} | {rebuild['wall_seconds']:.2f} | "
                f"{rebuild['longest_transaction_ms']:.1f} ms |"
            )
        if generator:
            lines.append(
                f"| generator (`{generator['command']}`) | {generator['count']:,} | "
                f"{generator['seconds']:.1f} | – |"
            )
        lines.append("")
    return lines


def concurrency_table() -> list[str]:
    data = h.load("concurrency")
    if not data:
        return []
    settings = data["settings"]
    lines = [
        f"**Queries at {data['connections']} connections** (wrk, {settings['threads']} threads, "
        f"{settings['repeats']} × {settings['duration']} s per kind, order alternating; one "
        f"server in the default configuration on {data['events']:,} events; each ratio is to "
        "`/healthz` in the same repeat)",
        "",
        "| rotation | paths | requests/s | vs `/healthz` | per repeat | p50 ms | p99 ms | "
        "non-2xx | socket errors | CPU µs/request: loop thread | other threads |",
        "|---|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in data["summary"]:
        cpu = row["cpu_us_per_request"]
        ratio = "–" if row["kind"] == "/healthz" else f"{row['ratio_to_healthz']:.0%}"
        per = "" if row["kind"] == "/healthz" else ", ".join(f"{x:.2f}" for x in row["ratios"])
        lines.append(
            f"| {row['kind']} | {len(data['paths'][row['kind']])} | {row['rps']:,.0f} | {ratio} | "
            f"{per} | {row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['non_2xx']} | "
            f"{row['socket_errors'] + row['timeouts']} | {cpu['loop']:.0f} | {cpu['other']:.0f} |"
        )
    loads = [x for row in data["summary"] for x in row["load_average"]]
    lines += ["", f"Load average during the runs: {min(loads):.1f} … {max(loads):.1f}."]
    for name, check in data["answer_checks"].items():
        differing = check["paths_with_another_answer"]
        lines.append(
            f"Answers under concurrency ({name}): {check['requests']:,} requests by "
            f"{data['connections']} clients at once, statuses {check['statuses']}, "
            f"{check['socket_errors']} socket errors; every answer equal to the same request "
            f"sent alone: {'yes' if not differing else f'NO ({differing})'}."
        )
    return [*lines, ""]


def before_tables() -> list[str]:
    data = h.load("before")
    if not data:
        return []
    settings = data["settings"]
    lines = [
        f"**Ingest now against the code before the 15-minute rollup** (`{data['before_commit']}`"
        f"; wrk {data['connections']} connections, {settings['repeats']} × "
        f"{settings['duration']} s per server and workload, order alternating; batches of "
        f"{data['batch_size']} events; each ratio now / before within a repeat)",
        "",
        "| workload | server | events/s | vs before | per repeat | p50 ms | p99 ms | non-2xx | "
        "CPU µs/event: loop thread | other threads |",
        "|---|---|---:|---:|---|---:|---:|---:|---:|---:|",
    ]
    for row in data["summary"]:
        cpu = row["cpu_us_per_event"]
        before = row["kind"] == "before"
        ratio = "–" if before else f"{row['ratio_to_before']:.2f}"
        lines.append(
            f"| {row['workload']} | {row['kind']} | {row['events_per_s']:,.0f} | {ratio} | "
            f"{'' if before else ', '.join(f'{x:.2f}' for x in row['ratios'])} | "
            f"{row['p50_ms']:.2f} | {row['p99_ms']:.2f} | {row['non_2xx']} | {cpu['loop']:.1f} | "
            f"{cpu['other']:.1f} |"
        )
    ok = all(c["ok"] for c in data["checks"])
    verdict = "acknowledged ≤ stored ≤ acknowledged + in flight, rollups == log"
    lines += ["", f"Each server's log checked after its runs: {verdict if ok else 'MISMATCH'}.", ""]
    append = data.get("append")
    if append:
        lines += [
            f"The append transaction in process (`synchronous = {append['synchronous']}`, "
            f"{append['pairs']} alternating pairs per size): without → with the 15-minute upsert",
            "",
            "| events per commit | wall ms | wall ratio | CPU ms | CPU ratio (IQR) |",
            "|---:|---|---:|---|---:|",
        ]
        for row in append["sizes"]:
            lo, hi = row["cpu_ratio_iqr"]
            lines.append(
                f"| {row['events_per_commit']} | {row['wall_ms_without']:.2f} → "
                f"{row['wall_ms_with']:.2f} | {row['wall_ratio']:.3f} | "
                f"{row['cpu_ms_without']:.3f} → {row['cpu_ms_with']:.3f} | "
                f"{row['cpu_ratio']:.3f} ({lo:.2f}–{hi:.2f}) |"
            )
        lines.append("")
    return lines


def targets() -> list[tuple[str, str, str, bool | None]]:
    """``(target, measured, where, met)`` for each target of the issue that has data."""
    out: list[tuple[str, str, str, bool | None]] = []
    ingest = h.load("ingest")
    if ingest:
        row = next(
            (r for r in ingest["summary"] if r["kind"] == "service" and r["connections"] == 64),
            None,
        )
        if row:
            out.append(
                (
                    "ingest ≥ 10,000 events/s (64 conns)",
                    f"{row['rps']:,.0f}/s",
                    "ingest",
                    row["rps"] >= TARGETS["ingest_rps"],
                )
            )
            out.append(
                (
                    "ingest (default configuration) ≥ 60 % of baseline",
                    f"{row['ratio_to_baseline']:.0%}",
                    "ingest",
                    row["ratio_to_baseline"] >= TARGETS["ingest_ratio"],
                )
            )
            out.append(
                (
                    "ingest p99 ≤ 25 ms",
                    f"{row['p99_ms']:.1f} ms",
                    "ingest",
                    row["p99_ms"] <= TARGETS["ingest_p99_ms"],
                )
            )
            errors = row["non_2xx"] + row["socket_errors"] + row["timeouts"]
            out.append(("ingest 0 errors", str(errors), "ingest", errors == 0))
        for cost in ingest.get("costs", []):
            if cost["what"] == "access log" and cost["connections"] == 64:
                out.append(
                    (
                        "access log on within 10 % of off (64 conns)",
                        f"{1 - cost['on_vs_off']:.0%} slower",
                        "ingest",
                        cost["on_vs_off"] >= 0.90,
                    )
                )
        lost = sum(c["lost"] for c in ingest["checks"])
        out.append(
            (
                "ingest 0 lost",
                str(lost),
                "ingest",
                lost == 0 and all(c["ok"] for c in ingest["checks"]),
            )
        )
    batch = h.load("batch")
    if batch:
        row = max(batch["results"], key=lambda r: r["batch_size"])
        out.append(
            (
                f"batch ≥ 100,000 events/s ({row['batch_size']}/request)",
                f"{row['events_per_s']:,.0f}/s",
                "batch",
                row["events_per_s"] >= TARGETS["batch_events_per_s"],
            )
        )
    queries = h.load("queries")
    if queries:
        biggest = max(queries["sizes"], key=lambda s: s["events"])
        n = f"{biggest['events'] / 1e6:g}M"
        issue6 = [q for q in biggest["queries"] if q.get("issue", 6) == 6]
        whole = [q for q in issue6 if "cut" not in q["name"]]
        cut = [q for q in issue6 if "cut" in q["name"]]
        worst = max(whole, key=lambda q: q["http_p99_ms"])
        out.append(
            (
                f"whole-day queries p99 ≤ 5 ms ({n})",
                f"worst {worst['http_p99_ms']:.2f} ms ({worst['name']})",
                "queries",
                worst["http_p99_ms"] <= TARGETS["query_whole_day_p99_ms"],
            )
        )
        if cut:
            out.append(
                (
                    f"cut-day queries p99 ≤ 25 ms ({n})",
                    f"{cut[0]['http_p99_ms']:.2f} ms",
                    "queries",
                    cut[0]["http_p99_ms"] <= TARGETS["query_cut_day_p99_ms"],
                )
            )
        d30 = next((q for q in biggest["queries"] if q["name"] == "30 days"), None)
        if d30:
            out.append(
                (
                    f"≥ 100× COUNT(*), 30 days ({n})",
                    f"{d30['speedup_in_process']:,.0f}× in process, "
                    f"{d30['speedup_http']:,.0f}× over HTTP",
                    "queries",
                    (d30["speedup_in_process"] or 0) >= TARGETS["query_speedup_30d"],
                )
            )
        for q in biggest["queries"]:  # issue 11: each query with targets of its own
            limit = q.get("targets", {}).get("p99_ms")
            if limit is not None:
                floor = (biggest.get("healthz") or {}).get("p99_ms")
                out.append(
                    (
                        f"{q['name']}: p99 ≤ {limit:g} ms in process ({n})",
                        f"{q['in_process_p99_ms']:.2f} ms (p50 {q['in_process_p50_ms']:.2f})",
                        "queries",
                        q["in_process_p99_ms"] <= limit,
                    )
                )
                cpu_p99 = q.get("in_process_cpu_p99_ms")
                if cpu_p99 is not None:
                    out.append(
                        (
                            f"{q['name']}: p99 ≤ {limit:g} ms of CPU in process ({n})",
                            f"{cpu_p99:.2f} ms (p50 {q['in_process_cpu_p50_ms']:.2f})",
                            "queries",
                            cpu_p99 <= limit,
                        )
                    )
                out.append(
                    (
                        f"{q['name']}: p99 ≤ {limit:g} ms over HTTP ({n})",
                        f"{q['http_p99_ms']:.2f} ms (p50 {q['http_p50_ms']:.2f}; `/healthz` "
                        f"p99 {_f(floor, '.2f')} ms)",
                        "queries",
                        q["http_p99_ms"] <= limit,
                    )
                )
            speedup = q.get("targets", {}).get("speedup")
            if speedup is not None:
                out.append(
                    (
                        f"{q['name']}: ≥ {speedup:g}× the same COUNT(*) ({n})",
                        f"{q['speedup_in_process']:,.0f}× in process, "
                        f"{q['speedup_http']:,.0f}× over HTTP",
                        "queries",
                        q["speedup_in_process"] >= speedup,
                    )
                )
        out.append(
            (
                "exact: every answer == COUNT(*)",
                str(all(q["equal_to_log"] for s in queries["sizes"] for q in s["queries"])),
                "queries",
                all(q["equal_to_log"] for s in queries["sizes"] for q in s["queries"]),
            )
        )
    conc = h.load("concurrency")
    if conc:
        rows = {row["kind"]: row for row in conc["summary"]}
        for kind, goal in (("whole-day", 0.50), ("mix", 0.30)):
            if kind in rows:
                ratio = rows[kind]["ratio_to_healthz"]
                out.append(
                    (
                        f"{kind} queries at {conc['connections']} connections ≥ {goal:.0%} of "
                        "/healthz (1M)",
                        f"{ratio:.0%} ({rows[kind]['rps']:,.0f}/s against "
                        f"{rows['/healthz']['rps']:,.0f}/s)",
                        "concurrency",
                        ratio >= goal,
                    )
                )
        errors = sum(r["non_2xx"] + r["socket_errors"] + r["timeouts"] for r in conc["summary"])
        checks = conc["answer_checks"].values()
        out.append(("concurrent queries: 0 errors", str(errors), "concurrency", errors == 0))
        out.append(
            (
                "every concurrent answer == the same request sent alone",
                str(all(c["ok"] for c in checks)),
                "concurrency",
                all(c["ok"] for c in checks),
            )
        )
    before = h.load("before")
    if before:
        for row in before["summary"]:
            if row["kind"] == "now":
                out.append(
                    (
                        f"ingest with the 15-minute rollup within 5 % of {before['before_commit']}"
                        f" ({row['workload']}, side by side)",
                        f"now / before {row['ratio_to_before']:.2f}",
                        "before",
                        row["ratio_to_before"] >= 0.95,
                    )
                )
    rebuild = h.load("rebuild")
    if rebuild:
        n = f"{rebuild['events'] / 1e6:g}M"
        out.append(
            (
                f"rebuild ≤ 10 s ({n})",
                f"{rebuild['wall_seconds']:.2f} s",
                "rebuild",
                rebuild["wall_seconds"] <= TARGETS["rebuild_seconds"],
            )
        )
        out.append(
            (
                "rebuild: no transaction > 100 ms",
                f"{rebuild['longest_transaction_ms']:.1f} ms",
                "rebuild",
                rebuild["longest_transaction_ms"] <= TARGETS["rebuild_longest_transaction_ms"],
            )
        )
        check = rebuild.get("reconcile_check")
        if check:
            out.append(
                (
                    "rebuild: both rollups exact afterwards (reconcile --dry-run)",
                    f"{check['days_differing']} of {check['days_checked']} days differ",
                    "rebuild",
                    check["days_differing"] == 0 and rebuild["rollup_equals_log"],
                )
            )
    rss = []
    if ingest:
        rss += [v for k, v in ingest["peak_rss_mib"].items() if k != "baseline" and v]
    if batch and batch.get("peak_rss_mib"):
        rss.append(batch["peak_rss_mib"])
    if queries:
        rss += [s["server_peak_rss_mib"] for s in queries["sizes"] if s["server_peak_rss_mib"]]
    if rss:
        out.append(
            (
                "server peak RSS ≤ 150 MB",
                f"{max(rss):.0f} MiB",
                "all",
                max(rss) <= TARGETS["rss_mib"],
            )
        )
    return out


def target_lines() -> list[str]:
    lines = ["| target | measured | met |", "|---|---|---|"]
    for name, measured, _, met in targets():
        lines.append(f"| {name} | {measured} | {'yes' if met else 'no'} |")
    return lines


def plots() -> list[str]:
    """Write the PNGs; returns their paths (empty without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        h.say("  (matplotlib is not installed: no plots)")
        return []
    written = []
    ingest = h.load("ingest")
    if ingest:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for row in ingest["summary"]:
            pcts = row["percentiles_ms"]
            xs = list(pcts)
            style = "--" if row["kind"] == "baseline" else "-"
            ax.plot(
                xs,
                [pcts[x] for x in xs],
                style,
                marker="o",
                label=f"{row['kind']}, {row['connections']} conns ({row['rps']:,.0f}/s)",
            )
        ax.set_yscale("log")
        ax.set_xlabel("percentile")
        ax.set_ylabel("latency (ms, log scale)")
        ax.set_title("POST /events latency percentiles (wrk, 2 threads)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        path = h.RESULTS / "ingest_latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path.relative_to(h.ROOT)))
    queries = h.load("queries")
    if queries:
        sizes = sorted(queries["sizes"], key=lambda s: s["events"])
        names = [q["name"] for q in sizes[0]["queries"]]
        fig, axes = plt.subplots(1, 2, figsize=(11, 4.5), sharey=True)
        for ax, field, title in (
            (axes[0], "http_p99_ms", "HTTP p99 (rollup + edge days)"),
            (axes[1], "count_p50_ms", "COUNT(*) on the log, p50"),
        ):
            for name in names:
                xs, ys = [], []
                for size in sizes:
                    q = next(q for q in size["queries"] if q["name"] == name)
                    xs.append(size["events"])
                    ys.append(q[field])
                ax.plot(xs, ys, marker="o", label=name)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("events in the database")
            ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
        axes[0].set_ylabel("latency (ms, log scale)")
        axes[1].legend(fontsize=7)
        fig.tight_layout()
        path = h.RESULTS / "query_latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(str(path.relative_to(h.ROOT)))
    return written


def render() -> None:
    lines = tables()
    lines += ["**Targets (issues 6, 10, 11 and 13)**", "", *target_lines(), ""]
    sections = ("ingest", "queries", "concurrency", "before", "batch", "rebuild")
    meta = next((h.load(s) for s in sections if h.load(s)), None)
    if meta:
        m = meta["machine"]
        lines.insert(
            0,
            f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, Linux "
            f"{m['kernel']}, Python {m['python']}, SQLite {m['sqlite']}, {m['wrk']}. "
            f"Date {meta['date']}, commit {meta['commit']}, `{meta['command']}`.\n",
        )
    text = "\n".join(lines)
    (h.RESULTS / "table.md").write_text(text + "\n")
    h.say("\n" + text)
    for path in plots():
        h.say(f"plot: {path}")
