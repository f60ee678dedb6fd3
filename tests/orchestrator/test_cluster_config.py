"""Offline checks of the Ray cluster-launcher configs in ``cluster/`` (AWS and GCP).

Nothing here reaches a cloud. Three layers:

1. Ray's own validation, the steps of ``ray up`` that need no cloud:
   ``prepare_config`` (merge the provider's defaults.yaml, fill per-type worker limits)
   then ``validate_config`` (``ray-schema.json`` plus its cross-field rules); ``ray up``
   only adds, in between, AWS's autodetection of missing node resources, which these
   configs make unnecessary by stating every node type's resources. Broken copies (a
   misspelled key, a wrong type, ...) must be rejected, so the check can fail.
2. The project's promises, which the schema cannot see: no trial on the head (CPU 0),
   dashboard on localhost, the project installed on every node, explicit GPU resources
   that match the machine type, GPU VMs set to TERMINATE on host maintenance, no
   credentials. Each is also shown to catch a broken copy.
3. The shell in the setup commands, after YAML folding: valid syntax, and the virtualenv
   bootstrap and repository guard behave as documented (run against a fake HOME).

When botocore / google-api-python-client are installed (they are whenever ``ray up`` can
run for that cloud), node_configs are also checked against the EC2 RunInstances model and
the Compute Engine ``Instance`` schema shipped with those packages, still offline.
"""

from __future__ import annotations

import copy
import json
import os
import re
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"
CONFIGS = {"aws": CLUSTER / "gpu.yaml", "gcp": CLUSTER / "gpu-gcp.yaml"}
CLOUDS = sorted(CONFIGS)
COMMAND_LISTS = (
    "initialization_commands",
    "setup_commands",
    "head_setup_commands",
    "worker_setup_commands",
    "head_start_ray_commands",
    "worker_start_ray_commands",
)

# (vCPUs, GPUs) of the AWS instance types the configs may use; a type not listed here is
# reported, so a new one gets its resources checked by hand once.
AWS_INSTANCES = {
    "m5.large": (2, 0),
    "m5.xlarge": (4, 0),
    "m5.2xlarge": (8, 0),
    "g4dn.xlarge": (4, 1),
    "g4dn.2xlarge": (8, 1),
    "g5.xlarge": (4, 1),
    "g5.2xlarge": (8, 1),
    "g6.xlarge": (4, 1),
    "g6.2xlarge": (8, 1),
}
GCP_MACHINE = re.compile(r"^n1-(?:standard|highmem|highcpu)-(\d+)$")
SECRET_KEY = re.compile(r"access_key|secret|private_key|password|token|credential", re.IGNORECASE)
SECRET_TEXT = (
    re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b"),  # an AWS access key id
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\"private_key\"\s*:"),  # a GCP service-account key file
    re.compile(r"(?im)^[^#\n]*\b(?:aws_access_key_id|aws_secret_access_key|aws_session_token)\s*[:=]\s*\S"),
)
RAY_PIN = re.compile(r"""pip install (?:-U )?["']?ray\[([a-z,]+)\]==(\d+\.\d+\.\d+)["']?""")


def load(cloud: str) -> dict[str, Any]:
    with open(CONFIGS[cloud]) as f:
        return yaml.safe_load(f)


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What ``ray up`` does to a config before it first calls the cloud provider."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def commands(config: dict[str, Any]) -> Iterator[tuple[str, str]]:
    for key in COMMAND_LISTS:
        for cmd in config.get(key) or []:
            yield key, cmd
    for name, node_type in config["available_node_types"].items():
        for cmd in node_type.get("initialization_commands") or []:
            yield f"{name}.initialization_commands", cmd


def workers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in config["available_node_types"].items() if k != config["head_node_type"]}


def is_spot(cloud: str, node_config: dict[str, Any]) -> bool:
    if cloud == "aws":
        return (node_config.get("InstanceMarketOptions") or {}).get("MarketType") == "spot"
    scheduling = node_config.get("scheduling")
    return isinstance(scheduling, dict) and (
        scheduling.get("preemptible") is True or scheduling.get("provisioningModel") == "SPOT"
    )


