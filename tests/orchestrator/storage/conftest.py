"""One storage suite, two backends: a test that takes ``root`` runs against a local
directory and against the loopback S3 server (moto in server mode, ``s3_bucket`` of
``tests/orchestrator/conftest.py``), as optuna runs one suite over all its storages."""

from __future__ import annotations

import pytest

BACKENDS = ("local", "s3")


@pytest.fixture(params=BACKENDS)
def root(request, tmp_path) -> str:
    """A fresh, empty storage root: a local directory, or a prefix in a fresh bucket."""
    if request.param == "local":
        return str(tmp_path)
    return f"{request.getfixturevalue('s3_bucket')}/res"
