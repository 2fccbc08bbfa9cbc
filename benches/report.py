#!/usr/bin/env python3
"""Turns one run_load.sh run (peer raw jsonl, floor raw jsonl, versions, native timings) into a
Markdown section: median of passes per (server, model, concurrency), ratios against the FastAPI
peers and the bare hyper floor, and the issue's targets checked."""
import json
import statistics
import sys
from collections import defaultdict


def load(path):
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


def main():
    peer_raw, floor_raw, versions_path, native_path = sys.argv[1:5]
    rows = load(peer_raw) + load(floor_raw)
    cells = defaultdict(list)
    for r in rows:
        server = "sluice" if r["server"] == "custom" else r["server"]
        cells[(server, r["model"], int(r["conc"]))].append(r)

    def med(server, model, conc, key):
        vals = [r[key] for r in cells.get((server, model, conc), []) if key in r]
        return statistics.median(vals) if vals else None

    servers = [s for s in ["sluice", "sluice-batch", "sluice-nobatch", "hyper-bare", "pytriton", "fastapi-1w", "fastapi-2w"]
               if any(k[0] == s for k in cells)]
    models = sorted({k[1] for k in cells})
    concs = sorted({k[2] for k in cells})
    with open(versions_path) as f:
        header = [line.rstrip() for line in f if line.startswith(("date:", "host:", "os:", "load generator:", "load average"))]
    out = ["", f"## Load run {header[0].split()[1] if header else ''}", ""]
    out += [f"- {line}" for line in header]
    out += ["- sluice: `sluice serve mlp-small.onnx mlp-large.onnx` (defaults: threads execution, one instance per core, "
            "1 ORT thread each, opportunistic dynamic batching up to 64 rows), OIP v2 JSON bodies; sluice-batch and "
            "sluice-nobatch: the same server with batching on (defaults) and off (`--max-batch-size 1`), measured in "
            "alternating passes after the peers; pytriton: Triton 2.51 (PyTriton, dynamic batching on) with the same v2 bodies; "
            "FastAPI peers get the equivalent /score bodies; hyper-bare answers the same response bytes without a model "
            "(the HTTP floor)", ""]
    out += ["Medians over passes; rps = requests/s; latency in ms; errors summed.", ""]
    for model in models:
        out += [f"### {model}", "", "| server | conc | rps | p50 ms | p99 ms | errors | passes | sluice rps / this |",
                "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for server in servers:
            for conc in concs:
                rps = med(server, model, conc, "rps")
                if rps is None:
                    continue
                p50, p99 = med(server, model, conc, "lat_p50_us"), med(server, model, conc, "lat_p99_us")
                errs = sum(r.get("errors", 0) for r in cells[(server, model, conc)])
                ours = med("sluice", model, conc, "rps")
                ratio = f"{ours / rps:.2f}x" if ours and server != "sluice" else ""
                out.append(f"| {server} | {conc} | {rps:.0f} | {p50 / 1000:.3f} | {p99 / 1000:.3f} | {errs} | "
                           f"{len(cells[(server, model, conc)])} | {ratio} |")
        out.append("")
    out += ["### Targets (issue 2)", ""]
    small64 = med("sluice", "mlp-small", 64, "rps")
    for peer in ["fastapi-1w", "fastapi-2w"]:
        p = med(peer, "mlp-small", 64, "rps")
        if small64 and p:
            verdict = "met" if small64 >= 10 * p else "not met"
            out.append(f"- mlp-small c=64: sluice {small64:.0f} rps = {small64 / p:.1f}x {peer} ({p:.0f}); target 10x: {verdict}")
    p50 = med("sluice", "mlp-small", 1, "lat_p50_us")
    if p50 is not None:
        out.append(f"- mlp-small c=1 p50: {p50 / 1000:.3f} ms; target <= 0.100 ms: {'met' if p50 <= 100 else 'not met'}")
    for model in models:
        for conc in concs:
            ours, floor = med("sluice", model, conc, "rps"), med("hyper-bare", model, conc, "rps")
            if ours and floor:
                out.append(f"- {model} c={conc}: sluice reaches {ours / floor:.0%} of bare hyper's rps "
                           f"(p50 {med('sluice', model, conc, 'lat_p50_us') / 1000:.3f} vs "
                           f"{med('hyper-bare', model, conc, 'lat_p50_us') / 1000:.3f} ms)")
    out += ["", "### Targets (issue 4)", ""]
    large64, triton = med("sluice", "mlp-large", 64, "rps"), med("pytriton", "mlp-large", 64, "rps")
    if large64 and triton:
        out.append(f"- mlp-large c=64: sluice {large64:.0f} rps = {large64 / triton:.1f}x pytriton ({triton:.0f}); "
                   f"target 4x: {'met' if large64 >= 4 * triton else 'not met'}")
    on64, nob = med("sluice-batch", "mlp-large", 64, "rps"), med("sluice-nobatch", "mlp-large", 64, "rps")
    if on64 and nob:
        out.append(f"- mlp-large c=64 (alternating passes): batching on {on64:.0f} rps vs off {nob:.0f} rps ({on64 / nob:.2f}x)")
    rows64 = [n for n in load(native_path) if n["model"] == "mlp-large" and n["batch"] == 64 and n.get("threads") == 1]
    if large64 and rows64:
        best = max(64 / (n["p50_us"] / 1e6) for n in rows64)
        out.append(f"- mlp-large c=64: {large64:.0f} rows/s served = {large64 / best:.0%} of in-process batch-64 rows/s "
                   f"on one 1-thread session ({best:.0f}); target 60%: {'met' if large64 >= 0.6 * best else 'not met'}")
    on1, off1 = med("sluice-batch", "mlp-small", 1, "lat_p50_us"), med("sluice-nobatch", "mlp-small", 1, "lat_p50_us")
    if on1 and off1:
        out.append(f"- mlp-small c=1 p50 (alternating passes): batching on {on1 / 1000:.3f} ms vs off {off1 / 1000:.3f} ms "
                   f"({on1 / off1 - 1:+.0%}); target at most +10%: {'met' if on1 <= 1.1 * off1 else 'not met'}")
    native = load(native_path)
    if native:
        out += ["", "In-process ONNX Runtime (Rust `ort`, same machine, same run; p50 per `session.run`):", ""]
        for n in native:
            if n.get("threads") == 1:
                out.append(f"- {n['model']} batch {n['batch']}, 1 thread: {n['p50_us']:.1f} us")
    print("\n".join(out))


if __name__ == "__main__":
    main()