def _secret_keys(value: Any, path: str = "") -> Iterator[str]:
    if isinstance(value, dict):
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if SECRET_KEY.search(str(key)) and item not in (None, "", {}, []):
                yield where
            yield from _secret_keys(item, where)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _secret_keys(item, f"{path}[{i}]")


def text_problems(text: str) -> list[str]:
    """Credentials written into a config file's text, comments included."""
    return [f"credential-like text matching {p.pattern!r}" for p in SECRET_TEXT if p.search(text)]


def mounted_needs() -> list[str]:
    """What ``pip install -e ~/jiio`` reads (pyproject.toml, its readme, the packages its
    ``packages.find`` includes) and the sweep scripts, as repository paths."""
    text = (ROOT / "pyproject.toml").read_text()
    readme = re.search(r'^readme\s*=\s*"([^"]+)"', text, re.M)
    include = re.search(r"^include\s*=\s*\[([^\]]*)\]", text, re.M)
    assert readme and include, "pyproject.toml: no readme or packages.find include"
    packages = [p.rstrip("*").rstrip(".") for p in re.findall(r'"([^"]+)"', include.group(1))]
    return ["pyproject.toml", readme.group(1), *packages, "sweeps"]


def mount_problems(config: dict[str, Any]) -> list[str]:
    """``file_mounts``: the repository's layout under ~/jiio, every source there, none the
    checkout's root or a directory above its .venv, .git or results (``ray up`` hashes every
    file under each source, ignoring rsync_exclude), everything the nodes install, and the
    git-sha file the start commands read."""
    problems = []
    mounts = config.get("file_mounts") or {}
    sources = []
    for remote, local in mounts.items():
        if remote != f"~/jiio/{local}" or os.path.normpath(local) != local or local.startswith(("/", "..")):
            problems.append(
                f"file_mounts must map ~/jiio/PATH to the repository's PATH, got {remote!r}: {local!r}"
            )
            continue
        sources.append(local)
        if not (ROOT / local).exists():
            problems.append(f"file_mounts source {local!r} is not in the repository (ray up stops on it)")
    for heavy in (".venv", ".git", "results"):
        for local in mounts.values():
            if (ROOT / heavy).resolve().is_relative_to((ROOT / local).resolve()):
                problems.append(
                    f"file_mounts source {local!r} holds {heavy}: ray up hashes every file under it "
                    "(ignoring rsync_exclude) each time"
                )
    for need in mounted_needs():
        if need not in sources:
            problems.append(
                f"file_mounts lack {need!r} (~/jiio/{need}: pip install -e ~/jiio or the sweeps need it)"
            )
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        for cmd in config.get(key) or []:
            for sha in re.findall(r"cat ~/jiio/(\S+)", cmd):
                if not any(sha == s or sha.startswith(s + "/") for s in sources):
                    problems.append(
                        f"{key}: JIIO_GIT_SHA is read from ~/jiio/{sha}, which no file_mount brings"
                    )
    return problems


