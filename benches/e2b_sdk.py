#!/usr/bin/env python3
"""SDK-level latency of nsbox serve's E2B API: `Sandbox.create()` until the first
`commands.run("true")` returns, with the real E2B Python SDK, cold and from the warm pool.

Run as root from the repository, after `cargo build` and with the SDK's virtual environment
(.ci/run makes it):  .venv-e2b/bin/python benches/e2b_sdk.py [RUNS]
Each run: create, run `true`, kill (the kill is not timed). Prints p50/p99 in milliseconds,
beside, in the same run, `nsbox exec -- true` and `bwrap ... true` (the host's root read-only,
every namespace unshared) as process baselines, and the SDK's p50 as a ratio to each.
"""
import json, os, statistics, subprocess, sys, tempfile, time

RUNS = int(sys.argv[1]) if len(sys.argv) > 1 else 100
NSBOX = os.environ.get("NSBOX_BIN", "target/x86_64-unknown-linux-musl/debug/nsbox")


def serve(state, extra):
    sock = os.path.join(state, "serve.sock")
    key = subprocess.run([NSBOX, "--state-root", state, "serve", "key", "add", "bench"],
                         capture_output=True, check=True, text=True).stdout.strip()
    proc = subprocess.Popen([NSBOX, "--state-root", state, "serve", "--socket", sock,
                             "--listen", "127.0.0.1:0", *extra], stdout=subprocess.PIPE, text=True)
    ready = json.loads(proc.stdout.readline())
    return proc, key, "http://" + ready["tcp"]


def summary(label, times):
    times.sort()
    p50 = statistics.median(times)
    p99 = times[min(len(times) - 1, int(len(times) * 0.99))]
    print(f"{label}: p50 {p50:.1f} ms, p99 {p99:.1f} ms over {len(times)} runs")
    return p50


def measure_argv(label, argv):
    times = []
    for i in range(RUNS + 5):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL)
        if i >= 5:
            times.append((time.perf_counter() - t0) * 1000)
    return summary(label, times)


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
        return summary(label, times)


cold = measure("SDK create + run (cold, no pool)", [])
warm = measure("SDK create + run (warm pool, --pool host=4)", ["--pool", "host=4"])
with tempfile.TemporaryDirectory(prefix="nsbox-e2b-bench-") as state:
    exec_p50 = measure_argv("nsbox exec -- true", [NSBOX, "--state-root", state, "exec", "--", "true"])
bwrap_p50 = measure_argv("bwrap -- true", ["bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
                                            "--unshare-all", "--die-with-parent", "--", "true"])
for label, p50 in [("cold", cold), ("warm pool", warm)]:
    print(f"ratio {label}: {p50 / exec_p50:.2f}x nsbox exec, {p50 / bwrap_p50:.2f}x bwrap (p50)")
