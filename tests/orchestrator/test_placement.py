"""Where a trial ran, as its row records it (``trial_meta.placement``).

Outside Ray there is nothing to record but the device; the node type comes from
``RAY_NODE_TYPE_NAME``, which Ray's autoscaler sets on the nodes it starts. Inside a Ray
task the CPUs and GPU share Ray assigned are recorded (checked end to end by the Jobs API
test, whose rows must carry the worker node's id).
"""

from __future__ import annotations

from orchestrator.trial.meta import PLACEMENT_KEYS, placement


def test_outside_ray_only_the_device_is_known(monkeypatch):
    monkeypatch.delenv("RAY_NODE_TYPE_NAME", raising=False)
    got = placement(cuda=False)
    assert set(got) == set(PLACEMENT_KEYS)
    assert got == {
        "held_cpus": None,
        "held_gpus": None,
        "node_type": None,
        "node_id": None,
        "cuda_device": "cpu",
    }


def test_the_node_type_is_the_autoscalers_and_explicit_resources_win(monkeypatch):
    monkeypatch.setenv("RAY_NODE_TYPE_NAME", "gpu_worker_spot")
    got = placement(cuda=False, cpus=4.0, gpus=2.0)  # a data-parallel trial: its workers' total
    assert (got["node_type"], got["held_cpus"], got["held_gpus"]) == ("gpu_worker_spot", 4.0, 2.0)
