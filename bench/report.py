#!/usr/bin/env python3
"""The end of bench/run.sh: checks the tool's counts against the rows in PostgreSQL, prints the
DESIGN §7 table and writes docs/performance.md and docs/performance-submit.png.

Reads the results directory run.sh filled: NAME.json (finmatch bench --json), NAME.rows (row
counts before and after each scenario), pgbench-*.txt, h2load-*.txt, rss.max, criterion.txt and
import.json. Exits 1 when a count does not match the database.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys

ROWS = ["enterprises", "needs", "approved", "declined", "acknowledged", "deadlocks"]


def load(out, name):
    path = os.path.join(out, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def rows(out, name):
    with open(os.path.join(out, name + ".rows")) as f:
        values = [int(v) for v in f.read().split()]
    n = len(ROWS)
    return {k: values[n + i] - values[i] for i, k in enumerate(ROWS)}


def op_total(report, op):
    return report["ops"].get(op, {}).get("total_successes", 0)


def read(out, name):
    path = os.path.join(out, name)
    return open(path).read() if os.path.exists(path) else ""


def pgbench_tps(text):
    m = re.search(r"tps = ([0-9.]+) \(without initial connection time\)", text)
    return float(m.group(1)) if m else None


def pgbench_latency(text):
    m = re.search(r"latency average = ([0-9.]+) ms", text)
    return float(m.group(1)) if m else None


def h2load(text):
    """(requests/s, succeeded, failed) from h2load's summary."""
    rate = re.search(r"finished in [0-9.]+\w+, ([0-9.]+) req/s", text)
    counts = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed", text)
    if not rate or not counts:
        return None
    return float(rate.group(1)), int(counts.group(1)), int(counts.group(2))


def criterion_ms(out):
    """Criterion's point estimate of one evaluation, in ms."""
    text = read(out, "criterion.txt")
    m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", text)
    if not m:
        return None
    value, unit = float(m.group(1)), m.group(2)
    return value * {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3}[unit]