def project_problems(config: dict[str, Any], cloud: str) -> list[str]:
    """The promises cluster/README.md makes about a config; empty when all hold."""
    problems: list[str] = []
    types = config["available_node_types"]
    head_name = config["head_node_type"]
    head = types.get(head_name, {})

    if config.get("cluster_name") != "jiio-sweeps":
        problems.append(f"cluster_name is {config.get('cluster_name')!r}, not 'jiio-sweeps'")
    if config["provider"].get("type") != cloud:
        problems.append(f"provider.type is {config['provider'].get('type')!r}, not {cloud!r}")

    # No trial ever lands on the head: it advertises CPU 0 and no GPU, and ray start agrees.
    resources = head.get("resources", {})
    if resources.get("CPU") != 0 or resources.get("GPU", 0) != 0:
        problems.append(f"head node type {head_name!r} must advertise resources {{CPU: 0}}, has {resources}")
    if is_spot(cloud, head.get("node_config", {})):
        problems.append("the head node must not be spot/preemptible: it holds the Tune driver and GCS")
    head_start = " ".join(config.get("head_start_ray_commands") or [])
    if "--head" not in head_start:
        problems.append("head_start_ray_commands do not start a Ray head")
    if "--num-cpus=0" not in head_start:
        problems.append("head_start_ray_commands must pass --num-cpus=0")
    hosts = re.findall(r"--dashboard-host[= ](\S+)", head_start)
    if hosts != ["127.0.0.1"]:
        problems.append(
            f"the dashboard must listen on 127.0.0.1 only, head start has --dashboard-host {hosts}"
        )
    everything = " ".join(cmd for _, cmd in commands(config))
    if "0.0.0.0" in everything:
        problems.append("a command binds to 0.0.0.0")
    worker_start = " ".join(config.get("worker_start_ray_commands") or [])
    if "--address=$RAY_HEAD_IP:6379" not in worker_start:
        problems.append("worker_start_ray_commands must join the head at --address=$RAY_HEAD_IP:6379")

    # Every worker type is a GPU node whose advertised resources match the machine.
    if not workers(config):
        problems.append("no worker node types")
    for name, node_type in workers(config).items():
        res = node_type.get("resources", {})
        gpu, cpu = res.get("GPU"), res.get("CPU")
        if not (isinstance(gpu, int) and gpu >= 1 and isinstance(cpu, int) and cpu >= 1):
            problems.append(f"worker type {name!r} needs explicit resources {{CPU: N, GPU: M}}, has {res}")
            continue
        node_config = node_type.get("node_config", {})
        if cloud == "aws":
            kind = node_config.get("InstanceType")
            if kind not in AWS_INSTANCES:
                problems.append(f"{name}: instance type {kind!r} is not in AWS_INSTANCES; add its vCPU/GPU")
            elif AWS_INSTANCES[kind] != (cpu, gpu):
                problems.append(
                    f"{name}: {kind} has (CPU, GPU) {AWS_INSTANCES[kind]}, resources say {(cpu, gpu)}"
                )
        else:
            match = GCP_MACHINE.match(str(node_config.get("machineType")))
            accelerators = node_config.get("guestAccelerators") or []
            count = sum(a.get("acceleratorCount", 0) for a in accelerators if isinstance(a, dict))
            if not match:
                problems.append(f"{name}: machineType {node_config.get('machineType')!r} is not an n1 type")
            elif int(match.group(1)) != cpu:
                problems.append(
                    f"{name}: {node_config['machineType']} has {match.group(1)} vCPUs, resources say {cpu}"
                )
            if count != gpu:
                problems.append(f"{name}: guestAccelerators give {count} GPUs, resources say {gpu}")
        if node_type.get("max_workers", config["max_workers"]) > config["max_workers"]:
            problems.append(f"{name}: max_workers above the global max_workers")
        if node_type.get("min_workers", 0) != 0:
            problems.append(f"{name}: min_workers must be 0 (GPU nodes only while trials need them)")
    if not any(is_spot(cloud, t.get("node_config", {})) for t in workers(config).values()):
        problems.append("no spot/preemptible worker type")
    if cloud == "gcp":
        for name, node_type in types.items():
            node_config = node_type.get("node_config", {})
            scheduling = node_config.get("scheduling")
            if node_config.get("guestAccelerators") and (
                not isinstance(scheduling, dict) or scheduling.get("onHostMaintenance") != "TERMINATE"
            ):
                problems.append(
                    f"{name}: a GPU VM needs scheduling: {{onHostMaintenance: TERMINATE}} (a mapping)"
                )
            if is_spot(cloud, node_config) and scheduling.get("automaticRestart") is not False:
                problems.append(f"{name}: a spot/preemptible VM needs automaticRestart: false")

    # One image everywhere, so the driver and the trials run the same Python.
    key = "ImageId" if cloud == "aws" else "sourceImage"
    images = set()
    for node_type in types.values():
        node_config = node_type.get("node_config", {})
        if cloud == "aws":
            images.add(node_config.get(key))
        else:
            images.update(d.get("initializeParams", {}).get(key) for d in node_config.get("disks", []))
    if len(images) != 1:
        problems.append(f"node types use different images ({key}): {sorted(map(str, images))}")

    # Cost bounds.
    if not 1 <= config.get("idle_timeout_minutes", 0) <= 60:
        problems.append("idle_timeout_minutes must be between 1 and 60")
    if not 1 <= config.get("max_workers", 0) <= 16:
        problems.append("max_workers must be between 1 and 16")

    # What the nodes need of the repository goes to ~/jiio on every node and is installed there.
    problems += mount_problems(config)
    excludes = config.get("rsync_exclude") or []
    for pattern in (".venv", ".git"):
        if pattern not in excludes:
            problems.append(f"rsync_exclude lacks {pattern!r}")
    if not any("results" in p for p in excludes):
        problems.append("rsync_exclude lacks the local results directory")
    setup = config.get("setup_commands") or []
    if not any(re.search(r"pip install (?:-U )?-e ~/jiio\b", c) for c in setup):
        problems.append("setup_commands do not install the project (pip install -e ~/jiio)")
    pins = [RAY_PIN.search(c) for c in setup]
    pins = [m for m in pins if m]
    if len(pins) != 1 or "tune" not in pins[0].group(1).split(","):
        problems.append("setup_commands must install one pinned ray[...tune...]==X.Y.Z")

    # No credentials: providers' credential fields, ssh keys, anything secret-named.
    for where in _secret_keys(config):
        problems.append(f"credential-like field with a value: {where}")
    for field in ("aws_credentials", "gcp_credentials"):
        if field in config["provider"]:
            problems.append(f"provider.{field} is set: credentials belong outside the repository")
    return problems


