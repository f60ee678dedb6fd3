"""Shared fixtures: an S3-compatible server on loopback (moto in server mode, a real HTTP
S3 API, not a mocked client) for the object-storage paths."""

from __future__ import annotations

import os
import uuid

import pytest


@pytest.fixture(autouse=True)
def _wide_console(monkeypatch):
    """Console text laid out unwrapped (tests match phrases); the 80-column layout has its
    own tests, which set JIIO_CONSOLE_WIDTH themselves."""
    monkeypatch.setenv("JIIO_CONSOLE_WIDTH", "100000")


@pytest.fixture(scope="session")
def s3_endpoint():
    """``http://127.0.0.1:PORT`` of a moto S3 server for the whole test session; the AWS
    variables point pyarrow (and Ray Tune, and subprocesses that inherit them) at it."""
    server_mod = pytest.importorskip("moto.server", reason="moto[server] is needed for object-storage tests")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_ENDPOINT_URL": endpoint,
        "AWS_EC2_METADATA_DISABLED": "true",
    }
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint) -> str:
    """A fresh, empty bucket: ``s3://NAME``."""
    import pyarrow.fs as pafs

    name = f"b-{uuid.uuid4().hex[:12]}"
    pafs.S3FileSystem(endpoint_override=s3_endpoint, allow_bucket_creation=True).create_dir(name)
    return f"s3://{name}"
