#!/usr/bin/env python3
"""Helpers of benches/gateway_overhead.sh.

  report_gateway.py row WRK_OUT TIME_OUT key=value...   one JSON line from a `wrk --latency` output
  report_gateway.py report RAW.jsonl META.env            the markdown section for benches/RESULTS.md

`row` reads wrk's own text output (the 50%/99% lines of --latency, "N requests in", Requests/sec,
"Non-2xx or 3xx responses", "Socket errors") and /usr/bin/time's "WRKCPU user sys" line.
"""
import json
import re
import statistics
import sys

UNIT_US = {"us": 1.0, "ms": 1e3, "s": 1e6, "m": 60e6, "h": 3600e6}
TARGETS = [  # (target, pair, label)
    ("direct", "key", "direct to replica A"),
    ("gateway", "key", "Sluice gateway, key auth (service mlp-small → A)"),
    ("nginx", "key", "nginx → A"),
    ("direct", "open", "direct to replica B"),
    ("gateway", "open", "Sluice gateway, auth off (service mlp-open → B)"),
    ("nginx", "open", "nginx → B"),
]
P50_BUDGET_US = 50.0
OTHER_LIMIT_CORES = 0.25


def to_us(value, unit):
    return float(value) * UNIT_US[unit]


def parse_wrk(text):
    out = {}
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m|h),", text)
    if not m:
        raise ValueError("no 'N requests in' line")
    out["requests"] = int(m.group(1))
    out["duration_s"] = to_us(m.group(2), m.group(3)) / 1e6
    m = re.search(r"Requests/sec:\s+([\d.]+)", text)
    if not m:
        raise ValueError("no Requests/sec line")
    out["rps"] = float(m.group(1))
    for pct in ("50", "75", "90", "99"):
        m = re.search(r"^\s*%s%%\s+([\d.]+)(us|ms|s|m|h)\s*$" % pct, text, re.M)
        if not m:
            raise ValueError("no %s%% latency line (was --latency given?)" % pct)
        out["p%s_us" % pct] = to_us(m.group(1), m.group(2))
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    out["non2xx"] = int(m.group(1)) if m else 0
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    out["socket_errors"] = sum(int(g) for g in m.groups()) if m else 0
    if m:
        out["socket_errors_detail"] = m.group(0)
    return out


def cmd_row(wrk_out, time_out, *kvs):
    kv = dict(a.split("=", 1) for a in kvs)
    row = {"round": int(kv["round"]), "target": kv["target"], "pair": kv["pair"], "conc": int(kv["conc"])}
    with open(wrk_out) as f:
        row.update(parse_wrk(f.read()))
    if row["requests"] <= 0:
        raise ValueError("no requests completed")
    clk = float(kv["clk_tck"])
    row["load1"] = float(kv["load1"])
    row["proxy_cpu_s"] = int(kv["proxy_ticks"]) / clk
    row["replica_cpu_s"] = int(kv["replica_ticks"]) / clk
    with open(time_out) as f:
        m = re.search(r"WRKCPU ([\d.]+) ([\d.]+)", f.read())
    row["wrk_cpu_s"] = float(m.group(1)) + float(m.group(2)) if m else None
    b0, t0 = (int(x) for x in kv["sys_before"].split())
    b1, t1 = (int(x) for x in kv["sys_after"].split())
    row["machine_busy"] = (b1 - b0) / max(1, t1 - t0)
    row["busy_cpu_s"] = (b1 - b0) / clk  # all CPUs, all processes and the kernel
    row["attempt"] = int(kv.get("attempt", 0))
    print(json.dumps(row))
    if other_cores(row) > OTHER_LIMIT_CORES:
        sys.exit(3)  # disturbed by other work on the machine


def other_cores(r):
    """CPU used during the run by everything but the proxy, the replica and wrk, in cores."""
    return (r["busy_cpu_s"] - r["proxy_cpu_s"] - r["replica_cpu_s"] - (r["wrk_cpu_s"] or 0)) / r["duration_s"]


