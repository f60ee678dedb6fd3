"""Run the Ray cluster launcher path of ``cluster/gpu.yaml`` end to end on this one machine.

``tests/cluster/test_launcher.py`` starts this module as the first process of private
Linux namespaces::

    unshare --pid --fork --kill-child --mount-proc --net --mount \\
        python tests/cluster/launcher_harness.py --out DIR

and reads what it leaves in ``DIR`` (``result.json``, ``tables/*.parquet``, ``logs/``).
Inside, as a user would on AWS, with these stand-ins:

- the cloud: Ray's ``local`` provider with ``head_ip: 127.0.0.1``, reached over real ssh
  whose other end is ``sshd -i`` run per connection as ``auth.ssh_proxy_command`` (no
  daemon, no port);
- the GPU workers: the head's own autoscaler runs Ray's fake multi-node provider, whose
  nodes are Ray processes on this machine advertising ``gpu.yaml``'s worker resources
  (``{CPU: 4, GPU: 1}``); they never run ``file_mounts`` or setup commands;
- the bucket: moto's S3 server on loopback; every login shell the launcher opens gets
  ``AWS_ENDPOINT_URL`` and test credentials from the private ``~/.bashrc``, so the head,
  the sweep driver and the trials on the fake workers all reach it;
- the machine: a private network (loopback only), private ``/tmp/ray``, ``$HOME`` (sshd
  logs in to the passwd home, so a bind mount over it), ``$TMPDIR`` and ssh control
  sockets, because ``ray stop`` (run by ``ray up`` and ``ray down``) kills every Ray
  process it can see, the launcher only knows ssh port 22, and a stale Ray session or
  auth token of another run would confuse this one. (A ``ray stop`` run *outside* still
  sees, and kills, this run's processes: the parent PID namespace sees its children.)

Ray 2.60 facts this relies on: the local provider rejects ``available_node_types``; the
fake provider cannot be used through ``ray up`` itself (its defaults file is missing from
the wheel, and ``ray submit``/``down`` need a command runner it lacks), but works as the
head's autoscaler; an ``external`` provider config gets no defaults; ``ray up`` exports
``RAY_enable_autoscaler_v2=1`` (the default since 2.50), so this exercises autoscaler v2,
as on AWS; Ray's session directory follows ``$TMPDIR`` and holds Unix sockets (108-byte
path limit).

The steps, each timed: ``ray up`` (and, within it, Ray's hashing of ``file_mounts``);
``ray submit CONFIG sweeps/alpha.py`` with no arguments, the default sweep (6 paper-size
trials under the derived config's ``trial_limits``) taking its storage, GPUs per trial and
model size from the cluster config's ``metadata``, its analysis left in the bucket; a
smoke sweep during which one fake GPU worker is killed once a checkpoint exists; ``ray
down``; ``ray up`` of a fresh head; ``ray submit ... -- --resume --trials 7`` of the
default sweep from the bucket alone; ``ray down``.
This module only drives and records; the assertions are in the test.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import getpass
import hashlib
import json
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
GPU_YAML = ROOT / "cluster" / "gpu.yaml"
SCRIPT = "sweeps/alpha.py"  # relative to ROOT, where every `ray` command runs (file_mounts are relative)
DEFAULT_SWEEP = "alpha-adversarial-digits"  # the name `sweeps/alpha.py` gives a sweep without flags
DEFAULT_TRIALS = 6
# metadata.jiio.trial_limits of the derived config: paper-size trials (gpu.yaml's model_size),
# each epoch cut to 2 training steps and its evaluation to 1 batch, so the default sweep runs
# unchanged otherwise (TaskConfig's 2 epochs, ASHA over them) in minutes on CPUs.
TRIAL_LIMITS = {"max_steps_per_epoch": 2, "eval_batches": 1}
SSHD = "/usr/sbin/sshd"
BUCKET = "jiio-launcher-test"
FAKE_PROVIDER = "ray.autoscaler._private.fake_multi_node.node_provider.FakeMultiNodeProvider"
# The fake provider tags the head with these (FAKE_HEAD_NODE_ID / FAKE_HEAD_NODE_TYPE in
# ray.autoscaler._private.fake_multi_node.node_provider); the head's Ray must report the
# same id (RAY_CLOUD_INSTANCE_ID) so the autoscaler matches it to its node.
FAKE_HEAD_ID = "fffffffffffffffffffffffffffffffffffffffffffffffffff00000"
FAKE_HEAD_TYPE = "ray.head.default"
FAKE_CONFIG_REMOTE = "~/fake_autoscale.yaml"
# Fake GPU nodes are Ray processes on this 2-core machine: at most this many per type.
FAKE_MAX_PER_TYPE = 2
# Every top-level key of a cluster config: the `external` provider gets no defaults, and
# the head's monitor dies on the first one missing (GPU trials then pend forever).
_EMPTY_KEYS: dict[str, Any] = {
    "docker": {},
    "auth": {},
    "file_mounts": {},
    "cluster_synced_files": [],
    "file_mounts_sync_continuously": False,
    "rsync_exclude": [],
    "rsync_filter": [],
    "initialization_commands": [],
    "setup_commands": [],
    "head_setup_commands": [],
    "worker_setup_commands": [],
    "head_start_ray_commands": [],
    "worker_start_ray_commands": [],
}


# --- prerequisites ---------------------------------------------------------------------
def missing_prerequisites() -> str | None:
    """Why this machine cannot run the launcher test, or None. Cheap; starts nothing but a
    trivial ``unshare`` probe (namespaces can be forbidden even to root in a container)."""
    if sys.platform != "linux":
        return f"needs Linux namespaces (this is {sys.platform})"
    if os.geteuid() != 0:
        return "needs root: private PID/network/mount namespaces, bind mounts and sshd -i as root"
    tools = {
        "unshare": "util-linux",
        "ip": "iproute2",
        "ssh": "openssh-client",
        "ssh-keygen": "openssh-client",
        "rsync": "rsync",
    }
    missing = [f"{t} ({pkg})" for t, pkg in tools.items() if shutil.which(t) is None]
    if not os.access(SSHD, os.X_OK):
        missing.append(f"{SSHD} (openssh-server)")
    if missing:
        return "missing " + ", ".join(missing) + ": apt-get install -y openssh-server rsync iproute2"
    if shutil.which("ray", path=os.path.dirname(sys.executable)) is None:
        return f"no `ray` command next to {sys.executable}"
    try:
        import moto.server  # noqa: F401
    except ImportError:
        return "moto[server] is not installed (pip install -e '.[test]')"
    probe = subprocess.run(
        [*unshare_command(), "true"], capture_output=True, text=True, timeout=60, check=False
    )
    if probe.returncode != 0:
        return f"unshare cannot create private namespaces here: {probe.stderr.strip()[-300:]}"
    return None


def unshare_command() -> list[str]:
    return ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--net", "--mount"]


# --- the derived configs ---------------------------------------------------------------
def load_source(path: Path = GPU_YAML) -> dict[str, Any]:
    with open(path) as f:
        return yaml.safe_load(f)


def offline_commands(commands: list[str]) -> tuple[list[str], list[dict[str, Any]]]:
    """``commands`` with those that need a package index replaced by offline equivalents
    that check, or bring about, the same end state with this machine's venv; the second
    value says which were replaced, by what, and why.

    - ``pip install -U pip``: upgrades pip from PyPI; replaced by ``python -m pip --version``
      (pip is there).
    - ``pip install ... "ray[...]==V"``: replaced by an import of ``ray`` and ``ray.tune``
      asserting version V (the launcher and the cluster must match; the extras are not
      checked: this venv lacks some of ``ray[default]``'s pins).
    - ``pip install -e DIR``: replaced by appending ``export PYTHONPATH="DIR..."`` to
      ``~/.bashrc``, so that every later login shell (the sweep driver, ``ray start`` and
      hence every Ray worker, fake nodes included) imports the code ``file_mounts`` synced
      to DIR, ahead of this venv's own editable install of the working tree; then an import
      check that ``orchestrator`` comes from DIR.
    - any other ``pip install ARGS``: ``pip install --no-index --dry-run ARGS`` (proves the
      requirement is already satisfied here, changes nothing).

    Everything else is kept verbatim, the venv bootstrap included: the private home holds
    ``~/jiio-venv`` as a link to this venv (an image where it exists already), so that
    command skips creating one, and ``gpu.yaml``'s own line puts it first on ``PATH``.
    """
    out: list[str] = []
    replaced: list[dict[str, Any]] = []
    for cmd in commands:
        flat = " ".join(cmd.split())
        if not re.search(r"\bpip3? install\b", flat):
            out.append(cmd)
            continue
        if re.search(r"\bpip3? install -U pip\b", flat):
            new, why = ["python -m pip --version"], "upgrades pip from PyPI (no network in the namespace)"
        elif m := re.search(r"""["']?ray(?:\[[^\]]*\])?==([0-9][^"'\s]*)""", flat):
            version = m.group(1)
            new = [
                'python -c "import ray, ray.tune; '
                f"assert ray.__version__ == '{version}', 'ray ' + ray.__version__ + ' is not {version}'\""
            ]
            why = f"installs ray {version} from PyPI; checked instead: this venv's ray is that version"
        elif m := re.search(r"\bpip3? install (?:\S+ )*-e\s+(\S+)", flat):
            target = m.group(1).replace("~", "$HOME", 1) if m.group(1).startswith("~") else m.group(1)
            line = f'export PYTHONPATH="{target}${{PYTHONPATH:+:$PYTHONPATH}}"'
            new = [
                f"grep -qsF {shlex.quote(line)} ~/.bashrc || echo {shlex.quote(line)} >> ~/.bashrc",
                'python -c "import os, orchestrator; p = os.path.realpath(orchestrator.__file__); '
                f"d = os.path.realpath(os.path.expandvars('{target}')); "
                "assert p.startswith(d + os.sep), 'orchestrator imported from ' + p\"",
            ]
            why = (
                "installs the project and its dependencies from PyPI; instead the synced copy is put on "
                "PYTHONPATH (in ~/.bashrc, read by every later login shell) over this venv's packages"
            )
        else:
            new = [re.sub(r"\b(pip3? install)\b", r"\1 --no-index --dry-run", cmd, count=1)]
            why = "downloads from PyPI; a dry run without an index proves it is already satisfied here"
        out.extend(new)
        replaced.append({"command": flat, "replaced_by": new, "why": why})
    return out, replaced


def head_start_commands(commands: list[str], head_id: str = FAKE_HEAD_ID) -> list[str]:
    """``gpu.yaml``'s head start, with the head's autoscaler on the fake provider: ``ray
    start`` gets ``RAY_FAKE_CLUSTER=1 RAY_CLOUD_INSTANCE_ID=<head id>``, reads
    ``~/fake_autoscale.yaml`` instead of ``~/ray_bootstrap_config.yaml``, and
    ``--num-gpus=0`` (the m5 head has none, even on a machine with GPUs)."""
    out = []
    started = False
    for cmd in commands:
        if re.search(r"\bray start\b", cmd):
            new, n = re.subn(
                r"--autoscaling-config[= ]\S+", f"--autoscaling-config={FAKE_CONFIG_REMOTE}", cmd
            )
            if n != 1:
                raise ValueError(f"head start command without one --autoscaling-config: {cmd!r}")
            new = re.sub(
                r"\bray start\b",
                f"RAY_FAKE_CLUSTER=1 RAY_CLOUD_INSTANCE_ID={head_id} ray start",
                new,
                count=1,
            )
            if "--num-gpus" not in new:
                new = new.rstrip() + " --num-gpus=0"
            cmd, started = new, True
        out.append(cmd)
    if not started:
        raise ValueError("no `ray start` in head_start_ray_commands")
    return out


def fake_autoscale_config(source: dict[str, Any], cluster_name: str, head_id: str = FAKE_HEAD_ID) -> dict:
    """The head's autoscaling config: ``gpu.yaml``'s node types and scaling settings on
    Ray's fake multi-node provider (every top-level key written: no defaults for it)."""
    types = source["available_node_types"]
    head_type = source["head_node_type"]
    nodes: dict[str, Any] = {
        FAKE_HEAD_TYPE: {
            "resources": dict(types[head_type].get("resources", {})),
            "node_config": {},
            "max_workers": 0,
        },
    }
    for name, spec in types.items():
        if name == head_type:
            continue
        nodes[name] = {
            "resources": dict(spec["resources"]),
            "node_config": {},
            "min_workers": int(spec.get("min_workers", 0)),
            "max_workers": min(int(spec.get("max_workers", 0)), FAKE_MAX_PER_TYPE),
        }
        if "priority" in spec:  # autoscaler v2's tie-break between node types
            nodes[name]["priority"] = spec["priority"]
    return {
        **copy.deepcopy(_EMPTY_KEYS),
        "cluster_name": cluster_name,
        "max_workers": int(source.get("max_workers", 2)),
        "upscaling_speed": source.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": source.get("idle_timeout_minutes", 5),
        "provider": {
            "type": "external",
            "module": FAKE_PROVIDER,
            "use_node_id_as_ip": True,
            "disable_node_updaters": True,
            "disable_launch_config_check": True,
            "launch_multiple": True,
            "head_node_id": head_id,
        },
        "available_node_types": nodes,
        "head_node_type": FAKE_HEAD_TYPE,
    }


def derive_config(
    source: dict[str, Any],
    *,
    cluster_name: str,
    ssh_user: str,
    ssh_key: str,
    proxy_command: str,
    fake_config_local: str,
    storage: str,
    gpus_per_trial: float = 0.25,
    trial_limits: dict[str, int] | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ``local``-provider config derived from ``source`` (``cluster/gpu.yaml``), and the
    list of replaced commands (see :func:`offline_commands`).

    Kept from ``source``: ``file_mounts`` (plus the fake autoscaling config),
    ``cluster_synced_files``, ``file_mounts_sync_continuously``, ``rsync_exclude``,
    ``rsync_filter``, ``initialization_commands``, ``docker``; ``setup_commands`` and
    ``head_setup_commands`` with network commands replaced; ``head_start_ray_commands`` as
    :func:`head_start_commands`; ``worker_start_ray_commands`` (never run: the local
    provider has no worker IPs). ``metadata.jiio`` is the source's with the moto bucket as
    ``storage``, ``gpus_per_trial`` and, if given, ``trial_limits`` (``model_size: paper``
    and ``data_root`` kept: digits reads no files; the limits make paper-size trials short
    enough for a CPU). Replaced: ``provider`` (local, 127.0.0.1, no worker IPs; a
    local cluster's max_workers is 0), ``auth`` (this user, a generated key, sshd -i).
    Dropped: ``available_node_types`` / ``head_node_type`` (the local provider rejects
    them; they move to :func:`fake_autoscale_config`) and ``worker_setup_commands`` (fake
    nodes run no setup; they would need nvidia-smi and a CUDA torch anyway).
    """
    setup, replaced = offline_commands(list(source.get("setup_commands", [])))
    head_setup, replaced_head = offline_commands(list(source.get("head_setup_commands", [])))
    for r in replaced_head:
        r["list"] = "head_setup_commands"
    for r in replaced:
        r["list"] = "setup_commands"
    meta = copy.deepcopy(source.get("metadata") or {})
    jiio = dict(meta.get("jiio") or {})
    jiio.update(storage=storage, gpus_per_trial=gpus_per_trial)
    if trial_limits:
        jiio["trial_limits"] = dict(trial_limits)
    meta["jiio"] = jiio
    cfg: dict[str, Any] = {
        "cluster_name": cluster_name,
        "max_workers": 0,
        "upscaling_speed": source.get("upscaling_speed", 1.0),
        "idle_timeout_minutes": source.get("idle_timeout_minutes", 5),
        "docker": copy.deepcopy(source.get("docker", {})),
        "provider": {"type": "local", "head_ip": "127.0.0.1", "worker_ips": []},
        "auth": {"ssh_user": ssh_user, "ssh_private_key": ssh_key, "ssh_proxy_command": proxy_command},
        "file_mounts": {**source.get("file_mounts", {}), FAKE_CONFIG_REMOTE: fake_config_local},
        "cluster_synced_files": list(source.get("cluster_synced_files", [])),
        "file_mounts_sync_continuously": bool(source.get("file_mounts_sync_continuously", False)),
        "rsync_exclude": list(source.get("rsync_exclude", [])),
        "rsync_filter": list(source.get("rsync_filter", [])),
        "initialization_commands": list(source.get("initialization_commands", [])),
        "setup_commands": setup,
        "head_setup_commands": head_setup,
        "worker_setup_commands": [],
        "head_start_ray_commands": head_start_commands(list(source["head_start_ray_commands"])),
        "worker_start_ray_commands": list(source.get("worker_start_ray_commands", [])),
        "metadata": meta,
    }
    return cfg, replaced + replaced_head


# --- inside the namespaces ---------------------------------------------------------------
class Harness:
    def __init__(self, out: Path) -> None:
        self.out = out
        self.work = out / "work"
        self.logs = out / "logs"
        self.tables = out / "tables"
        for d in (self.work, self.logs, self.tables):
            d.mkdir(parents=True, exist_ok=True)
        self.result: dict[str, Any] = {"times": {}, "steps": [], "ok": False}
        self.t0 = time.monotonic()
        self.n = 0
        self.venv_bin = Path(sys.executable).parent
        self.user = getpass.getuser()
        self.home = Path(pwd.getpwnam(self.user).pw_dir)  # where sshd logs this user in
        self.config = self.work / "cluster.yaml"
        self.source = GPU_YAML
        self.storage = f"s3://{BUCKET}/jiio"
        self.endpoint = ""
        # Private TMPDIR inside the private /tmp/ray, short: Ray's session directory follows
        # TMPDIR and holds Unix sockets, whose paths must stay under 108 bytes.
        self.tmpdir = Path("/tmp/ray/tmp")
        self.keep: set[str] = set()  # top-level names in the private home bound from the real one

    # --- bookkeeping ---
    def say(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:7.1f}s] {msg}", flush=True)

    def save(self) -> None:
        (self.out / "result.json").write_text(json.dumps(self.result, indent=2, default=str))

    def run(self, name: str, cmd: list[str], timeout: float, check: bool = True) -> dict[str, Any]:
        """Run ``cmd`` from the repository root (as a user runs ``ray``), log it, time it."""
        self.n += 1
        log = self.logs / f"{self.n:02d}-{name}.log"
        self.say(f"{name}: {shlex.join(cmd)}")
        start = time.monotonic()
        with open(log, "w") as f:
            try:
                rc = subprocess.run(
                    cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, timeout=timeout, check=False
                ).returncode
            except subprocess.TimeoutExpired:
                rc = "timeout"
        took = round(time.monotonic() - start, 1)
        step = {"name": name, "cmd": shlex.join(cmd), "rc": rc, "s": took, "log": str(log)}
        self.result["steps"].append(step)
        self.save()
        self.say(f"{name}: rc={rc} in {took}s")
        if check and rc != 0:
            raise RuntimeError(f"{name} failed (rc={rc}); last lines of {log}:\n{tail(log)}")
        return step

    # --- set-up ---
    def isolate(self) -> None:
        """Loopback up; private home, /tmp/ray, ssh control sockets and TMPDIR."""
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        ctl = f"/tmp/ray_ssh_{hashlib.sha256(self.user.encode()).hexdigest()[:10]}"
        home = self.work / "home"
        home.mkdir(exist_ok=True)
        # What must stay visible under the real home once a private one hides it: this
        # venv's interpreter (e.g. a pyenv base), the venv, the repository (read-only), and
        # this run's output directory (read-write). Their top-level directories are bound
        # into the private home and never wiped (see fresh_home).
        needs = [
            (sys.base_prefix, True),
            (sys.executable, True),
            (sys.prefix, True),
            (str(ROOT), True),
            (str(self.out), False),
        ]
        tops: dict[str, bool] = {}
        for path, ro in needs:
            real = os.path.realpath(path)
            if real.startswith(str(self.home) + os.sep):
                top = Path(real).relative_to(self.home).parts[0]
                tops[top] = tops.get(top, True) and ro
        for top, ro in sorted(tops.items()):
            self.keep.add(top)
            inner = home / top
            inner.mkdir(exist_ok=True)
            subprocess.run(["mount", "--bind", str(self.home / top), str(inner)], check=True)
            if ro:
                subprocess.run(["mount", "-o", "remount,bind,ro", str(inner)], check=True)
        for src, target in (
            (home, self.home),
            (self.work / "tmp_ray", Path("/tmp/ray")),
            (self.work / "ssh_ctl", Path(ctl)),
        ):
            src.mkdir(exist_ok=True)
            target.mkdir(parents=True, exist_ok=True)  # mount point (on the real filesystem)
            subprocess.run(["mount", "--rbind", str(src), str(target)], check=True)
        os.chmod(self.home, 0o700)
        self.tmpdir.mkdir(exist_ok=True)
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # sshd's privilege-separation dir
        os.environ.update(
            HOME=str(self.home),
            TMPDIR=str(self.tmpdir),
            PATH=f"{self.venv_bin}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            RAY_USAGE_STATS_ENABLED="0",
        )
        for k in ("RAY_ADDRESS", "PYTHONPATH", "VIRTUAL_ENV"):
            os.environ.pop(k, None)

    def start_sshd_auth(self) -> str:
        """Keys and an sshd config for ``sshd -i`` as the proxy command; returns the command."""
        ssh = self.work / "ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        for key in ("host_key", "id_ed25519"):
            if not (ssh / key).exists():
                subprocess.run(
                    ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(ssh / key)], check=True
                )
        shutil.copy(ssh / "id_ed25519.pub", ssh / "authorized_keys")
        os.chmod(ssh / "authorized_keys", 0o600)
        (ssh / "sshd_config").write_text(
            "\n".join(
                [
                    f"HostKey {ssh / 'host_key'}",
                    f"AuthorizedKeysFile {ssh / 'authorized_keys'}",
                    "UsePAM no",
                    "StrictModes no",
                    "PermitRootLogin prohibit-password",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PidFile none",
                    "LogLevel ERROR",
                    "PrintMotd no",
                    "PrintLastLog no",
                    "",
                ]
            )
        )
        return f"{SSHD} -i -f {ssh / 'sshd_config'}"

    def start_moto(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.endpoint = f"http://127.0.0.1:{port}"
        log = open(self.logs / "moto.log", "w")  # noqa: SIM115 (lives as long as the server)
        self.moto = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # not in the process group of anything `ray stop` touches
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"{self.endpoint}/moto-api/", timeout=2).read()
                break
            except OSError:
                if time.monotonic() > deadline or self.moto.poll() is not None:
                    raise RuntimeError(
                        f"moto server did not start:\n{tail(self.logs / 'moto.log')}"
                    ) from None
                time.sleep(0.3)
        import pyarrow.fs as pafs

        pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            access_key="test",
            secret_key="test",
            region="us-east-1",
            allow_bucket_creation=True,
        ).create_dir(BUCKET)
        self.say(f"moto S3 on {self.endpoint}, bucket {BUCKET}")

    def s3_env(self) -> dict[str, str]:
        return {
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_ACCESS_KEY_ID": "test",
            "AWS_SECRET_ACCESS_KEY": "test",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        }

    def fresh_home(self) -> None:
        """The head's home as on a new machine: only ~/.bashrc with the bucket's endpoint and
        credentials (on AWS the instance profile; here a local endpoint) and ~/jiio-venv,
        a link to this machine's venv (an image with the venv already made)."""
        if not os.path.samestat(os.stat(self.home), os.stat(self.work / "home")):
            raise RuntimeError(f"{self.home} is not the private home: refusing to empty it")
        for p in list(self.home.iterdir()):
            if p.name in self.keep:
                continue
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p)
            else:
                p.unlink()
        env = {**self.s3_env(), "TMPDIR": str(self.tmpdir), "RAY_USAGE_STATS_ENABLED": "0"}
        lines = ["# Written by tests/cluster/launcher_harness.py: the moto bucket, a private TMPDIR."]
        lines += [f"export {k}={shlex.quote(v)}" for k, v in env.items()]
        (self.home / ".bashrc").write_text("\n".join(lines) + "\n")
        (self.home / "jiio-venv").symlink_to(self.venv_bin.parent)
        for sessions in (Path("/tmp/ray"), self.tmpdir / "ray"):  # no Ray session of an earlier head
            for p in sessions.glob("session_*"):
                if p.is_dir() and not p.is_symlink():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)

    def write_configs(self, proxy: str) -> None:
        source = load_source(self.source)
        name = f"{source['cluster_name']}-local-{uuid.uuid4().hex[:6]}"
        fake = fake_autoscale_config(source, name)
        fake_path = self.work / "fake_autoscale.yaml"
        fake_path.write_text(yaml.safe_dump(fake, sort_keys=False))
        cfg, replaced = derive_config(
            source,
            cluster_name=name,
            ssh_user=self.user,
            ssh_key=str(self.work / "ssh" / "id_ed25519"),
            proxy_command=proxy,
            fake_config_local=str(fake_path),
            storage=self.storage,
            trial_limits=TRIAL_LIMITS,
        )
        header = [
            "# Derived from cluster/gpu.yaml by tests/cluster/launcher_harness.py (local provider,",
            "# fake GPU workers from the head's autoscaler, see fake_autoscale.yaml). Replaced commands:",
        ]
        for r in replaced:
            header.append(f"#   {r['list']}: {r['command']}")
            header.append(f"#     -> {' ; '.join(r['replaced_by'])}")
            header.append(f"#     because it {r['why']}")
        self.config.write_text("\n".join(header) + "\n" + yaml.safe_dump(cfg, sort_keys=False))
        self.result.update(
            cluster_name=name,
            config=str(self.config),
            replaced=replaced,
            fake_config=str(fake_path),
            storage=self.storage,
        )
        self.save()

    # --- the cluster ---
    def up(self, label: str) -> None:
        step = self.run(f"ray-up-{label}", ["ray", "up", "-y", "--no-config-cache", str(self.config)], 300)
        self.result["times"][f"ray up ({label})"] = step["s"]
        hashing = hashing_seconds(Path(step["log"]).read_text(errors="replace"))
        if hashing is not None:
            self.result["times"][f"ray up ({label}): hashing file_mounts"] = hashing
        boot = self.home / "ray_bootstrap_config.yaml"
        if boot.exists():
            self.result.setdefault("bootstrap_metadata", {})[label] = (
                yaml.safe_load(boot.read_text()) or {}
            ).get("metadata")

    def down(self, label: str) -> None:
        step = self.run(f"ray-down-{label}", ["ray", "down", "-y", str(self.config)], 180)
        self.result["times"][f"ray down ({label})"] = step["s"]

    def submit_cmd(self, *args: str) -> list[str]:
        """``ray submit CONFIG sweeps/alpha.py [-- ARGS]``: without ARGS, as typed in the README."""
        return ["ray", "submit", str(self.config), SCRIPT, *(["--", *args] if args else [])]

    def ray_status(self, label: str) -> str:
        step = self.run(
            f"ray-status-{label}", ["ray", "exec", str(self.config), "ray status"], 120, check=False
        )
        return Path(step["log"]).read_text(errors="replace")

    def monitor_log(self) -> str:
        # Ray's temp dir follows TMPDIR (set for the head's shells in ~/.bashrc)
        path = self.tmpdir / "ray" / "session_latest" / "logs" / "monitor.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def record_cluster(self, label: str) -> None:
        """What the head's autoscaler launched and what `ray status` shows, for the test."""
        mon = self.monitor_log()
        launched = re.findall(r"Adding (\d+) node\(s\) of type (\S+?)\.?\s", mon)
        self.result.setdefault("cluster", {})[label] = {
            "ray_status": self.ray_status(label)[-4000:],
            "launched": [[int(n), t] for n, t in launched],
            # autoscaler v2 (Ray's default since 2.50): every instance's state changes
            "instances": re.findall(
                r"Update instance (\S+)->(\S+) \(id=[^,]*, type=([^,]*), cloud_instance_id=([^,]*),", mon
            ),
            "monitor_tail": mon[-3000:],
        }
        (self.logs / f"monitor-{label}.log").write_text(mon)
        self.save()

    # --- results ---
    def store(self):
        sys.path.insert(0, str(ROOT))
        os.environ.update(self.s3_env())  # pyarrow's S3 filesystem reads AWS_ENDPOINT_URL
        from orchestrator.storage import ResultStore

        return ResultStore(self.storage)

    def dump(self, sweep: str, label: str) -> None:
        """The sweep's trials and steps as local Parquet for the test: as the store reads them
        (``-trials``), and file by file without the store's deduplication (``-raw``, with
        the file's key in ``_file``); its checkpoints and trial records."""
        import pandas as pd
        import pyarrow.parquet as pq

        store = self.store()
        store.read("trials", sweep).to_parquet(self.tables / f"{label}-trials.parquet")
        for table in ("trials", "steps"):
            frames = []
            for key in store.keys(table, sweep):
                t = pq.read_table(f"{store.base}/{table}/sweep={sweep}/{key}.parquet", filesystem=store.fs)
                frames.append(t.to_pandas().assign(_file=key))
            raw = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
            raw.to_parquet(self.tables / f"{label}-{table}-raw.parquet")
        self.result.setdefault("stores", {})[label] = {
            "checkpoints": store.keys("checkpoints", sweep),
            "records": {k: r.get("state") for k, r in store.records(sweep).items()},
        }
        self.save()

    def analysis_files(self, sweep: str) -> list[str]:
        """The files under ``<storage>/analysis/<sweep>/`` in the bucket (the sweep's report)."""
        import pyarrow.fs as pafs

        store = self.store()
        infos = store.fs.get_file_info(
            pafs.FileSelector(f"{store.base}/analysis/{sweep}", allow_not_found=True, recursive=True)
        )
        return sorted(i.path.rsplit("/", 1)[-1] for i in infos if i.type == pafs.FileType.File)

    def local_outputs(self) -> list[str]:
        """Result or report files (Parquet, HTML, PNG, checkpoints) on this machine's disks
        where the head and the fake workers write: their home and temporary directories (the
        private ~ and /tmp/ray, which holds TMPDIR and Ray's sessions). The sweep's storage is
        the bucket, so there should be none."""
        found = []
        code = self.home / "jiio"  # the synced repository (its orchestrator/analysis package)
        for top in (self.home, Path("/tmp/ray")):
            for dirpath, dirnames, filenames in os.walk(top):
                if Path(dirpath) == self.home:
                    dirnames[:] = [d for d in dirnames if d not in self.keep]  # the venv, the repo
                for name in filenames:
                    if name.endswith((".parquet", ".html", ".png", ".pt")):
                        found.append(os.path.join(dirpath, name))
                if not Path(dirpath).is_relative_to(code):
                    found += [os.path.join(dirpath, d) for d in dirnames if d in ("results", "analysis")]
        return sorted(found)

    # --- the kill ---
    def fake_nodes(self) -> dict[str, dict[str, Any]]:
        """Processes of each fake worker node (their environment names the node), by id."""
        nodes: dict[str, dict[str, Any]] = {}
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                raw = (proc / "environ").read_bytes()
                name = (proc / "comm").read_text().strip()
                cmdline = (
                    (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
                )
            except OSError:  # gone meanwhile
                continue
            env = dict(kv.split("=", 1) for kv in raw.decode(errors="replace").split("\0") if "=" in kv)
            node = env.get("RAY_OVERRIDE_NODE_ID_FOR_TESTING")
            if not node or node == FAKE_HEAD_ID:
                continue
            entry = nodes.setdefault(node, {"type": env.get("RAY_NODE_TYPE_NAME"), "procs": []})
            entry["procs"].append([int(proc.name), name, cmdline[:160]])
        return nodes

    def kill_phase(self, args: list[str], sweep: str) -> None:
        store = self.store()
        self.n += 1
        log = self.logs / f"{self.n:02d}-submit-{sweep}.log"
        cmd = self.submit_cmd(*args)
        self.say(f"submit-{sweep} (a worker is killed mid-trial): {shlex.join(cmd)}")
        start = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT)
            while not store.keys("checkpoints", sweep):
                if proc.poll() is not None:
                    raise RuntimeError(f"the sweep ended before any checkpoint:\n{tail(log)}")
                if time.monotonic() - start > 400:
                    proc.kill()
                    raise RuntimeError(f"no checkpoint in {store.root} after 400 s:\n{tail(log)}")
                time.sleep(0.5)
            t_ckpt = time.monotonic() - start
            nodes = self.fake_nodes()
            busy = {
                n: sum(1 for _, _, c in e["procs"] if c.startswith("ray::") and "IDLE" not in c)
                for n, e in nodes.items()
            }
            if not nodes:
                proc.kill()
                raise RuntimeError("a checkpoint exists but no fake worker node was found")
            victim = max(busy, key=lambda n: busy[n])
            procs = nodes[victim]["procs"]
            raylets = [p for p in procs if p[1] == "raylet"]
            order = raylets + [p for p in procs if p[1] != "raylet"]  # the raylet first
            for pid, _, _ in order:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            t_kill = time.monotonic()
            self.say(
                f"killed fake node {victim} ({nodes[victim]['type']}): {len(order)} processes, "
                f"{len(raylets)} raylet(s), {busy[victim]} busy workers"
            )
            self.result["kill"] = {
                "node": victim,
                "type": nodes[victim]["type"],
                "processes": order,
                "raylets": len(raylets),
                "busy_workers": busy[victim],
                "nodes_before": {n: {"type": e["type"], "n": len(e["procs"])} for n, e in nodes.items()},
                "checkpoints_at_kill": store.keys("checkpoints", sweep),
                "trials_at_kill": store.keys("trials", sweep),
            }
            self.save()
            try:
                rc = proc.wait(timeout=600)
            except subprocess.TimeoutExpired:
                proc.kill()
                rc = "timeout"
        end = time.monotonic()
        self.result["kill"]["nodes_after"] = {n: e["type"] for n, e in self.fake_nodes().items()}
        step = {
            "name": f"submit-{sweep}",
            "cmd": shlex.join(cmd),
            "rc": rc,
            "s": round(end - start, 1),
            "log": str(log),
        }
        self.result["steps"].append(step)
        self.result["times"][f"ray submit ({sweep}, first checkpoint)"] = round(t_ckpt, 1)
        self.result["times"][f"ray submit ({sweep}, worker killed -> sweep done)"] = round(end - t_kill, 1)
        self.result["times"][f"ray submit ({sweep}, whole)"] = step["s"]
        self.save()
        self.say(f"submit-{sweep}: rc={rc} in {step['s']}s")
        if rc != 0:
            raise RuntimeError(f"the sweep with a killed worker failed (rc={rc}):\n{tail(log)}")

    # --- the whole ---
    def submit(self, sweep: str, label: str, *args: str) -> None:
        step = self.run(f"submit-{label}", self.submit_cmd(*args), 1200)
        self.result["times"][f"ray submit ({label})"] = step["s"]

    def trivial(self) -> None:
        """Development aid: up, a GPU task on an autoscaled fake worker, down."""
        script = self.work / "trivial.py"
        script.write_text(
            "import os, socket, ray\n"
            "ray.init()\n"
            "print('resources', ray.cluster_resources())\n"
            "@ray.remote(num_gpus=0.25, num_cpus=1)\n"
            "def f():\n"
            "    return os.environ.get('RAY_NODE_TYPE_NAME'), os.environ.get('AWS_ENDPOINT_URL')\n"
            "print('task ran on', ray.get(f.remote()))\n"
        )
        try:
            self.up("first")
            step = self.run("submit-trivial", ["ray", "submit", str(self.config), str(script)], 300)
            self.result["times"]["ray submit (trivial)"] = step["s"]
            self.record_cluster("trivial")
            self.result["ok"] = True
        finally:
            self.down("last")

    def main(self, trivial: bool = False) -> None:
        self.isolate()
        proxy = self.start_sshd_auth()
        self.start_moto()
        self.write_configs(proxy)
        self.fresh_home()
        if trivial:
            return self.trivial()
        try:
            self.up("first")
            # The default sweep as the README types it: no flags; everything from metadata.jiio.
            self.submit(DEFAULT_SWEEP, "default")
            self.record_cluster("default")
            self.dump(DEFAULT_SWEEP, "default")
            self.result["analysis"] = {"default": self.analysis_files(DEFAULT_SWEEP)}
            self.result["local_outputs"] = {"default": self.local_outputs()}
            self.save()
            # CPU-sized smoke trials here: this step is about the kill, not the model.
            self.kill_phase(
                [
                    "--smoke",
                    "--model-size",
                    "tiny",
                    "--epochs",
                    "3",
                    "--trials",
                    "3",
                    "--name",
                    "kill",
                    "--no-early-stop",
                ],
                "kill",
            )
            self.record_cluster("kill")
            self.dump("kill", "kill")
            self.down("first")
            self.fresh_home()  # a new head: nothing of the first one but the bucket
            self.up("fresh")
            # The default sweep extended by one trial, from the bucket alone.
            self.submit(DEFAULT_SWEEP, "resume", "--resume", "--trials", str(DEFAULT_TRIALS + 1))
            self.record_cluster("resume")
            self.dump(DEFAULT_SWEEP, "resume")
            self.result["analysis"]["resume"] = self.analysis_files(DEFAULT_SWEEP)
            self.result["local_outputs"]["resume"] = self.local_outputs()
            self.result["ok"] = True
        finally:
            try:
                self.down("last")
            except Exception as exc:  # recorded; the namespace ends with this process anyway
                self.result.setdefault("errors", []).append(f"ray down: {exc}")
            self.result["times"]["total"] = round(time.monotonic() - self.t0, 1)
            self.save()


def hashing_seconds(log: str) -> float | None:
    """Seconds ``ray up`` spent between "Setting up head node" and "Prepared bootstrap
    config" (its log lines' timestamps): Ray 2.60 hashes every file under each
    ``file_mounts`` source there (``hash_runtime_conf``), before anything is synced.

    >>> hashing_seconds("2026-01-01 10:00:01,500 INFO commands.py:831 -- <1/1> Setting up head node\\n"
    ...                 "2026-01-01 10:00:27,700 INFO commands.py:851 -- Prepared bootstrap config\\n")
    26.2
    """
    stamps = {}
    for marker in ("Setting up head node", "Prepared bootstrap config"):
        m = re.search(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\s.*" + marker, log, re.M)
        if m is None:
            return None
        stamps[marker] = (
            time.mktime(time.strptime(m.group(1)[:19], "%Y-%m-%d %H:%M:%S")) + int(m.group(1)[20:]) / 1000
        )
    return round(stamps["Prepared bootstrap config"] - stamps["Setting up head node"], 1)


def tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return ""


def _as_init(fn) -> int:
    """As PID 1 of a PID namespace, reap orphans (Ray daemonizes; without a reaper its dead
    processes stay zombies that `ray stop` waits for) and run ``fn`` in a child."""
    child = os.fork()
    if child == 0:
        os._exit(fn())
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGKILL))
    while True:
        pid, status = os.wait()
        if pid == child:
            return os.waitstatus_to_exitcode(status)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path, help="directory for result.json, logs/, tables/")
    ap.add_argument("--trivial", action="store_true", help="development: up, one GPU task, down")
    ap.add_argument("--source", type=Path, default=GPU_YAML, help="the cluster config to derive from")
    args = ap.parse_args(argv)

    if os.getpid() != 1:
        print(
            "launcher_harness: run me as the first process of private namespaces, as the test does:\n  "
            + shlex.join([*unshare_command(), sys.executable, __file__, "--out", str(args.out)]),
            file=sys.stderr,
        )
        return 2

    def work() -> int:
        h = Harness(args.out.resolve())
        h.source = args.source.resolve()
        try:
            h.main(trivial=args.trivial)
        except Exception as exc:
            h.result.setdefault("errors", []).insert(0, f"{exc}\n{traceback.format_exc()}")
            h.save()
            h.say(f"FAILED: {exc}")
            return 1
        return 0

    return _as_init(work)


if __name__ == "__main__":
    sys.exit(main())