def machine(database):
    def run(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return "?"

    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal"):
                mem_kb = int(line.split()[1])
    return {
        "nproc": run("nproc"),
        "cpu": cpu,
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "postgresql": run("psql", database + "/postgres", "-qAt", "-c", "SELECT version()"),
        "kernel": f"{platform.system()} {platform.release()}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--concurrency", type=int, required=True)
    ap.add_argument("--sweep", required=True)
    ap.add_argument("--streams", type=int, required=True)
    ap.add_argument("--quick", type=int, default=0)
    ap.add_argument("--database", required=True)
    ap.add_argument("--args", default="")
    a = ap.parse_args()
    out = a.out
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

    # 6. The tool's counts against the rows. ------------------------------------------------------
    scenarios = ["noop", "submit", "get", "preview", "decide", "mixed", "watch"]
    scenarios += [f"submit-c{c}" for c in a.sweep.split() if int(c) != a.concurrency]
    mismatches, checks, deadlocks = [], [], 0
    for name in scenarios:
        report = load(out, name)
        if report is None:
            continue
        delta = rows(out, name)
        deadlocks += delta["deadlocks"]
        setup = report["setup"]
        expected = {
            "enterprises": setup["enterprises"],
            "needs": setup["needs"] + op_total(report, "SubmitNeed"),
            "approved": op_total(report, "DecideReferral(approve)"),
            "declined": op_total(report, "DecideReferral(decline)"),
            "acknowledged": op_total(report, "AcknowledgeReferral"),
        }
        for what, want in expected.items():
            got = delta[what]
            checks.append((name, what, want, got))
            if got != want:
                mismatches.append(f"{name}: the tool counted {want} {what}, PostgreSQL has {got} new")

    # The figures. -------------------------------------------------------------------------------
    noop, submit, get, preview = (load(out, n) for n in ("noop", "submit", "get", "preview"))
    decide, mixed, watch = (load(out, n) for n in ("decide", "mixed", "watch"))
    pg_submit_text, pg_read_text = read(out, "pgbench-submit.txt"), read(out, "pgbench-read.txt")
    pg_submit, pg_read = pgbench_tps(pg_submit_text), pgbench_tps(pg_read_text)
    pg_writes_text = read(out, "pgbench-submit-writes.txt")
    pg_writes = pgbench_tps(pg_writes_text)
    h2_noop, h2_get = h2load(read(out, "h2load-noop.txt")), h2load(read(out, "h2load-get.txt"))
    hwm_kb, sampled_kb = (int(v) for v in read(out, "rss.max").split())
    rss_mb = max(hwm_kb, sampled_kb) / 1024
    matching_ms = criterion_ms(out)
    imported = load(out, "import")

    def ratio(x, y):
        return x / y if x is not None and y else None

    def op(report, name):
        return report["ops"].get(name, {}) if report else {}

    submit_rate = submit["calls_per_sec"]
    submit_errors = sum(submit["errors"].values())
    watch_rate = watch["calls_per_sec"] if watch else None
    w = watch.get("watch") if watch else None
    mixed_internal = mixed["errors"].get("INTERNAL", 0) if mixed else None

    table = []  # (path, measured, baseline, ratio, target, pass)

    def row(path, measured, baseline, r, target, ok):
        verdict = "n/a" if ok is None else ("PASS" if ok else "FAIL")
        table.append((path, measured, baseline, r, target, verdict))

    def fmt(v, unit="", digits=1):
        return "n/a" if v is None else f"{v:,.{digits}f}{unit}"

    r = ratio(submit_rate, pg_submit)
    row("SubmitNeed TPS / pgbench submit TPS", fmt(submit_rate, "/s"), fmt(pg_submit, " tps"),
        fmt(r, "", 3), ">= 0.7", None if r is None else r >= 0.7)
    r = ratio(submit_rate, pg_writes)
    row("  context: / pgbench of SubmitNeed's own rows", fmt(submit_rate, "/s"), fmt(pg_writes, " tps"),
        fmt(r, "", 3), "", None)
    p99 = submit["latency_ms"]["p99"]
    row(f"SubmitNeed p99 (c={a.concurrency})", fmt(p99, " ms", 2), "", "", "<= 10 ms", p99 <= 10)
    row("SubmitNeed errors", str(submit_errors), "", "", "0", submit_errors == 0)
    r = ratio(get["calls_per_sec"], pg_read)
    row("GetNeed / pgbench read TPS", fmt(get["calls_per_sec"], "/s"), fmt(pg_read, " tps"),
        fmt(r, "", 3), ">= 0.3", None if r is None else r >= 0.3)
    r = ratio(preview["calls_per_sec"], noop["calls_per_sec"])
    row("PreviewMatches / noop (1,000 products)", fmt(preview["calls_per_sec"], "/s"),
        fmt(noop["calls_per_sec"], "/s"), fmt(r, "", 3), ">= 0.25", r >= 0.25)
    row("Matching 10,000 products (criterion)", fmt(matching_ms, " ms", 3), "", "", "<= 1 ms",
        None if matching_ms is None else matching_ms <= 1.0)
    if imported:
        ok = imported["secs"] < 600 and imported["stored"] == imported["rows"] == imported["distinct_keys"]
        row(f"ImportNeeds {imported['rows']:,} needs", fmt(imported["secs"], " s"),
            f"{imported['stored']:,} stored, {imported['distinct_keys']:,} keys", "", "< 600 s, all, once", ok)
    else:
        row("ImportNeeds 1,000,000 needs", "not run", "", "", "< 600 s", None)
    row("Server RSS (max during the run)", fmt(rss_mb, " MB"), "", "", "<= 200 MB", rss_mb <= 200)
    if w:
        row(f"Watch delivery p99 ({w['opened']} streams)", fmt(w["delay_ms"]["p99"], " ms"), "", "",
            "<= 1000 ms", w["delay_ms"]["p99"] <= 1000 and w["opened"] == w["streams"])
        row("Watch deliveries / expected", f"{w['delivered']:,}", f"{w['expected_deliveries']:,}",
            fmt(ratio(w["delivered"], w["expected_deliveries"]), "", 3), "1.0",
            w["delivered"] == w["expected_deliveries"])
        r = ratio(watch_rate, submit_rate)
        row("Submit with watchers / without", fmt(watch_rate, "/s"), fmt(submit_rate, "/s"),
            fmt(r, "", 3), ">= 0.9", r >= 0.9)
    if mixed:
        row("Mixed (c=32): INTERNAL errors", str(mixed_internal), "", "", "0", mixed_internal == 0)
    row("PostgreSQL deadlocks during the run", str(deadlocks), "", "", "0", deadlocks == 0)
    row("Tool counts = rows in PostgreSQL", f"{len(checks) - len(mismatches)}/{len(checks)} match",
        "", "", "all", not mismatches)

    widths = [max(len(str(t[i])) for t in table + [("path", "measured", "baseline", "ratio", "target", "")])
              for i in range(6)]
    header = ("path", "measured", "baseline", "ratio", "target", "")
    lines = []
    for t in [header] + table:
        lines.append("  ".join(str(v).ljust(widths[i]) if i == 0 else str(v).rjust(widths[i])
                               for i, v in enumerate(t)).rstrip())
    print()
    print("DESIGN §7 — measured on this machine" + (" (--quick: short runs)" if a.quick else ""))
    print("\n".join(lines))

    # Raw figures. ---------------------------------------------------------------------------------
    raw = []
    for name in ["noop"] + [f"submit-c{c}" for c in a.sweep.split()] + ["get", "preview", "decide", "mixed", "watch"]:
        report = load(out, name if name != f"submit-c{a.concurrency}" else "submit")
        if report is None:
            continue
        l = report["latency_ms"]
        errors = ", ".join(f"{k} {v}" for k, v in report["errors"].items()) or "none"
        raw.append(f"| {name} | {report['concurrency']} | {report['calls_per_sec']:,.1f} | {report['successes']:,} "
                   f"| {l['p50']:.2f} | {l['p90']:.2f} | {l['p99']:.2f} | {l['max']:.2f} | {errors} |")
        for op_name, o in sorted(report["ops"].items()) if len(report["ops"]) > 1 else []:
            lo = o["latency_ms"]
            raw.append(f"| &nbsp;&nbsp;{op_name} | | {o['calls_per_sec']:,.1f} | {o['successes']:,} "
                       f"| {lo['p50']:.2f} | {lo['p90']:.2f} | {lo['p99']:.2f} | {lo['max']:.2f} | "
                       f"{', '.join(f'{k} {v}' for k, v in o['errors'].items()) or 'none'} |")
    baselines = [
        f"| pgbench SubmitNeed transaction, {a.concurrency} clients, -M prepared | {fmt(pg_submit, ' tps')} | "
        f"latency avg {fmt(pgbench_latency(pg_submit_text), ' ms', 3)} |",
        f"| pgbench every row SubmitNeed writes, one statement, {a.concurrency} clients, -M prepared | "
        f"{fmt(pg_writes, ' tps')} | latency avg {fmt(pgbench_latency(pg_writes_text), ' ms', 3)} |",
        f"| pgbench GetNeed read (need + referrals), {a.concurrency} clients, -M prepared | {fmt(pg_read, ' tps')} | "
        f"latency avg {fmt(pgbench_latency(pg_read_text), ' ms', 3)} |",
    ]
    for label, h in (("h2load Health/Check", h2_noop), ("h2load GetNeed (one need)", h2_get)):
        if h:
            baselines.append(f"| {label}, 2 connections × {(a.concurrency + 1) // 2} streams | {h[0]:,.1f} req/s | "
                             f"{h[1]:,} HTTP-succeeded, {h[2]:,} failed |")
    baselines.append(f"| server RSS | {rss_mb:.1f} MB | VmHWM {hwm_kb / 1024:.1f} MB, max sampled {sampled_kb / 1024:.1f} MB |")
    phases = [line.split() for line in read(out, "rss.phases").splitlines() if line.strip()]
    if phases:
        peaks = ", ".join(f"{name} {int(kb) / 1024:.1f}" for name, kb in phases)
        baselines.append(f"| server RSS by phase (largest sample, MB) | | {peaks} |")

    sweep = []
    for c in a.sweep.split():
        report = load(out, f"submit-c{c}")
        if report:
            sweep.append((int(c), report["calls_per_sec"], report["latency_ms"]["p99"]))
    sweep.sort()
    data = os.path.join(out, "sweep.dat")
    with open(data, "w") as f:
        for c, rate, p99 in sweep:
            f.write(f"{c} {rate} {p99}\n")
    png = os.path.join(root, "docs", "performance-submit.png")
    os.makedirs(os.path.dirname(png), exist_ok=True)
    gnuplot = f"""
set terminal png size 900,520
set output '{png}'
set title 'SubmitNeed against concurrency (finmatch bench submit, {a.quick and "quick" or "full"} run)'
set xlabel 'calls in flight'
set logscale x 2
set ylabel 'calls/s'
set y2label 'p99 latency (ms)'
set ytics nomirror
set y2tics
set yrange [0:*]
set y2range [0:*]
set grid
set key left top
plot '{data}' using 1:2 with linespoints lw 2 pt 7 title 'throughput (calls/s)', \\
     '{data}' using 1:3 axes x1y2 with linespoints lw 2 pt 5 title 'p99 (ms)'
"""
    subprocess.run(["gnuplot"], input=gnuplot, text=True, check=True)

    m = machine(a.database)
    md = f"""# Performance

Measured by `bench/run.sh{(' ' + a.args) if a.args else ''}` on {m['date']}{' (a `--quick` run: short windows, figures are indicative)' if a.quick else ''}.
The ratios are those of DESIGN §7: each path against a baseline run in the same benchmark on the
same machine, because absolute times drift here.

Machine: {m['nproc']} cores ({m['cpu']}), {m['memory']} memory, {m['kernel']};
{m['postgresql']}.

## DESIGN §7

```
{chr(10).join(lines)}
```

## Raw figures

Closed loop, calls in flight = concurrency, over 2 HTTP/2 connections; latencies in ms from HDR
histograms of the measured window (the warm-up is not counted). calls/s = successes / measured seconds.

| scenario | concurrency | calls/s | successes | p50 | p90 | p99 | max | errors |
|---|---|---|---|---|---|---|---|---|
{chr(10).join(raw)}

| baseline | figure | detail |
|---|---|---|
{chr(10).join(baselines)}
"""
    if w:
        md += f"""
Watch: {w['opened']} of {w['streams']} streams open during the submit load; {w['events']:,} events
received ({w['backlog_events']:,} backlog), {w['delivered']:,} of {w['expected_deliveries']:,} expected
deliveries of the run's referrals; delivery delay (receive time − event `time`) p50
{w['delay_ms']['p50']:.1f} ms, p99 {w['delay_ms']['p99']:.1f} ms, max {w['delay_ms']['max']:.1f} ms.
"""
    md += f"""
![SubmitNeed throughput and p99 against concurrency](performance-submit.png)

Where the time goes, and what would move the figures that miss their targets:
[performance-profile.md](performance-profile.md).

## Counts checked against PostgreSQL

After every scenario the script compares the tool's success counts (warm-up and drain included)
with the rows added in PostgreSQL: enterprises (setup), needs (setup + SubmitNeed), referrals
APPROVED and DECLINED (DecideReferral), audit rows of AcknowledgeReferral.
{'All ' + str(len(checks)) + ' counts match.' if not mismatches else 'MISMATCHES:' + chr(10) + chr(10).join('- ' + x for x in mismatches)}

## How to rerun

```
bench/run.sh                  # the full run, under 10 minutes
bench/run.sh --quick          # about 2 minutes, to check the script
bench/run.sh --import 1000000 # adds the ImportNeeds row (takes minutes)
FINMATCH_BENCH_PG=postgres://postgres@127.0.0.1:5432 bench/run.sh --duration 20 --concurrency 16
```

The pgbench transactions are in `bench/pgbench/` (`submit.sql`: a need, three referrals and a
daily-usage counter update in one transaction with synchronous commit; `submit_writes.sql`, for
context: every row SubmitNeed writes, in one statement as finmatch sends it; `read.sql`: a need and
its referrals by primary key), against scratch copies of finmatch's tables (`schema.sql`: same
columns, checks and indexes, no foreign keys). h2load sees HTTP status only, not grpc-status:
its "succeeded" counts are HTTP-level. The scenarios are described in the README, "Benchmarks".
"""
    with open(os.path.join(root, "docs", "performance.md"), "w") as f:
        f.write(md)
    print(f"\nwrote docs/performance.md and docs/performance-submit.png (results in {out})")
    if h2_noop:
        print(f"h2load cross-check: Health/Check {h2_noop[0]:,.1f} req/s (bench noop {noop['calls_per_sec']:,.1f}/s)"
              + (f"; GetNeed {h2_get[0]:,.1f} req/s (bench get {get['calls_per_sec']:,.1f}/s)" if h2_get else ""))
    if mismatches:
        print("\nCOUNT MISMATCH between the tool and PostgreSQL:", file=sys.stderr)
        for x in mismatches:
            print("  " + x, file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