# ---------------------------------------------------------------- 1. Ray's validation


@pytest.mark.parametrize("cloud", CLOUDS)
def test_ray_validation_accepts_the_config(cloud: str) -> None:
    raw = load(cloud)
    prepared = ray_validate(raw)
    # prepare_config merges the provider's defaults.yaml key by key: the file must set every
    # command list itself, or Ray's defaults (nightly wheels, a 0.0.0.0 dashboard) creep in.
    for key in COMMAND_LISTS:
        assert key in raw, f"{CONFIGS[cloud].name} must set {key} (else Ray's default is used)"
    assert prepared["head_setup_commands"] == raw["setup_commands"] + raw["head_setup_commands"]
    assert prepared["worker_setup_commands"] == raw["setup_commands"] + raw["worker_setup_commands"]
    assert prepared["head_start_ray_commands"] == raw["head_start_ray_commands"]
    assert prepared["available_node_types"][raw["head_node_type"]]["max_workers"] == 0


def _rename(key: str, new: str) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        config[new] = config.pop(key)

    return mutate


def _set(path: tuple[str, ...], value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value

    return mutate


def _del(path: tuple[str, ...]) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        node = config
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]

    return mutate


def _misspell_node_field(config: dict[str, Any]) -> None:
    node_type = config["available_node_types"]["gpu_worker"]
    node_type["min_worker"] = node_type.pop("min_workers")


# What Ray must reject, and a word its error has to mention.
BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "misspelled top-level key": (
        _rename("idle_timeout_minutes", "idle_timeout_minute"),
        "idle_timeout_minute",
    ),
    "wrong type of max_workers": (_set(("max_workers",), "eight"), "eight"),
    "misspelled node-type field": (_misspell_node_field, "min_worker"),
    "node type without resources": (_del(("available_node_types", "gpu_worker", "resources")), "resources"),
    "fractional GPU resource": (_set(("available_node_types", "gpu_worker", "resources", "GPU"), 0.5), "0.5"),
    "commands not a list": (_set(("head_start_ray_commands",), "ray start --head"), "ray start --head"),
    "unknown head node type": (_set(("head_node_type",), "headd"), "head_node_type"),
    "min_workers above max_workers": (
        _set(("available_node_types", "gpu_worker", "min_workers"), 9),
        "max_workers",
    ),
}


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_ray_validation_rejects_a_broken_copy(cloud: str, case: str) -> None:
    mutate, mention = BROKEN[case]
    config = load(cloud)
    mutate(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)) as info:
        ray_validate(config)
    assert mention in str(info.value)


# ---------------------------------------------------------------- 2. project promises


@pytest.mark.parametrize("cloud", CLOUDS)
def test_project_promises_hold(cloud: str) -> None:
    assert project_problems(load(cloud), cloud) == []
    assert text_problems(CONFIGS[cloud].read_text()) == []


