"""Without --verbose, Ray's own output stays off the console (issue 18 point 8)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.driver.sweep import quiet_ray

ROOT = Path(__file__).resolve().parents[2]


def test_quiet_ray_selects_tunes_silent_output_and_mutes_its_logs(monkeypatch):
    from ray.tune.experimental.output import get_air_verbosity

    monkeypatch.delenv("RAY_AIR_NEW_OUTPUT", raising=False)
    auth = logging.getLogger("ray._private.authentication.authentication_token_setup")
    monkeypatch.setattr(auth, "level", logging.NOTSET)
    monkeypatch.setattr(logging.getLogger("ray.tune"), "level", logging.NOTSET)
    quiet_ray(verbose=True)  # --verbose: Tune's own tables, untouched
    assert get_air_verbosity(0) is not None and "RAY_AIR_NEW_OUTPUT" not in os.environ
    quiet_ray(verbose=False)
    # the new engine's reporter prints the "Configuration for experiment" box and "View detailed
    # results here" at every verbosity; None selects the legacy one, silent at verbose=0
    assert get_air_verbosity(0) is None
    assert not auth.isEnabledFor(logging.WARNING)
    assert not logging.getLogger("ray.tune").isEnabledFor(logging.INFO)


_TUNER = """
import ray
from ray import tune
from orchestrator.driver.sweep import quiet_ray
quiet_ray(verbose=False)
ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
def f(config):
    tune.report({"x": config["a"]})
tune.Tuner(f, param_space={"a": tune.grid_search([1, 2])},
           run_config=tune.RunConfig(storage_path=__import__("sys").argv[1], verbose=0)).fit()
print("DONE")
"""


@pytest.mark.slow
def test_a_tuner_run_prints_none_of_rays_noise(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("RAY_AIR_NEW_OUTPUT", None)
    out = subprocess.run(
        [sys.executable, "-c", _TUNER, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300
    )
    text = out.stdout + out.stderr
    assert "DONE" in out.stdout, text[-3000:]
    for noise in (
        "Configuration for experiment",
        "View detailed results here",
        "To visualize your results with TensorBoard",
        "Token authentication",
    ):
        assert noise not in text, text[-3000:]
