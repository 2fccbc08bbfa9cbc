#!/usr/bin/env python3
"""ONNX's backend node tests through Sluice's ONNX Runtime path, for two or more ONNX Runtime versions.

    scripts/ort-node-tests.py                        # 1.31.1 against the pinned version
    scripts/ort-node-tests.py --ort 1.30.0 --ort 1.32.0
    scripts/ort-node-tests.py --ort-lib /path/libonnxruntime.so.X.Y.Z --ort-lib ...
    scripts/ort-node-tests.py --onnx 1.23.2          # the test models of another onnx release

Each node test (`onnx/backend/test/data/node/NAME/model.onnx` with `test_data_set_0/*.pb`) is
loaded by the `node_tests` example of crates/backend-ort, which calls `OrtBackend::load` exactly as
`sluice serve` does, with the library given explicitly (as `--ort-lib` would), runs the inputs and
compares the outputs. Per library it prints how many models ONNX Runtime loaded, how many Sluice
can serve and how many pass, and then what changed between the first library and the others.

Needs Python 3 with pip and a network to PyPI once: the onnx package goes into a virtual
environment under target/ort-node-tests (its wheels no longer ship the test data, so the data are
generated from the package's test cases, about 20 s), and each ONNX Runtime version is provisioned
into target/test-runtime/runtimes/onnxruntime-VERSION/ (the layout sluice and the tests use). A
run takes about a minute the first time and seconds after that. Results: target/ort-node-tests/.
"""

import argparse
import collections
import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORK = os.path.join(ROOT, "target", "ort-node-tests")
PYTHON = os.environ.get("SLUICE_PYTHON", sys.executable or "python3")
# The onnx release whose IR version (14) and opset (28) ONNX Runtime 1.32 is the first to load.
DEFAULT_ONNX = "1.23.2"
BASELINE_ORT = "1.31.1"
STATUSES = ["pass", "mismatch", "run-error", "unsupported", "no-data", "load-error", "crash"]


def say(msg):
    print(f"ort-node-tests: {msg}", file=sys.stderr, flush=True)


def pinned_ort_version():
    with open(os.path.join(ROOT, "crates", "backend-ort", "src", "provision.rs")) as f:
        m = re.search(r'^pub const ORT_VERSION: &str = "([^"]+)";', f.read(), re.M)
    if not m:
        sys.exit("ort-node-tests: cannot read ORT_VERSION from crates/backend-ort/src/provision.rs")
    return m.group(1)