@pytest.mark.parametrize("cloud", CLOUDS)
def test_ray_up_hashes_only_the_mounted_parts(cloud: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Ray's own hashing of ``file_mounts`` (run by every ``ray up`` before anything is
    synced), from the repository root: it finds every source and reads no file of the
    checkout's .venv, .git or results (it would read all of them under a mount of ".")."""
    from ray.autoscaler._private import util

    read: list[str] = []

    def recording_open(path, *args, **kwargs):
        read.append(os.path.abspath(path))
        return open(path, *args, **kwargs)

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(util, "_hash_cache", {})
    monkeypatch.setattr(util, "open", recording_open, raising=False)
    util.hash_runtime_conf(load(cloud)["file_mounts"], None, {})
    assert read and any(p.endswith(os.sep + "pyproject.toml") for p in read)
    heavy = [str(ROOT / d) + os.sep for d in (".venv", ".git", "results")]
    assert not [p for p in read if p.startswith(tuple(heavy))], "ray up would hash these"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_pip_install_e_works_from_the_mounted_parts_alone(cloud: str, tmp_path: Path) -> None:
    """``pip install -e ~/jiio`` on a node sees only what file_mounts brings: an editable
    build of a copy of exactly that finds both packages (setuptools, offline)."""
    pytest.importorskip("setuptools")
    import shutil

    node = tmp_path / "jiio"
    for remote, local in load(cloud)["file_mounts"].items():
        target = node / remote.removeprefix("~/jiio/")
        target.parent.mkdir(parents=True, exist_ok=True)
        src = ROOT / local
        if src.is_dir():
            shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(src, target)
    script = (
        "import glob, setuptools.build_meta as b, zipfile; "
        f"w = b.build_editable({str(tmp_path / 'wheel')!r}); "
        f"z = zipfile.ZipFile(glob.glob({str(tmp_path / 'wheel' / '*.whl')!r})[0]); "
        "print(''.join(z.read(n).decode() for n in z.namelist() if n.endswith('finder.py')))"
    )
    (tmp_path / "wheel").mkdir()
    result = subprocess.run(
        [sys.executable, "-c", script], cwd=node, capture_output=True, text=True, timeout=240
    )
    assert result.returncode == 0, result.stderr[-3000:]
    for package in ("jiio_core", "orchestrator"):
        assert f"'{package}': '{node / package}'" in result.stdout, result.stdout[:2000]


def _head_start(config: dict[str, Any]) -> list[str]:
    return config["head_start_ray_commands"]


