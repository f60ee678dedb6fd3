"""A sweep submitted to an existing Ray cluster through the Ray Jobs API (``ray job submit``).

Any Ray cluster, whoever started it (KubeRay, a hand-started ``ray start``, a managed
service), takes a sweep without this project's cluster configs: ``ray job submit
--working-dir .`` zips the checkout, uploads it to the cluster and runs the entrypoint on
the head in an unpacked copy of it, and every trial's worker gets the same copy. Two
things can go wrong that this file checks:

- the package: the checkout holds a multi-GB ``.venv``; Ray refuses packages of 512 MiB
  or more (``GCS_STORAGE_MAX_SIZE``, the gRPC message limit) and warns from 256 MiB, so
  :data:`EXCLUDES` must leave it out (Ray 2.60 also skips ``.git``, ``.venv``, ``venv``
  and ``__pycache__`` and what ``.gitignore`` lists; the excludes hold for a client that
  does not). The fast test zips this checkout as Ray does with the excludes alone.
- the storage: the entrypoint's working directory is Ray's unpacked copy, under
  ``<temp dir>/session_*/runtime_resources/working_dir_files/_ray_pkg_<hash>/``, which
  Ray deletes once no job uses the package and its cache is over
  ``RAY_RUNTIME_ENV_WORKING_DIR_CACHE_SIZE_GB`` (10 by default), and with the node. A
  relative ``--storage`` (the default ``results``) lands there.

The slow test runs the path end to end on this one machine inside private PID, network
and mount namespaces (``ray stop`` ends every Ray process a user can signal; see
``tests/cluster/launcher_harness.py``): a head ``ray start --head --num-cpus=0`` with the
dashboard and token authentication, a second node ``ray start --address=...`` with 2
CPUs (so every trial runs on it), ``ray job submit`` from the repository root of a
2-trial smoke sweep whose ``--storage`` is an absolute directory both nodes see, then a
1-trial sweep with the default ``--storage``, which the sweep refuses (it would land in
the package copy). Run it with
``pytest -m slow tests/cluster/test_jobs_api.py -s`` (needs root and ``unshare``; prints
each step's time).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import traceback
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What `ray job submit --working-dir .` must leave out (cluster/README.md shows the same
# list). gitignore syntax relative to the working dir: an unanchored "analysis/" would
# also drop the package orchestrator/analysis/, hence the leading slashes.
EXCLUDES = [
    ".git",
    ".venv",
    "venv",
    "__pycache__",
    "*.egg-info",
    ".pytest_cache",
    ".ruff_cache",
    ".hypothesis",
    "/results/",
    "/models/",
    "/analysis/",
    "/build/",
    "/dist/",
]
PACKAGE_LIMIT_MIB = 512  # Ray 2.60: GCS_STORAGE_MAX_SIZE, the gRPC message limit
SMALL_MIB = 20  # what this checkout's package must stay under (about 1 MiB now)
DASHBOARD = "http://127.0.0.1:8265"
SWEEP = "jobs-api"
DEFAULT_SWEEP = "jobs-api-default"
TIMEOUT_S = 900  # measured: about 3 minutes on 2 shared cores


def submit_command(address: str, submission_id: str, env_vars: dict[str, str], *sweep: str) -> list[str]:
    """``ray job submit`` of ``sweeps/alpha.py`` from the repository root, as cluster/README.md shows it."""
    runtime_env = {"excludes": EXCLUDES, "env_vars": env_vars}
    return [
        "ray",
        "job",
        "submit",
        "--address",
        address,
        "--submission-id",
        submission_id,
        "--working-dir",
        ".",
        "--runtime-env-json",
        json.dumps(runtime_env),
        "--",
        "python",
        "sweeps/alpha.py",
        *sweep,
    ]


# --- fast: the package Ray would upload from this checkout -------------------------------
def _tracked_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=False, timeout=60
    ).stdout.decode()
    return [f for f in out.split("\0") if f and (ROOT / f).is_file()]


def test_working_dir_package_is_small_and_has_the_code(tmp_path):
    """Zip the checkout as ``ray job submit --working-dir .`` does, with :data:`EXCLUDES`
    only (no ``.gitignore``, no Ray default excludes): small, no virtualenv, and every
    tracked file the sweep imports is in it."""
    from ray._private.runtime_env.packaging import _zip_files

    target = tmp_path / "pkg.zip"
    _zip_files(str(ROOT), list(EXCLUDES), str(target), include_gitignore=False)
    size_mib = target.stat().st_size / 2**20
    names = set(zipfile.ZipFile(target).namelist())
    assert size_mib < SMALL_MIB < PACKAGE_LIMIT_MIB, f"{size_mib:.1f} MiB"
    assert not [n for n in names if n.startswith((".venv/", ".git/", "results/"))]
    code = [f for f in _tracked_files() if f.startswith(("orchestrator/", "jiio_core/", "sweeps/"))]
    assert "orchestrator/analysis/__init__.py" in code
    missing = [f for f in code if f not in names]
    assert not missing, missing


def test_readme_shows_the_tested_command_and_excludes():
    text = (ROOT / "cluster" / "README.md").read_text()
    section = text.split("## Any Ray cluster: the Jobs API and KubeRay", 1)[1]
    m = re.search(r"--runtime-env-json '(\{.*?\})'", section, re.S)
    assert m, "no --runtime-env-json '{...}' in the Jobs API section"
    shown = json.loads(re.sub(r"\\\n\s*", "", m.group(1)))
    assert shown["excludes"] == EXCLUDES
    for word in ("ray job submit", "--working-dir .", "sweeps/alpha.py", "--storage s3://"):
        assert word in section, word


# --- slow: end to end, in private namespaces ---------------------------------------------
def _missing_prerequisites() -> str | None:
    if sys.platform != "linux":
        return f"needs Linux namespaces (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root (private PID, network and mount namespaces, bind mounts)"
    for tool in ("unshare", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"missing {tool} (util-linux / iproute2)"
    if shutil.which("ray", path=os.path.dirname(sys.executable)) is None:
        return f"no `ray` command next to {sys.executable}"
    try:
        import aiohttp  # noqa: F401  (the dashboard and its job server: ray[default])
        import ray.dashboard.modules.job.sdk  # noqa: F401
    except ImportError as exc:
        return f"the Jobs API needs ray[default] (pip install -e '.[test]'): {exc}"
    probe = subprocess.run([*_unshare(), "true"], capture_output=True, text=True, timeout=60, check=False)
    if probe.returncode != 0:
        return f"unshare cannot create private namespaces here: {probe.stderr.strip()[-300:]}"
    return None


def _unshare() -> list[str]:
    return ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount"]


@pytest.fixture(scope="module")
def jobs_run(tmp_path_factory):
    why = _missing_prerequisites()
    if why:
        pytest.skip(why)
    out = tmp_path_factory.mktemp("jobs-api")
    start = time.monotonic()
    proc = subprocess.run(
        [*_unshare(), sys.executable, __file__, "--out", str(out)],
        cwd=ROOT,
        timeout=TIMEOUT_S,
        check=False,
    )
    took = time.monotonic() - start
    result = json.loads((out / "result.json").read_text()) if (out / "result.json").exists() else {}
    print(f"\nJobs API run: {took:.0f}s in all, rc={proc.returncode}")
    for step in result.get("steps", []):
        print(f"  {step['name']:<28} {step['s']:>6.1f}s  rc={step['rc']}")
    assert proc.returncode == 0 and result.get("ok"), json.dumps(result.get("errors"), indent=1)[-6000:]
    return result


@pytest.mark.slow
def test_job_runs_the_sweep_on_the_second_node(jobs_run):
    r = jobs_run
    job = r["job"]
    assert job["status"] == "SUCCEEDED", job
    assert job["working_dir"].startswith("gcs://_ray_pkg_"), job
    # The uploaded package, as the cluster holds it: small, no virtualenv, the code in it.
    assert r["workdir_mib"] < SMALL_MIB and r["workdir_has_venv"] is False, r
    assert r["workdir_has_sweep"], r
    # The driver's own lines, in the job's logs.
    assert re.search(r"^settings: storage=", job["logs"], re.M), job["logs"][-3000:]
    assert "2/2 trials finished (2 completed)" in job["logs"], job["logs"][-3000:]
    # Rows in the shared storage, from trials that ran on the node with CPUs.
    rows = r["trials"]
    assert len(rows) == 2 and {x["status"] for x in rows} == {"completed"}, rows
    assert {x["node_id"] for x in rows} == {r["worker_node_id"]}, (rows, r["nodes"])
    assert {x["git_sha"] for x in rows} == {r["git_sha"]}, rows
    # The Jobs API answers no one without the cluster's token.
    assert r["unauthenticated_status"] in (401, 403), r["unauthenticated_status"]


@pytest.mark.slow
def test_default_storage_under_a_job_is_refused_before_any_trial(jobs_run):
    """``--storage results`` (the default) under a job would land in Ray's unpacked
    package, a temporary directory Ray deletes: the sweep refuses it in one line that
    names the copy and what to pass instead, before any trial runs."""
    d = jobs_run["default_storage"]
    assert d["status"] == "FAILED", d
    assert (
        "is relative, and this Ray job runs in Ray's temporary copy of its working_dir" in d["logs_tail"]
    ), d
    assert "/runtime_resources/working_dir_files/_ray_pkg_" in d["logs_tail"], d
    assert not d["results_path"], d  # no "Parquet results:" line: nothing ran


# --- the run inside the namespaces (this file as a script) -------------------------------
class _Run:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.logs = out / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.home = out / "home"
        self.shared = out / "shared"  # the sweep's storage: one directory both nodes see
        self.tmpdir = Path("/tmp/ray/tmp")  # short: Ray's session dir holds Unix sockets
        self.result: dict[str, Any] = {"steps": [], "ok": False}
        self.t0 = time.monotonic()
        self.n = 0

    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)

    def save(self) -> None:
        (self.out / "result.json").write_text(json.dumps(self.result, indent=1, default=str))

    def run(self, name: str, cmd: list[str], timeout: float, check: bool = True) -> dict[str, Any]:
        """Run ``cmd`` from the repository root, as a user runs ``ray``; log and time it."""
        self.n += 1
        log = self.logs / f"{self.n:02d}-{name}.log"
        self.say(f"{name}: {shlex.join(cmd)}")
        start = time.monotonic()
        with open(log, "w") as f:
            try:
                rc: int | str = subprocess.run(
                    cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        step = {"name": name, "cmd": shlex.join(cmd), "rc": rc, "s": round(time.monotonic() - start, 1)}
        step["log"] = str(log)
        self.result["steps"].append(step)
        self.save()
        self.say(f"{name}: rc={rc} in {step['s']}s")
        if check and rc != 0:
            raise RuntimeError(f"{name} failed (rc={rc}):\n{log.read_text(errors='replace')[-4000:]}")
        return step

    def isolate(self) -> None:
        """Loopback up; a private /tmp/ray (Ray's sessions, ``ray_current_cluster``), $HOME
        (the auth token) and TMPDIR."""
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        private = self.out / "tmp_ray"
        private.mkdir(exist_ok=True)
        Path("/tmp/ray").mkdir(parents=True, exist_ok=True)  # mount point
        subprocess.run(["mount", "--bind", str(private), "/tmp/ray"], check=True)
        self.tmpdir.mkdir(exist_ok=True)
        self.home.mkdir(exist_ok=True)
        self.shared.mkdir(exist_ok=True)
        venv_bin = os.path.dirname(sys.executable)
        for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "PYTHONPATH", "VIRTUAL_ENV", "RAY_AUTH_TOKEN"):
            os.environ.pop(k, None)
        os.environ.update(
            HOME=str(self.home),
            TMPDIR=str(self.tmpdir),
            PATH=f"{venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            RAY_USAGE_STATS_ENABLED="0",
            RAY_AUTH_MODE="token",  # as a secured cluster: every request carries ~/.ray/auth_token
        )

    def nodes(self) -> list[dict[str, Any]]:
        from ray.util.state import list_nodes

        return [
            {
                "node_id": n.node_id,
                "is_head": n.is_head_node,
                "state": n.state,
                "resources": n.resources_total,
            }
            for n in list_nodes(address=DASHBOARD)
        ]

    def wait_nodes(self, count: int, timeout: float = 120) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            try:
                alive = [n for n in self.nodes() if n["state"] == "ALIVE"]
                if len(alive) >= count:
                    return alive
                last = alive
            except Exception as exc:  # the dashboard is still starting
                last = exc
            time.sleep(2)
        raise RuntimeError(f"{count} Ray nodes not alive after {timeout}s: {last}")

    def job(self, submission_id: str) -> dict[str, Any]:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(DASHBOARD)
        info = client.get_job_info(submission_id)
        return {
            "status": str(info.status.value if hasattr(info.status, "value") else info.status),
            "working_dir": (info.runtime_env or {}).get("working_dir", ""),
            "driver_node_id": getattr(info, "driver_node_id", None),
            "logs": client.get_job_logs(submission_id),
        }

    def unauthenticated(self) -> int:
        try:
            with urllib.request.urlopen(f"{DASHBOARD}/api/jobs/", timeout=30) as resp:
                return resp.status
        except urllib.error.HTTPError as exc:
            return exc.code

    def trials(self, sweep: str) -> list[dict[str, Any]]:
        sys.path.insert(0, str(ROOT))
        from orchestrator.storage import ResultStore

        frame = ResultStore(str(self.shared)).read("trials", sweep)
        cols = [c for c in ("trial_id", "status", "node_id", "host", "git_sha") if c in frame.columns]
        return frame[cols].to_dict("records")

    def main(self) -> None:
        self.isolate()
        ray = ["ray"]
        self.run("auth-token", [*ray, "get-auth-token", "--generate"], 60)
        self.run(
            "start-head",
            [
                *ray,
                "start",
                "--head",
                "--port=6379",
                "--num-cpus=0",
                "--num-gpus=0",
                "--include-dashboard=true",
                "--dashboard-host=127.0.0.1",
                "--dashboard-port=8265",
                "--disable-usage-stats",
            ],
            180,
        )
        self.run(
            "start-worker",
            [
                *ray,
                "start",
                "--address=127.0.0.1:6379",
                "--num-cpus=2",
                "--num-gpus=0",
                # Its own temp dir, as its own disk on another machine: nodes of one machine
                # sharing one would unpack the job's package into the same directory, the
                # second unpack replacing the directory the driver runs in.
                "--temp-dir=/tmp/ray/w",
                "--disable-usage-stats",
            ],
            180,
        )
        nodes = self.wait_nodes(2)
        self.result["nodes"] = nodes
        self.result["worker_node_id"] = next(n["node_id"] for n in nodes if not n["is_head"])
        self.result["unauthenticated_status"] = self.unauthenticated()
        sha = subprocess.run(
            ["git", "rev-parse", "--short=12", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=False
        ).stdout.strip()
        self.result["git_sha"] = sha or "unknown"
        env = {"JIIO_GIT_SHA": self.result["git_sha"]}

        # 1. The sweep as a user submits it, its storage an absolute directory both nodes see.
        step = self.run(
            "job-submit",
            submit_command(
                DASHBOARD,
                "jiio-jobs-api",
                env,
                "--smoke",
                "--trials",
                "2",
                "--storage",
                str(self.shared),
                "--name",
                SWEEP,
            ),
            420,
        )
        self.result["submit_s"] = step["s"]
        job = self.job("jiio-jobs-api")
        self.result["job"] = job
        self.result["trials"] = self.trials(SWEEP)
        self.save()
        # The copy the job ran in (still cached while this node is up, unless evicted).
        pkg = job["working_dir"].removeprefix("gcs://").removesuffix(".zip")
        copies = list(Path("/tmp/ray").glob(f"**/runtime_resources/working_dir_files/{pkg}"))
        self.result["workdir_copies"] = [str(c) for c in copies]

        # 2. The same with the default --storage (results), to see where the rows land.
        step = self.run(
            "job-submit-default-storage",
            submit_command(
                DASHBOARD, "jiio-jobs-api-default", env, "--smoke", "--trials", "1", "--name", DEFAULT_SWEEP
            ),
            420,
            check=False,
        )
        job2 = self.job("jiio-jobs-api-default")
        m = re.search(r"Parquet results: (\S+) \(trials/", job2["logs"])
        self.result["default_storage"] = {
            "status": job2["status"],
            "results_path": m.group(1) if m else "",
            "submit_s": step["s"],
            "logs_tail": job2["logs"][-2000:],
        }
        # The package both jobs ran in, as the cluster holds it: size, and no venv in it.
        self.result.update(self.measure_package(pkg))
        self.save()
        self.run("ray-stop", [*ray, "stop"], 120, check=False)
        self.result["ok"] = True
        self.save()

    def measure_package(self, pkg: str) -> dict[str, Any]:
        """Size of the job's working dir, from the package the cluster holds (its GCS KV)."""
        code = (
            "import io, json, sys, zipfile, ray\n"
            "from ray.experimental.internal_kv import _internal_kv_get\n"
            "ray.init(address='auto', logging_level='ERROR')\n"
            f"data = _internal_kv_get('gcs://{pkg}.zip'.encode())\n"
            "names = zipfile.ZipFile(io.BytesIO(data)).namelist() if data else []\n"
            "print(json.dumps({'zip_bytes': len(data or b''), 'names': names}))\n"
        )
        got = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
        )
        try:
            info = json.loads(got.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            return {
                "workdir_mib": float("inf"),
                "workdir_has_venv": None,
                "measure_error": got.stderr[-2000:],
            }
        names = info["names"]
        return {
            "workdir_mib": info["zip_bytes"] / 2**20,
            "workdir_files": len(names),
            "workdir_has_venv": any(n.startswith(".venv/") for n in names),
            "workdir_has_sweep": "sweeps/alpha.py" in names,
        }


def _as_init(fn) -> int:
    """As PID 1 of a PID namespace, reap orphans (Ray daemonizes) and run ``fn`` in a child."""
    child = os.fork()
    if child == 0:
        os._exit(fn())
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))
    while True:
        pid, status = os.wait()
        if pid == child:
            return os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="the Jobs API run, inside private namespaces")
    ap.add_argument("--out", required=True, type=Path)
    args = ap.parse_args(argv)
    if os.getpid() != 1:
        print("run me as the first process of: " + shlex.join(_unshare()), file=sys.stderr)
        return 2

    def work() -> int:
        run = _Run(args.out.resolve())
        try:
            run.main()
        except Exception as exc:
            run.result.setdefault("errors", []).append(f"{exc}\n{traceback.format_exc()}")
            run.save()
            run.say(f"FAILED: {exc}")
            return 1
        return 0

    return _as_init(work)


if __name__ == "__main__":
    sys.exit(main())
