#!/usr/bin/env python3
"""SDK-level latency of nsbox serve's E2B API: `Sandbox.create()` until the first
`commands.run("true")` returns, with the real E2B Python SDK, cold and from the warm pool.

Run as root from the repository, after `cargo build` and with the SDK's virtual environment
(.ci/run makes it):  .venv-e2b/bin/python benches/e2b_sdk.py [RUNS]
Each run: create, run `true`, kill (the kill is not timed). Prints p50/p99 in milliseconds.
"""
import json, os, statistics, subprocess, sys, tempfile, time

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
NSBOX = os.environ.get("NSBOX_BIN", "target/x86_64-unknown-linux-gnu/debug/nsbox")


def serve(state, extra):
    sock = os.path.join(state, "serve.sock")
    key = subprocess.run([NSBOX, "--state-root", state, "serve", "key", "add", "bench"],
                         capture_output=True, check=True, text=True).stdout.strip()
    proc = subprocess.Popen([NSBOX, "--state-root", state, "serve", "--socket", sock,
                             "--listen", "127.0.0.1:0", *extra], stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline())
    return proc, key, "http://" + ready["tcp"]


def measure(label, extra):
    with tempfile.TemporaryDirectory(prefix="nsbox-e2b-bench-") as state:
        proc, key, url = serve(state, extra)
        os.environ.update(E2B_API_URL=url, E2B_SANDBOX_URL=url, E2B_API_KEY=key)
        from e2b import Sandbox
        times = []
        try:
            for i in range(RUNS + 5):
                t0 = time.perf_counter()
                sbx = Sandbox.create(timeout=60)
                sbx.commands.run("true")
                elapsed = (time.perf_counter() - t0) * 1000
                sbx.kill()
                if i >= 5:  # the first runs warm the client's connection pool
                    times.append(elapsed)
                if extra:
                    time.sleep(0.05)  # lets the pool refill, as between an agent's tasks
        finally:
            proc.terminate()
            proc.wait()
        times.sort()
        p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
        print(f"{label}: p50 {statistics.median(times):.1f} ms, p99 {p99:.1f} ms over {len(times)} runs")


measure("cold (no pool)", [])
measure("warm pool (--pool host=4)", ["--pool", "host=4"])