PROMISES_BROKEN: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "head advertises CPUs": (
        lambda c: c["available_node_types"]["head"].update(resources={"CPU": 4}),
        "CPU: 0",
    ),
    "head has no resources at all": (
        lambda c: c["available_node_types"]["head"].update(resources={}),
        "CPU: 0",
    ),
    "public dashboard": (
        lambda c: _head_start(c).__setitem__(
            -1, _head_start(c)[-1].replace("--dashboard-host=127.0.0.1", "--dashboard-host=0.0.0.0")
        ),
        "127.0.0.1",
    ),
    "head takes trials": (
        lambda c: _head_start(c).__setitem__(-1, _head_start(c)[-1].replace("--num-cpus=0", "")),
        "--num-cpus=0",
    ),
    "worker without GPU": (
        lambda c: c["available_node_types"]["gpu_worker"]["resources"].pop("GPU"),
        "explicit resources",
    ),
    "worker resources not the machine's": (
        lambda c: c["available_node_types"]["gpu_worker"]["resources"].update(CPU=16),
        "resources say",
    ),
    "project not installed": (
        lambda c: c.update(setup_commands=[x for x in c["setup_commands"] if "-e ~/jiio" not in x]),
        "pip install -e ~/jiio",
    ),
    "ray not pinned": (
        lambda c: c.update(setup_commands=[re.sub(r"==\d+\.\d+\.\d+", "", x) for x in c["setup_commands"]]),
        "pinned ray",
    ),
    "workers join nowhere": (lambda c: c.update(worker_start_ray_commands=["ray start"]), "RAY_HEAD_IP"),
    "credentials in the provider": (
        lambda c: c["provider"].update(
            aws_credentials={"aws_access_key_id": "x", "aws_secret_access_key": "y"}
        ),
        "credential",
    ),
    "ssh private key in auth": (
        lambda c: c["auth"].update(ssh_private_key="~/.ssh/id_rsa"),
        "auth.ssh_private_key",
    ),
    "repository not mounted": (lambda c: c.update(file_mounts={}), "file_mounts lack 'orchestrator'"),
    "whole checkout mounted (its .venv hashed)": (
        lambda c: c.update(file_mounts={"~/jiio": "."}),
        "ray up hashes every file",
    ),
    "a package not mounted": (lambda c: c["file_mounts"].pop("~/jiio/jiio_core"), "lack 'jiio_core'"),
    "pyproject's readme not mounted": (lambda c: c["file_mounts"].pop("~/jiio/README.md"), "'README.md'"),
    "a mount elsewhere than the repository's layout": (
        lambda c: c["file_mounts"].update({"~/code/sweeps": "sweeps"}),
        "~/jiio/PATH",
    ),
    "a mount of a path not in the repository": (
        lambda c: c["file_mounts"].update({"~/jiio/nothing": "nothing"}),
        "not in the repository",
    ),
    "git sha read from outside the mounts": (
        lambda c: c.update(
            head_start_ray_commands=[
                x.replace("~/jiio/cluster/.jiio_git_sha", "~/jiio/.jiio_git_sha")
                for x in c["head_start_ray_commands"]
            ]
        ),
        "JIIO_GIT_SHA",
    ),
    "venv synced": (lambda c: c.update(rsync_exclude=[".git", "/results/"]), ".venv"),
    "no spot workers": (
        lambda c: c["available_node_types"].pop("gpu_worker_spot"),
        "no spot/preemptible worker type",
    ),
    "worker type above the cap": (
        lambda c: c["available_node_types"]["gpu_worker"].update(max_workers=100),
        "global max_workers",
    ),
    "idle GPUs kept for a day": (lambda c: c.update(idle_timeout_minutes=1440), "idle_timeout_minutes"),
}


@pytest.mark.parametrize("cloud", CLOUDS)
@pytest.mark.parametrize("case", sorted(PROMISES_BROKEN))
def test_project_checks_catch_a_broken_copy(cloud: str, case: str) -> None:
    mutate, mention = PROMISES_BROKEN[case]
    config = load(cloud)
    mutate(config)
    problems = project_problems(config, cloud)
    assert any(mention in p for p in problems), problems


def test_project_checks_catch_cloud_specific_breakage() -> None:
    aws = load("aws")
    aws["available_node_types"]["head"]["node_config"]["InstanceMarketOptions"] = {"MarketType": "spot"}
    aws["available_node_types"]["gpu_worker"]["node_config"]["ImageId"] = "ami-0123456789abcdef0"
    problems = project_problems(aws, "aws")
    assert any("head node must not be spot" in p for p in problems), problems
    assert any("different images" in p for p in problems), problems

    gcp = load("gcp")
    worker = gcp["available_node_types"]["gpu_worker"]["node_config"]
    worker["scheduling"] = [{"onHostMaintenance": "TERMINATE"}]  # the list form of old Ray examples
    spot = gcp["available_node_types"]["gpu_worker_spot"]["node_config"]
    spot["scheduling"]["automaticRestart"] = True
    spot["guestAccelerators"][0]["acceleratorCount"] = 2
    problems = project_problems(gcp, "gcp")
    assert any("gpu_worker: a GPU VM needs scheduling" in p for p in problems), problems
    assert any("automaticRestart: false" in p for p in problems), problems
    assert any("guestAccelerators give 2 GPUs" in p for p in problems), problems


def test_credential_text_is_caught_even_in_comments() -> None:
    clean = CONFIGS["aws"].read_text()
    for leaked in (
        "# aws_access_key_id: AKIAABCDEFGHIJKLMNOP\n",
        "#   -----BEGIN RSA PRIVATE KEY-----\n",
        'x: {"type": "service_account", "private_key": "..."}\n',
        "aws_secret_access_key = abc\n",
    ):
        assert text_problems(clean + leaked), leaked


