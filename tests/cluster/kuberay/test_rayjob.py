"""``cluster/rayjob.yaml`` against KubeRay's RayJob CRD schema, offline.

The schema is the ``v1`` ``openAPIV3Schema`` of KubeRay v1.7.0's RayJob CRD, vendored
beside this file (``README.md`` says from where and how). It is checked as ``kubectl
apply`` checks it with strict field validation (kubectl's default since 1.25): types,
enums, required fields, and no field the schema does not define (the API server would
reject a misspelled field; plain JSON Schema would let it through, so every object schema
that lists its ``properties`` and allows nothing else is closed here). Not checked: the
CEL rules (``x-kubernetes-validations``), ObjectMeta, admission webhooks, what the
operator does with the object. Deliberately broken copies must fail, so the check can.

Beyond the schema: the entrypoint is ``python sweeps/alpha.py`` with flags its own parser
accepts, storage in a bucket, GPUs per trial given; the head runs no trial; the GPU
group's limits and scaling bounds; one Ray version everywhere.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shlex
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

jsonschema = pytest.importorskip("jsonschema")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
MANIFEST = ROOT / "cluster" / "rayjob.yaml"
SCHEMA = HERE / "ray.io_rayjobs.v1.openAPIV3Schema.json"
RAY_VERSION = "2.60.0"  # the Ray the project is tested on (cluster/gpu.yaml pins the same)


def strict(schema: Any) -> Any:
    """The CRD schema as the API server applies it under strict field validation: an
    object schema with ``properties`` and neither ``additionalProperties`` nor
    ``x-kubernetes-preserve-unknown-fields`` admits no other field; ``nullable`` admits
    null."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if (
        "properties" in out
        and "additionalProperties" not in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    if out.get("nullable") and isinstance(out.get("type"), str):
        out["type"] = [out["type"], "null"]
    return out


@pytest.fixture(scope="module")
def validator():
    schema = strict(json.loads(SCHEMA.read_text()))
    cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft7Validator)
    cls.check_schema(schema)
    return cls(schema)


@pytest.fixture(scope="module")
def manifest() -> dict[str, Any]:
    docs = list(yaml.safe_load_all(MANIFEST.read_text()))
    assert len(docs) == 1, "one RayJob per file"
    return docs[0]


def _errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def test_vendored_schema_is_the_one_the_readme_names():
    readme = (HERE / "README.md").read_text()
    digest = hashlib.sha256(SCHEMA.read_bytes()).hexdigest()
    assert digest in readme, f"{SCHEMA.name} changed: sha256 {digest} is not in {HERE / 'README.md'}"


def test_manifest_is_a_valid_rayjob(validator, manifest):
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayJob"
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", manifest["metadata"]["name"])
    assert _errors(validator, manifest) == []


_DELETE = object()


def _set(doc: dict, path: str, value: Any) -> None:
    """Set (or delete) the value at a JSON-pointer-like ``path`` ("~1" stands for "/")."""
    *parents, last = (k.replace("~1", "/") for k in path.split("/"))
    for key in parents:
        doc = doc[int(key)] if isinstance(doc, list) else doc[key]
    if value is _DELETE:
        del doc[last]
    else:
        doc[last] = value


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        # a misspelled field: the API server rejects it under strict validation
        (
            lambda d: d["spec"].update(shutdownAfterJobFinish=d["spec"].pop("shutdownAfterJobFinishes")),
            "shutdownAfterJobFinish",
        ),
        # `ray start` parameters are strings, not numbers
        (
            lambda d: _set(d, "spec/rayClusterSpec/headGroupSpec/rayStartParams/num-cpus", 0),
            "not of type 'string'",
        ),
        # a worker group without its required groupName
        (
            lambda d: _set(d, "spec/rayClusterSpec/workerGroupSpecs/0/groupName", _DELETE),
            "'groupName' is a required",
        ),
        # a replica count that is not an integer
        (
            lambda d: _set(d, "spec/rayClusterSpec/workerGroupSpecs/0/maxReplicas", "eight"),
            "not of type 'integer'",
        ),
        # a value outside an enum
        (lambda d: _set(d, "spec/rayClusterSpec/authOptions/mode", "password"), "is not one of"),
        # a malformed GPU quantity
        (
            lambda d: _set(
                d,
                "spec/rayClusterSpec/workerGroupSpecs/0/template/spec/containers/0/resources/limits/nvidia.com~1gpu",
                "one",
            ),
            "does not match",
        ),
    ],
)
def test_broken_copies_fail(validator, manifest, change, expected):
    doc = copy.deepcopy(manifest)
    change(doc)
    errors = _errors(validator, doc)
    assert any(expected in e for e in errors), errors


def test_entrypoint_runs_the_sweep_with_a_bucket_and_gpus(manifest):
    argv = shlex.split(manifest["spec"]["entrypoint"])
    assert argv[:2] == ["python", "sweeps/alpha.py"]
    assert (ROOT / argv[1]).is_file()
    sys.path.insert(0, str(ROOT / "sweeps"))
    try:
        import alpha
    finally:
        sys.path.remove(str(ROOT / "sweeps"))
    from orchestrator.commands.sweep_flags import build_parser as _parser

    parser = _parser(alpha.SPEC)
    alpha.SPEC.add_arguments(parser)
    args = parser.parse_args(argv[2:])  # exits (SystemExit) on a flag the sweep does not know
    assert args.storage.startswith(("s3://", "gs://")), args.storage
    assert args.gpus_per_trial == 0.25 and args.max_concurrent, args


def test_cluster_shape(manifest):
    spec = manifest["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert set(env) >= {"working_dir", "pip"}, env
    assert env["working_dir"].endswith(".zip"), env["working_dir"]
    packages = env["pip"]["packages"]
    assert any(p.startswith("jiio-sweeps @ ") for p in packages), packages
    assert not any(re.match(r"ray\b", p) for p in packages), "Ray comes from the image"
    rc = spec["rayClusterSpec"]
    assert rc["rayVersion"] == RAY_VERSION
    head = rc["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0", "the head runs no trial"
    (gpu,) = rc["workerGroupSpecs"]
    assert 0 <= gpu["minReplicas"] <= gpu["replicas"] <= gpu["maxReplicas"]
    (worker,) = gpu["template"]["spec"]["containers"]
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 1
    images = [c["image"] for c in head["template"]["spec"]["containers"]] + [worker["image"]]
    assert {re.search(r":(\d+\.\d+\.\d+)", i).group(1) for i in images} == {RAY_VERSION}, images


def test_no_credentials(manifest):
    text = MANIFEST.read_text()
    for pattern in (r"AKIA[0-9A-Z]{16}", r"aws_secret_access_key", r"-----BEGIN", r"private_key"):
        assert not re.search(pattern, text, re.I), pattern