def provision_ort(version):
    """The library of onnxruntime==VERSION, fetched once into target/test-runtime like sluice does."""
    folder = os.path.join(ROOT, "target", "test-runtime", "runtimes", f"onnxruntime-{version}")
    lib = os.path.join(folder, f"libonnxruntime.so.{version}")
    if os.path.isfile(lib):
        return lib
    say(f"fetching the onnxruntime=={version} wheel from PyPI into {folder}")
    os.makedirs(os.path.dirname(folder), exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".onnxruntime-", dir=os.path.dirname(folder)) as scratch:
        subprocess.run([PYTHON, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
                        "--disable-pip-version-check", "-q", f"onnxruntime=={version}", "-d", scratch], check=True)
        wheel = glob.glob(os.path.join(scratch, "onnxruntime-*.whl"))[0]
        staged = os.path.join(scratch, "lib")
        os.makedirs(staged)
        with zipfile.ZipFile(wheel) as z:
            for name in (f"libonnxruntime.so.{version}", "libonnxruntime_providers_shared.so"):
                with z.open(f"onnxruntime/capi/{name}") as src, open(os.path.join(staged, name), "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if not os.path.isfile(lib):
            os.rename(staged, folder)
    return lib


def node_test_data(onnx_version):
    """The node test folders of onnx==VERSION: shipped by the package, or generated from its cases."""
    data = os.path.join(WORK, f"onnx-{onnx_version}")
    node = os.path.join(data, "node")
    if os.path.isdir(node) and os.path.isfile(os.path.join(data, ".complete")):
        return node
    venv = os.path.join(WORK, f"venv-onnx-{onnx_version}")
    py = os.path.join(venv, "bin", "python")
    if not os.path.isfile(py):
        say(f"installing onnx=={onnx_version} into {venv}")
        subprocess.run([PYTHON, "-m", "venv", venv], check=True)
        subprocess.run([py, "-m", "pip", "install", "-q", "--disable-pip-version-check", f"onnx=={onnx_version}"],
                       check=True)
    shipped = subprocess.run(
        [py, "-c", "import os, onnx.backend.test as t; print(os.path.join(os.path.dirname(t.__file__), 'data'))"],
        check=True, capture_output=True, text=True).stdout.strip()
    if os.path.isdir(os.path.join(shipped, "node")):
        return os.path.join(shipped, "node")
    say(f"generating the node test data of onnx {onnx_version} into {data}")
    shutil.rmtree(data, ignore_errors=True)
    # The package's own generator (backend-test-tools generate-data), given the node cases.
    gen = ("import argparse, sys, warnings\n"
           "warnings.simplefilter('ignore')\n"
           "import onnx.backend.test.case.node as node, onnx.backend.test.case.model as model\n"
           "from onnx.backend.test import cmd_tools\n"
           "cases = node.collect_testcases()\n"
           "model.collect_testcases = lambda: cases\n"
           "cmd_tools.generate_data(argparse.Namespace(output=sys.argv[1]))\n")
    subprocess.run([py, "-c", gen, data], check=True, stderr=subprocess.DEVNULL)
    open(os.path.join(data, ".complete"), "w").close()
    return node


def build_runner():
    say("building the node_tests example (cargo build -p sluice-backend-ort --example node_tests)")
    subprocess.run(["cargo", "build", "-q", "-p", "sluice-backend-ort", "--example", "node_tests"],
                   cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, "debug", "examples", "node_tests")


def run_all(runner, lib, dirs, timeout):
    """One line per model: {name: (ir, opset, status, detail)}. A crash costs only the model it hit."""
    results, todo = {}, list(dirs)
    while todo:
        try:
            proc = subprocess.run([runner, lib, *todo], capture_output=True, timeout=timeout)
            out, code = proc.stdout, proc.returncode
            failed = f"exit status {code}: {proc.stderr.decode(errors='replace').strip()[-300:]}"
        except subprocess.TimeoutExpired as e:
            out, code, failed = e.stdout or b"", None, f"no result within {timeout} s"
        out = out.decode(errors="replace")
        if code == 1 and not out:
            sys.exit(f"ort-node-tests: the runner could not start: {failed}")  # the library did not load
        done = 0
        for line in out.splitlines():
            name, ir, opset, status, detail = (line.split("\t") + [""] * 5)[:5]
            results[name] = (int(ir or 0), int(opset or 0), status, detail)
            done += 1
        todo = todo[done:]
        if todo:
            name = os.path.basename(todo[0])
            results[name] = (0, 0, "crash", failed)
            todo = todo[1:]
    return results


def reason(detail):
    if "Unsupported model IR version" in detail:
        m = re.search(r"max supported IR version: (\d+)", detail)
        return f"IR version above {m.group(1)}" if m else "IR version"
    if "guarantees* support for models stamped" in detail or "is under development" in detail:
        return "opset newer than the library"
    if "Could not find an implementation" in detail or "Failed to find kernel" in detail:
        return "no kernel for an operator"
    if "is not a registered function/op" in detail:
        return "operator not registered (preview or training domain)"
    return "other"


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ort", action="append", metavar="VERSION",
                    help=f"an onnxruntime version from PyPI (default: {BASELINE_ORT} and the pinned one)")
    ap.add_argument("--ort-lib", action="append", metavar="PATH", help="an explicit libonnxruntime.so instead")
    ap.add_argument("--onnx", default=DEFAULT_ONNX, help="the onnx release of the test models (%(default)s)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per library run (%(default)s)")
    args = ap.parse_args()

    pinned = pinned_ort_version()
    libs = [os.path.abspath(p) for p in args.ort_lib or []]
    if not libs:
        libs = [provision_ort(v) for v in (args.ort or [BASELINE_ORT, pinned])]
    for lib in libs:
        if not os.path.isfile(lib):
            sys.exit(f"ort-node-tests: {lib} does not exist")
    node = node_test_data(args.onnx)
    dirs = sorted(d for d in glob.glob(os.path.join(node, "*")) if os.path.isfile(os.path.join(d, "model.onnx")))
    runner = build_runner()
    os.makedirs(WORK, exist_ok=True)

    runs = []
    for lib in libs:
        label = (re.search(r"libonnxruntime\.so\.(\d+\.\d+\.\d+)", lib) or re.search("(.*)", lib)).group(1)
        say(f"{len(dirs)} node tests of onnx {args.onnx} on ONNX Runtime {label} ({lib})")
        results = run_all(runner, lib, dirs, args.timeout)
        path = os.path.join(WORK, f"results-onnx-{args.onnx}-ort-{label}.tsv")
        with open(path, "w") as f:
            for name in sorted(results):
                ir, opset, status, detail = results[name]
                f.write(f"{name}\t{ir}\t{opset}\t{status}\t{detail}\n")
        runs.append((label, results))

    total = len(dirs)
    print(f"\nONNX backend node tests (onnx {args.onnx}, {total} models) through sluice-backend-ort "
          f"(OrtBackend::load, as `sluice serve`), pinned ONNX Runtime {pinned}\n")
    print("| ONNX Runtime | loaded by ONNX Runtime | servable by Sluice | pass | mismatch | run-error | "
          "ONNX Runtime refused | crash | newest IR / opset loaded |")
    print("|---|---|---|---|---|---|---|---|---|")
    for label, results in runs:
        c = collections.Counter(r[2] for r in results.values())
        loaded = [r for r in results.values() if r[2] not in ("load-error", "crash")]
        servable = total - c["load-error"] - c["crash"] - c["unsupported"]
        newest = f"{max((r[0] for r in loaded), default=0)} / {max((r[1] for r in loaded), default=0)}"
        print(f"| {label} | {total - c['load-error'] - c['crash']} | {servable} | {c['pass']} | {c['mismatch']} | "
              f"{c['run-error']} | {c['load-error']} | {c['crash']} | {newest} |")
    for label, results in runs:
        refused = collections.Counter(reason(r[3]) for r in results.values() if r[2] == "load-error")
        if refused:
            print(f"\n{label} refused: " + ", ".join(f"{n} {why}" for why, n in refused.most_common()))
    base_label, base = runs[0]
    for label, results in runs[1:]:
        moves = collections.Counter((base[n][2], results[n][2]) for n in results if n in base)
        changed = {k: v for k, v in moves.items() if k[0] != k[1]}
        print(f"\n{base_label} -> {label}: " + (", ".join(f"{n} {a} -> {b}" for (a, b), n in
                                                        sorted(changed.items(), key=lambda kv: -kv[1])) or "no change"))
        print(f"refused by {base_label}, loaded and passing on {label}: {moves[('load-error', 'pass')]}")
    print(f"\nper-model results: {WORK}/results-onnx-{args.onnx}-ort-*.tsv")


if __name__ == "__main__":
    main()