def ort_version(lib):
    """The ONNX Runtime version of a library path (libonnxruntime.so.X.Y.Z), else the path as given."""
    m = re.search(r"libonnxruntime\.so\.(\d+\.\d+\.\d+)", lib)
    return m.group(1) if m else lib


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def cmd_report(raw_path, meta_path):
    meta = {}
    with open(meta_path) as f:
        for line in f:
            if "=" in line:
                k, v = line.rstrip("\n").split("=", 1)
                meta[k] = v
    rows = [json.loads(l) for l in open(raw_path) if l.strip()]
    by = {}
    for r in rows:
        by.setdefault((r["target"], r["pair"], r["conc"]), []).append(r)

    def m(t, p, c, field):
        return med([r[field] for r in by.get((t, p, c), [])])

    def per_kreq_ms(t, p, c, field):  # CPU ms per 1000 requests, median over rounds
        return med([1e6 * r[field] / r["requests"] for r in by.get((t, p, c), []) if r[field] is not None])

    rounds = sorted({r["round"] for r in rows})
    bad = [r for r in rows if r["non2xx"] or r["socket_errors"]]
    invalid = meta.get("invalid", "")
    L = []
    L.append("## Gateway overhead (issue 3) — %s" % meta["date"])
    L.append("")
    if bad or invalid:
        why = []
        if bad:
            why.append("%d measured runs had non-2xx answers or socket errors (%s)" % (
                len(bad), ", ".join("r%d %s/%s c=%d: non2xx %d, %s" % (
                    r["round"], r["target"], r["pair"], r["conc"], r["non2xx"],
                    r.get("socket_errors_detail", "no socket errors")) for r in bad)))
        if invalid:
            why.append(invalid)
        L.append("**INVALID: %s.**" % "; ".join(why))
        L.append("")
    L.append("Machine: %s vCPUs (%s), shared; wrk, the Sluice gateway, nginx, the control plane and both "
             "replicas all run on the same %s cores, so every proxy competes with the replica and with wrk for CPU. "
             "Sluice %s built from %s; ONNX Runtime %s; nginx %s; wrk %s." % (
                 meta["cpus"], meta["cpu_model"], meta["cpus"], meta["sluice"].replace("sluice ", ""),
                 meta["git"], ort_version(meta["ort"]), meta["nginx"], meta["wrk"]))
    L.append("")
    L.append("Method: `benches/gateway_overhead.sh` (run %s). One control plane, mlp-small deployed as two "
             "one-replica services: mlp-small with key auth (the default) on replica A (%s) and mlp-open with "
             "`{\"auth_enabled\": false}` on replica B (%s). Each replica is measured direct, through the Sluice "
             "gateway (`/services/NAME/v2/models/mlp-small/infer`, `Authorization: Bearer KEY` for mlp-small; gateway "
             "threads and busy-polling at their defaults; the gateway reaches each replica over the Unix socket "
             "the control plane publishes for it) and through nginx (`worker_processes auto`, upstream keep-alive "
             "64, HTTP/1.1 upstream over loopback TCP to the replica's port, access log off; `benches/nginx/gateway_bench.conf.in`). wrk -t1, keep-alive, one "
             "batch-1 OIP v2 request per POST, c=1 and c=64 for %s s each after a %s s c=64 warm-up per target; "
             "%d interleaved rounds (direct, gateway, nginx for A, then for B); values are medians over rounds "
             "of wrk's own figures. The replicas' pids and addresses were the same before and after the run." % (
                 meta["stamp"], meta["replica_key"], meta["replica_open"], meta["dur"], meta["warm"], len(rounds)))
    L.append("")
    L.append("| target | c=1 p50 µs | c=1 p99 µs | c=1 rps | c=64 rps | c=64 p50 ms | c=64 p99 ms |")
    L.append("|---|---:|---:|---:|---:|---:|---:|")
    for t, p, label in TARGETS:
        L.append("| %s | %.0f | %.0f | %.0f | %.0f | %.3f | %.3f |" % (
            label, m(t, p, 1, "p50_us"), m(t, p, 1, "p99_us"), m(t, p, 1, "rps"), m(t, p, 64, "rps"),
            m(t, p, 64, "p50_us") / 1e3, m(t, p, 64, "p99_us") / 1e3))
    L.append("")
    L.append("Per round (c=1 p50 µs / c=64 rps), to show drift:")
    L.append("")
    L.append("| round | " + " | ".join("%s %s" % (t, "A" if p == "key" else "B") for t, p, _ in TARGETS) + " |")
    L.append("|---|" + "---:|" * len(TARGETS))
    for rd in rounds:
        cells = []
        for t, p, _ in TARGETS:
            r1 = [r for r in by.get((t, p, 1), []) if r["round"] == rd]
            r64 = [r for r in by.get((t, p, 64), []) if r["round"] == rd]
            cells.append("%s / %s" % ("%.0f" % r1[0]["p50_us"] if r1 else "-", "%.0f" % r64[0]["rps"] if r64 else "-"))
        L.append("| %d | %s |" % (rd, " | ".join(cells)))
    L.append("")
    def other(t, p, c):  # CPU of everything else (other processes, kernel softirq), in cores
        return med([other_cores(r) for r in by.get((t, p, c), [])])

    L.append("CPU (ms of CPU per 1000 requests, median over rounds, from /proc utime+stime of the processes, 10 ms "
             "granularity per run), how busy the whole machine was, and the CPU used by everything else (other "
             "processes on the shared machine, kernel softirq time; in cores, averaged over the run):")
    L.append("")
    L.append("| target | c=1 proxy | c=1 replica | c=64 proxy | c=64 replica | c=64 wrk | c=64 machine busy | c=64 other |")
    L.append("|---|---:|---:|---:|---:|---:|---:|---:|")
    for t, p, label in TARGETS:
        proxy1 = "-" if t == "direct" else "%.1f" % per_kreq_ms(t, p, 1, "proxy_cpu_s")
        proxy64 = "-" if t == "direct" else "%.1f" % per_kreq_ms(t, p, 64, "proxy_cpu_s")
        L.append("| %s | %s | %.1f | %s | %.1f | %.1f | %.0f%% | %.2f |" % (
            label, proxy1, per_kreq_ms(t, p, 1, "replica_cpu_s"), proxy64, per_kreq_ms(t, p, 64, "replica_cpu_s"),
            per_kreq_ms(t, p, 64, "wrk_cpu_s"), 100 * m(t, p, 64, "machine_busy"), other(t, p, 64)))
    L.append("")
    redone = [r for r in rows if r.get("attempt", 0) > 0]
    if redone:
        L.append("Measured again because other work used more than %.2f cores during the first try: %s." % (
            OTHER_LIMIT_CORES, ", ".join("r%d %s %s c=%d (try %d kept)" % (
                r["round"], r["target"], "A" if r["pair"] == "key" else "B", r["conc"], r["attempt"] + 1) for r in redone)))
    disturbed = [r for r in rows if other_cores(r) > OTHER_LIMIT_CORES]
    if disturbed:
        L.append("Runs during which everything else used more than %.2f cores (possibly disturbed by other work on "
                 "the machine): %s." % (OTHER_LIMIT_CORES, ", ".join("r%d %s %s c=%d" % (
                     r["round"], r["target"], "A" if r["pair"] == "key" else "B", r["conc"]) for r in disturbed)))
    else:
        L.append("In no run kept here did everything else use more than %.2f cores." % OTHER_LIMIT_CORES)
    L.append("")

    # Ratios and targets.
    def paired_delta(t, p):  # per-round gateway/nginx p50 minus the same round's direct p50
        ds = []
        for rd in rounds:
            a = [r["p50_us"] for r in by.get((t, p, 1), []) if r["round"] == rd]
            d = [r["p50_us"] for r in by.get(("direct", p, 1), []) if r["round"] == rd]
            if a and d:
                ds.append(a[0] - d[0])
        return med(ds)

    L.append("### Ratios")
    L.append("")
    for p, name in (("key", "A (key auth)"), ("open", "B (auth off)")):
        d1 = m("direct", p, 1, "p50_us")
        d64 = m("direct", p, 64, "rps")
        for t, tn in (("gateway", "gateway"), ("nginx", "nginx")):
            L.append("- %s, %s: c=1 p50 %+.0f µs over direct (%.0f vs %.0f µs; median of per-round differences "
                     "%+.0f µs); c=64 %.0f rps = %.2fx direct (%.0f rps)" % (
                         name, tn, m(t, p, 1, "p50_us") - d1, m(t, p, 1, "p50_us"), d1, paired_delta(t, p),
                         m(t, p, 64, "rps"), m(t, p, 64, "rps") / d64, d64))
        L.append("- %s: c=64 gateway/nginx rps = %.2fx" % (name, m("gateway", p, 64, "rps") / m("nginx", p, 64, "rps")))
    L.append("")
    L.append("### Targets (issue 3)")
    L.append("")
    def per_round(p, fn):
        vals = []
        for rd in rounds:
            got = {t: [r for r in rows if r["round"] == rd and r["target"] == t and r["pair"] == p] for t in
                   ("direct", "gateway", "nginx")}
            vals.append(fn(got))
        return vals

    def pick(rs, c, field):
        return [r[field] for r in rs if r["conc"] == c][0]

    for p, name in (("key", "key auth (default)"), ("open", "auth off")):
        delta = m("gateway", p, 1, "p50_us") - m("direct", p, 1, "p50_us")
        ds = per_round(p, lambda g: pick(g["gateway"], 1, "p50_us") - pick(g["direct"], 1, "p50_us"))
        L.append("- gateway, %s: adds %.0f µs at p50 over direct (c=1; per round %s µs); target at most %.0f µs: %s" % (
            name, delta, ", ".join("%+.0f" % d for d in ds), P50_BUDGET_US,
            "met" if delta <= P50_BUDGET_US else "not met"))
    for p, name in (("key", "key auth (default)"), ("open", "auth off")):
        g, n = m("gateway", p, 64, "rps"), m("nginx", p, 64, "rps")
        rs = per_round(p, lambda g_: pick(g_["gateway"], 64, "rps") / pick(g_["nginx"], 64, "rps"))
        L.append("- gateway, %s: %.0f rps vs nginx %.0f rps at c=64 (%.2fx; per round %s); target at least nginx: %s" % (
            name, g, n, g / n, ", ".join("%.2fx" % x for x in rs), "met" if g >= n else "not met"))
    L.append("")

    # Interpretation, from the measured numbers only.
    busy = med([r["machine_busy"] for r in rows if r["conc"] == 64])
    g_cpu, n_cpu = per_kreq_ms("gateway", "key", 64, "proxy_cpu_s"), per_kreq_ms("nginx", "key", 64, "proxy_cpu_s")
    L.append("Interpretation: at c=64 the machine's %s vCPUs were %.0f%% busy (median over all c=64 runs), so the "
             "CPU a proxy spends comes out of what the replica and wrk get; per 1000 requests the gateway "
             "(key auth) used %.1f ms of CPU and nginx %.1f ms, and through them replica A served %.2fx and %.2fx "
             "of its direct rps. At c=1 the added p50 is the proxy's own per-request path (one more loopback "
             "hop each way plus its work), measured here as %+.0f µs for the gateway (key auth), %+.0f µs "
             "(auth off) and %+.0f µs for nginx." % (
                 meta["cpus"], 100 * busy, g_cpu, n_cpu,
                 m("gateway", "key", 64, "rps") / m("direct", "key", 64, "rps"),
                 m("nginx", "key", 64, "rps") / m("direct", "key", 64, "rps"),
                 m("gateway", "key", 1, "p50_us") - m("direct", "key", 1, "p50_us"),
                 m("gateway", "open", 1, "p50_us") - m("direct", "open", 1, "p50_us"),
                 m("nginx", "key", 1, "p50_us") - m("direct", "key", 1, "p50_us")))
    rep1 = med([r["replica_cpu_s"] / r["duration_s"] for r in by.get(("direct", "key", 1), [])])
    L[-1] += (" Even at c=1 replica A used %.2f cores while serving directly, so with one request in flight the "
              "proxy, wrk and the replica already share the %s vCPUs." % (rep1, meta["cpus"]))
    spread = max((max(r["p50_us"] for r in rs) - min(r["p50_us"] for r in rs), t, p)
                 for (t, p, c), rs in by.items() if c == 1)
    L[-1] += (" Run-to-run variation is large on this machine: the c=1 p50 of one target varied by up to %.0f µs "
              "between rounds (%s %s), and the identical nginx set-ups in front of A and B differ by %.0f µs at c=1 "
              "p50 and %.0f rps at c=64, so differences of that size (for example key auth vs auth off) are not "
              "resolved by this run." % (
                  spread[0], spread[1], "A" if spread[2] == "key" else "B",
                  abs(m("nginx", "key", 1, "p50_us") - m("nginx", "open", 1, "p50_us")),
                  abs(m("nginx", "key", 64, "rps") - m("nginx", "open", 64, "rps"))))
    print("\n".join(L))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "row":
        cmd_row(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "report":
        cmd_report(sys.argv[2], sys.argv[3])
    else:
        sys.exit(__doc__)
