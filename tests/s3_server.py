"""A real S3-compatible server for the tests: moto's standalone server (`moto[server]`, the one
s3fs's own suite runs against), started as a separate process on 127.0.0.1. Clients reach it
only through what a user would set: AWS_ENDPOINT_URL and the AWS credential variables."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

# A value a test can search for: it must never be written anywhere by the project.
SECRET = "test-secret-" + uuid.uuid4().hex
KEY_ID = "AKIDTESTONLY0000"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            return proc, url
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError("moto server exited at start")
            time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"moto server did not answer on {url}")


@pytest.fixture(scope="session")
def s3_endpoint():
    try:
        import moto  # noqa: F401
    except ImportError:  # fails, never skips: CI must run these (tests/install_and_run.sh installs it)
        pytest.fail('moto is not installed; pip install -e ".[test,s3]"')
    proc, url = start_server()
    yield url
    proc.terminate()
    proc.wait(10)


def client_env(endpoint: str) -> dict[str, str]:
    """The environment a user sets for a non-AWS store."""
    return {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
            "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """This test's environment points at the server, with a fresh bucket; yields the bucket URL."""
    for key, value in client_env(s3_endpoint).items():
        monkeypatch.setenv(key, value)
    from core import storage

    storage._filesystem.cache_clear()
    bucket = "t-" + uuid.uuid4().hex[:12]
    storage.filesystem().mkdir(bucket)
    yield f"s3://{bucket}"
    storage._filesystem.cache_clear()
