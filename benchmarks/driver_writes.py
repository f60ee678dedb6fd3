"""How long ASHA's prune callback holds Ray Tune's event loop, on a slow object store.

The pruning scheduler of ``orchestrator.driver.sweep`` (``_pruning_asha``) writes a stopped
trial's ``pruned`` row (``sweep_state.driver_row``: row, record, checkpoint delete,
compaction of steps and traces). This drives its ``on_trial_result`` directly, with fake
trials, ``--trials`` prune decisions in a row (ASHA with falling accuracies: the first
trial continues, every later one is stopped), twice:

- ``before``: the write done inside the callback (``_pruning_asha(..., writes=None)``);
- ``after``: the write handed to the driver's background writer (``DriverWrites``), then
  one ``flush()``, timed.

Storage: moto's S3 server (``ThreadedMotoServer``) on 127.0.0.1 behind a small threaded
HTTP proxy, also on loopback, that waits ``--latency`` seconds before forwarding each
request (a far-away bucket). Each trial is first set up as a worker leaves it after epoch
1 (record, checkpoint, a steps and a traces file), directly on moto; after each mode the
rows, records and checkpoints are checked on storage. Prints the per-call p50/p95/max,
how many calls took longer than Tune's warning threshold (``warn_if_slow``, 0.5 s unless
``TUNE_WARN_THRESHOLD_S``), the flush time and the requests the proxy saw.

    python benchmarks/driver_writes.py --trials 200 --latency 0.2
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import sys
import threading
import time
import uuid
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_HOP = {"connection", "keep-alive", "transfer-encoding", "expect", "content-length"}


class LatencyProxy:
    """A threaded HTTP proxy on loopback: each request waits ``delay`` s, then goes to
    ``upstream`` (host, port) unchanged (its ``Host`` header too, which S3 signatures cover)."""

    def __init__(self, upstream: tuple[str, int], delay: float) -> None:
        self.requests: Counter[str] = Counter()  # by HTTP method
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _body(self) -> bytes | None:
                """The request's body, its HTTP chunked framing undone (the AWS SDK streams
                uploads as ``Transfer-Encoding: chunked``)."""
                if "chunked" not in self.headers.get("Transfer-Encoding", ""):
                    n = int(self.headers.get("Content-Length") or 0)
                    return self.rfile.read(n) if n else None
                parts = []
                while True:
                    size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                    if size == 0:
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()

            def _forward(self) -> None:
                body = self._body()
                proxy.requests[self.command] += 1
                time.sleep(delay)
                conn = http.client.HTTPConnection(*upstream, timeout=120)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    if body is not None:
                        headers["Content-Length"] = str(len(body))
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                self.send_response_only(resp.status, resp.reason)
                for k, v in resp.getheaders():
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                length = resp.getheader("Content-Length", "0") if self.command == "HEAD" else len(data)
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _forward  # noqa: N815

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()


def _setup(store, sweep: str, n: int) -> list[SimpleNamespace]:
    """n trials as a worker leaves them after epoch 1, written straight to moto."""
    prov = {"torch_version": "t", "ray_version": "r", "git_sha": "g", "device": "cpu", "host": "h"}

    def one(i: int) -> SimpleNamespace:
        tid = f"t{i:04d}"
        params = {"alpha_x": 0.05 + i * 1e-3}
        store.write_record(sweep, tid, {"params": params, "trial_id": tid, "state": "running", **prov})
        store.save_checkpoint(sweep, tid, os.urandom(64 * 1024))
        store.write(
            "steps",
            sweep,
            f"{tid}-e0001",
            [{"trial_id": tid, "step": s, "phase": "train"} for s in range(20)],
        )
        store.write(
            "traces", sweep, f"{tid}-e0001", [{"trial_id": tid, "step": 0, "iteration": k} for k in range(30)]
        )
        return SimpleNamespace(trial_id=f"tune_{i}", config={**params, "trial_id": tid})

    return [one(i) for i in range(n)]  # one at a time: moto races on parallel PUTs of one key


def _run(mode: str, n: int, bucket: str, direct, proxy: LatencyProxy) -> dict[str, Any]:
    from ray.tune.schedulers import TrialScheduler
    from ray.tune.utils.util import warn_if_slow

    from orchestrator.driver.background_writes import DriverWrites
    from orchestrator.driver.search import Dim
    from orchestrator.driver.sweep import SweepConfig
    from orchestrator.driver.tuner import pruning_asha as _pruning_asha
    from orchestrator.storage import ResultStore

    sweep = f"bench-{mode}"
    cfg = SweepConfig(
        name=sweep,
        space={"alpha_x": Dim("loguniform", 0.01, 2.0)},
        metrics=("robust_acc",),
        modes=("max",),
        fixed={"task": "adversarial", "epochs": 4},
        data={"dataset": "digits"},
        storage=bucket,
    )
    setup = ResultStore(bucket)
    setup.fs = direct  # no latency for the set-up and the checks
    trials = _setup(setup, sweep, n + 1)
    store = ResultStore(bucket)  # through the proxy (AWS_ENDPOINT_URL)
    writes = DriverWrites() if mode == "after" else None
    asha = _pruning_asha(store, cfg, writes)(
        metric="robust_acc", mode="max", time_attr="epoch", max_t=4, grace_period=1, reduction_factor=2
    )
    requests0 = Counter(proxy.requests)
    took, stops = [], 0
    t_all = time.perf_counter()
    for i, trial in enumerate(trials):
        asha.on_trial_add(None, trial)
        t0 = time.perf_counter()
        action = asha.on_trial_result(None, trial, {"epoch": 1, "robust_acc": 0.99 - i * 1e-4})
        took.append(time.perf_counter() - t0)
        stops += action == TrialScheduler.STOP
    calls_s = time.perf_counter() - t_all
    t0 = time.perf_counter()
    if writes is not None:
        writes.close()
    flush_s = time.perf_counter() - t0
    rows = setup.read("trials", sweep)
    pruned = set(rows["trial_id"][rows["status"] == "pruned"]) if len(rows) else set()
    expected = {t.config["trial_id"] for t in trials[1:]}
    assert stops == n and pruned == expected, (stops, len(pruned))
    assert set(setup.pending(sweep)) == {trials[0].config["trial_id"]}
    assert setup.keys("checkpoints", sweep) == [trials[0].config["trial_id"]]
    took = took[1:]  # the prune decisions (the first call only records the trial)
    q = statistics.quantiles(took, n=20, method="inclusive")
    threshold = warn_if_slow.DEFAULT_THRESHOLD
    return {
        "mode": mode,
        "decisions": n,
        "p50_s": statistics.median(took),
        "p95_s": q[18],
        "max_s": max(took),
        "over_tune_threshold": sum(t > threshold for t in took),
        "tune_threshold_s": threshold,
        "calls_total_s": calls_s,
        "flush_s": flush_s if writes is not None else None,
        "requests": dict(proxy.requests - requests0),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=200, help="prune decisions per mode")
    ap.add_argument("--latency", type=float, default=0.2, help="seconds added to every S3 request")
    ap.add_argument("--modes", default="before,after")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args(argv)

    import logging

    import pyarrow.fs as pafs
    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log

    moto = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    moto.start()
    host, port = moto.get_host_and_port()
    proxy = LatencyProxy((host, port), args.latency)
    os.environ.update(
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL=proxy.endpoint,
        AWS_EC2_METADATA_DISABLED="true",
    )
    direct = pafs.S3FileSystem(
        endpoint_override=f"http://{host}:{port}", allow_bucket_creation=True, region="us-east-1"
    )
    name = f"b-{uuid.uuid4().hex[:12]}"
    direct.create_dir(name)
    print(f"moto S3 on http://{host}:{port}, behind a {args.latency * 1000:.0f} ms proxy at {proxy.endpoint}")
    out = []
    try:
        for mode in args.modes.split(","):
            r = _run(mode, args.trials, f"s3://{name}/jiio", direct, proxy)
            out.append(r)
            flush = f", flush {r['flush_s']:.1f} s" if r["flush_s"] is not None else ""
            n = r["decisions"]
            by_method = ", ".join(f"{k} {v / n:.1f}" for k, v in sorted(r["requests"].items()))
            print(
                f"{mode}: {r['decisions']} prune decisions; on_trial_result p50 {r['p50_s']:.4f} s, "
                f"p95 {r['p95_s']:.4f} s, max {r['max_s']:.4f} s; {r['over_tune_threshold']} over Tune's "
                f"{r['tune_threshold_s']} s warning threshold; calls {r['calls_total_s']:.1f} s in all"
                f"{flush}; "
                f"S3 requests per pruned row: {sum(r['requests'].values()) / r['decisions']:.1f} "
                f"({by_method})",
                flush=True,
            )
    finally:
        proxy.stop()
        moto.stop()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": out}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