# ---------------------------------------------------------------- 3. the shell


def _bash(cmd: str, home: Path, path_dirs: tuple[Path, ...] = ()) -> subprocess.CompletedProcess[str]:
    env = {"HOME": str(home), "PATH": os.pathsep.join([*map(str, path_dirs), "/usr/bin", "/bin"])}
    return subprocess.run(["bash", "-c", cmd], env=env, capture_output=True, text=True, timeout=30)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_every_command_is_valid_bash(cloud: str) -> None:
    for key, cmd in commands(load(cloud)):
        result = subprocess.run(["bash", "-n", "-c", cmd], capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, f"{key}: {cmd!r}: {result.stderr}"


def _fake_python(path: Path) -> None:
    """A stand-in interpreter: logs how it was called; `-m venv DIR` makes DIR/bin/pip."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '#!/bin/sh\necho "$0 $*" >> "$HOME/calls.log"\n'
        'if [ "$1" = "-m" ] && [ "$2" = "venv" ]; then mkdir -p "$3/bin" && touch "$3/bin/pip" '
        '&& chmod +x "$3/bin/pip"; fi\n'
    )
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_venv_bootstrap_prefers_the_images_python_and_is_idempotent(cloud: str, tmp_path: Path) -> None:
    setup = load(cloud)["setup_commands"]
    make_venv = next(c for c in setup if "-m venv" in c)
    add_to_path = next(c for c in setup if ".bashrc" in c)

    conda = tmp_path / "conda-home"
    _fake_python(conda / "anaconda3/envs/tensorflow2_p310/bin/python")
    _fake_python(conda / "anaconda3/envs/pytorch_p310/bin/python")
    for _ in range(2):  # the second run finds the venv and does nothing
        assert _bash(make_venv, conda).returncode == 0
    calls = (conda / "calls.log").read_text().splitlines()
    assert calls == [f"{conda}/anaconda3/envs/pytorch_p310/bin/python -m venv {conda}/jiio-venv"]

    plain = tmp_path / "plain-home"  # no conda env: /opt/conda if there, else python3
    plain.mkdir()
    fake_bin = tmp_path / "bin"
    _fake_python(fake_bin / "python3")
    result = _bash(make_venv, plain, (fake_bin,))
    if not os.access("/opt/conda/bin/python3", os.X_OK):
        assert result.returncode == 0, result.stderr
        calls = (plain / "calls.log").read_text().splitlines()
        assert calls == [f"{fake_bin}/python3 -m venv {plain}/jiio-venv"]

    for _ in range(2):
        assert _bash(add_to_path, plain).returncode == 0
    assert (plain / ".bashrc").read_text() == 'export PATH="$HOME/jiio-venv/bin:$PATH"\n'


@pytest.mark.parametrize("cloud", CLOUDS)
def test_repository_guard_accepts_this_repo_only(cloud: str, tmp_path: Path) -> None:
    guard = next(c for c in load(cloud)["setup_commands"] if "pyproject.toml" in c)
    (tmp_path / "jiio").mkdir()
    assert _bash(guard, tmp_path).returncode != 0  # nothing mounted
    (tmp_path / "jiio/pyproject.toml").write_text('[project]\nname = "someone-else"\n')
    result = _bash(guard, tmp_path)
    assert result.returncode != 0 and "repository root" in result.stderr
    (tmp_path / "jiio/pyproject.toml").write_text((ROOT / "pyproject.toml").read_text())
    assert _bash(guard, tmp_path).returncode == 0


@pytest.mark.parametrize("cloud", CLOUDS)
def test_python_version_check_runs(cloud: str, tmp_path: Path) -> None:
    check = next(c for c in load(cloud)["setup_commands"] if "version_info" in c)
    python_dir = tmp_path / "bin"
    python_dir.mkdir()
    (python_dir / "python").symlink_to(os.path.realpath(sys.executable))
    result = _bash(check, tmp_path, (python_dir,))
    assert result.returncode == 0, result.stderr


def test_both_clouds_pin_the_same_ray_and_run_the_same_setup() -> None:
    aws, gcp = load("aws"), load("gcp")
    assert aws["setup_commands"] == gcp["setup_commands"]
    assert aws["head_start_ray_commands"] == gcp["head_start_ray_commands"]
    assert aws["worker_start_ray_commands"] == gcp["worker_start_ray_commands"]
    assert aws["rsync_exclude"] == gcp["rsync_exclude"]


# ---------------------------------------------------------------- the cloud APIs' own models


@pytest.mark.parametrize("node_type", ["head", "gpu_worker", "gpu_worker_spot"])
def test_aws_node_configs_fit_ec2_run_instances(node_type: str) -> None:
    botocore_session = pytest.importorskip("botocore.session")
    from botocore.validate import ParamValidator

    model = botocore_session.get_session().get_service_model("ec2").operation_model("RunInstances")
    node_config = dict(load("aws")["available_node_types"][node_type]["node_config"])
    node_config.pop("SubnetIds", None)  # Ray's own key, turned into SubnetId by the launcher
    report = ParamValidator().validate(dict(node_config, MinCount=1, MaxCount=1), model.input_shape)
    assert not report.has_errors(), report.generate_report()
    broken = dict(node_config, MinCount=1, MaxCount=1, InstanceTyp="g5.xlarge")
    assert ParamValidator().validate(broken, model.input_shape).has_errors()


def _compute_problems(value: Any, schema: dict[str, Any], schemas: dict[str, Any], path: str) -> list[str]:
    """Check ``value`` against a Compute API discovery schema: field names, shapes, enums."""
    if "$ref" in schema:
        schema = schemas[schema["$ref"]]
    kind = schema.get("type")
    if kind == "object":
        if not isinstance(value, dict):
            return [f"{path}: the API wants an object, the config has {type(value).__name__}"]
        problems = []
        for key, item in value.items():
            sub = (schema.get("properties") or {}).get(key) or schema.get("additionalProperties")
            if sub is None:
                problems.append(f"{path}.{key}: no such field")
            else:
                problems += _compute_problems(item, sub, schemas, f"{path}.{key}")
        return problems
    if kind == "array":
        if not isinstance(value, list):
            return [f"{path}: the API wants a list, the config has {type(value).__name__}"]
        return [
            p
            for i, v in enumerate(value)
            for p in _compute_problems(v, schema["items"], schemas, f"{path}[{i}]")
        ]
    if kind == "boolean" and not isinstance(value, bool):
        return [f"{path}: the API wants a boolean"]
    if "enum" in schema and value not in schema["enum"]:
        return [f"{path}: {value!r} is not one of {schema['enum']}"]
    return []


@pytest.mark.parametrize("node_type", ["head", "gpu_worker", "gpu_worker_spot"])
def test_gcp_node_configs_fit_the_compute_instance_schema(node_type: str) -> None:
    googleapiclient = pytest.importorskip("googleapiclient")
    doc = Path(googleapiclient.__file__).parent / "discovery_cache/documents/compute.v1.json"
    if not doc.exists():
        pytest.skip("this google-api-python-client ships no compute.v1 discovery document")
    schemas = json.loads(doc.read_text())["schemas"]
    node_config = load("gcp")["available_node_types"][node_type]["node_config"]
    assert _compute_problems(node_config, schemas["Instance"], schemas, node_type) == []
    broken = copy.deepcopy(node_config)
    broken["scheduling"] = [{"onHostMaintenance": "TERMINATE"}]
    broken["machineTyp"] = "n1-standard-8"
    problems = _compute_problems(broken, schemas["Instance"], schemas, node_type)
    assert any("scheduling" in p for p in problems) and any("machineTyp" in p for p in problems)


# ---------------------------------------------------------------- the README


def test_readme_documents_every_placeholder_and_command() -> None:
    readme = (CLUSTER / "README.md").read_text()
    for path in CONFIGS.values():
        assert f"cluster/{path.name}" in readme
        for placeholder in sorted(set(re.findall(r"\bYOUR_[A-Z_]+\b", path.read_text()))):
            assert placeholder in readme, f"{placeholder} (in {path.name}) is not explained in the README"
    for command in (
        "ray up",
        "ray submit",
        "ray dashboard",
        "ray attach",
        "ray exec",
        "--resume",
        "ray down",
    ):
        assert command in readme, command
