"""The commit protocol against a real S3 server that enforces auth: SeaweedFS (`weed mini`).

SeaweedFS 4.48 honours If-None-Match: * (412 PreconditionFailed), so the conditional path is the one
used; the HEAD-then-PUT fallback is exercised here as well. The one-writer lease (pipeline/run/lease.py)
rests on the same conditional create: two driver processes racing for one output get one lease."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path

import pytest
from test_storage import assert_published, build_shard, keys

from pipeline.storage import S3Config, S3Store, StorageError
from pipeline.storage.layout import marker_key, table_key, tar_key

pytest_plugins = ["s3_fixtures"]
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SMALL_PARTS = {"multipart_threshold_mib": 5, "multipart_chunksize_mib": 5}


def test_seaweedfs_honours_if_none_match(seaweedfs_bucket):
    from botocore.exceptions import ClientError

    client, name = seaweedfs_bucket.client, seaweedfs_bucket.name
    client.put_object(Bucket=name, Key="marker.json", Body=b"first", IfNoneMatch="*")
    with pytest.raises(ClientError) as raised:
        client.put_object(Bucket=name, Key="marker.json", Body=b"second", IfNoneMatch="*")
    assert raised.value.response["Error"]["Code"] == "PreconditionFailed"
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert seaweedfs_bucket.read("marker.json") == b"first"


@pytest.mark.parametrize("conditional_writes", [True, False])
def test_commit_and_crash_recovery_on_seaweedfs(seaweedfs_bucket, tmp_path, monkeypatch, conditional_writes):
    config = S3Config(conditional_writes=conditional_writes, **SMALL_PARTS)
    store = S3Store(seaweedfs_bucket.name, "out", config)

    # Multipart-sized shard, committed; a duplicate attempt loses and changes nothing.
    first = build_shard(tmp_path, 0, "first", payload=3 * 1024 * 1024)
    won = store.commit_shard(
        0, tar=first["tar"], table=first["table"], summary={"kept": 3}, attempt_id="first"
    )
    assert won.won
    again = build_shard(tmp_path, 0, "again")
    assert not store.commit_shard(
        0, tar=again["tar"], table=again["table"], summary={}, attempt_id="again"
    ).won
    assert_published(store, 0, first, won.marker)

    # A crash before the marker: the rerun commits, remove_orphans clears the crashed attempt.
    crashed, rerun = build_shard(tmp_path, 2, "crashed"), build_shard(tmp_path, 2, "rerun")
    with monkeypatch.context() as patch:
        patch.setattr(store, "create_if_absent", lambda key, data: 1 / 0)
        with pytest.raises(ZeroDivisionError):
            store.commit_shard(
                2, tar=crashed["tar"], table=crashed["table"], summary={}, attempt_id="crashed"
            )
    result = store.commit_shard(2, tar=rerun["tar"], table=rerun["table"], summary={}, attempt_id="rerun")
    assert sorted(store.remove_orphans(older_than=timedelta(0))) == [
        f"_attempts/shard-000002/crashed/{table_key(2)}",
        f"_attempts/shard-000002/crashed/{tar_key(2)}",
    ]
    assert_published(store, 2, rerun, result.marker)
    assert sorted(store.committed_shards()) == [0, 2]
    assert keys(store, "_SUCCESS/") == [marker_key(0), marker_key(2)]


def test_racing_attempts_commit_exactly_once_on_seaweedfs(seaweedfs_bucket, tmp_path, monkeypatch):
    """With conditional writes only: without them, this interleaving is the fallback's documented race."""
    store = S3Store(seaweedfs_bucket.name, "out", S3Config(**SMALL_PARTS))
    files = {attempt: build_shard(tmp_path, 1, attempt) for attempt in ("a", "b")}
    together = threading.Barrier(2, timeout=30)
    create = store.create_if_absent

    def create_together(key, data):
        together.wait()
        return create(key, data)

    monkeypatch.setattr(store, "create_if_absent", create_together)
    results = {}

    def run(attempt):
        f = files[attempt]
        results[attempt] = store.commit_shard(
            1, tar=f["tar"], table=f["table"], summary={}, attempt_id=attempt
        )

    threads = [threading.Thread(target=run, args=(attempt,)) for attempt in files]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(result.won for result in results.values()) == [False, True]
    marker = store.read_marker(1)
    assert_published(store, 1, files[marker.attempt_id], marker)
    assert keys(store) == [marker_key(1), table_key(1), tar_key(1)]


def test_shards_on_seaweedfs_stream_into_webdataset(seaweedfs_bucket, tmp_path):
    import webdataset as wds

    store = S3Store(seaweedfs_bucket.name, "out")
    uids = Counter()
    for shard_id in range(2):
        files = build_shard(tmp_path, shard_id, "a", samples=4)
        store.commit_shard(shard_id, tar=files["tar"], table=files["table"], summary={})
    urls = [
        seaweedfs_bucket.client.generate_presigned_url(
            "get_object", Params={"Bucket": seaweedfs_bucket.name, "Key": f"out/{tar_key(shard_id)}"}
        )
        for shard_id in range(2)
    ]
    for record in wds.WebDataset(urls, shardshuffle=False):
        uids[record["__key__"]] += 1
    assert len(uids) == 8 and set(uids.values()) == {1}


def test_stale_multipart_uploads_respect_their_age(seaweedfs_bucket):
    store = S3Store(seaweedfs_bucket.name, "out")
    seaweedfs_bucket.client.create_multipart_upload(Bucket=seaweedfs_bucket.name, Key="out/_attempts/x/y.tar")
    assert store.abort_stale_multipart_uploads(older_than=timedelta(hours=1)) == 0  # fresh: may be running
    assert len(seaweedfs_bucket.multipart_uploads()) == 1
    assert store.abort_stale_multipart_uploads(older_than=timedelta(0)) == 1
    assert seaweedfs_bucket.multipart_uploads() == []


def test_wrong_credentials_give_a_clear_error_without_the_secret(
    seaweedfs_server, seaweedfs_bucket, monkeypatch
):
    wrong_secret = "WRONG-" + seaweedfs_server.secret_key[::-1]
    store_uri = seaweedfs_bucket.uri("out")

    # A wrong key id: this process gets a fresh client for the new identity.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-known-key")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", wrong_secret)
    with pytest.raises(StorageError) as raised:
        S3Store(seaweedfs_bucket.name, "out").committed_shards()
    message = str(raised.value)
    assert f"list {store_uri}/_SUCCESS/" in message and "InvalidAccessKeyId" in message
    assert "check the credentials in the standard AWS chain" in message
    for text in (message, repr(raised.value)):
        assert wrong_secret not in text and seaweedfs_server.secret_key not in text

    # The right key id with a wrong secret, through the CLI in a fresh process.
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweedfs_server.access_key)
    script = "import typer; from pipeline.cli.status import status; typer.run(status)"
    run = subprocess.run(
        [sys.executable, "-c", script, store_uri, "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    output = run.stdout + run.stderr
    assert run.returncode == 2, output
    assert "SignatureDoesNotMatch" in output and "check the credentials" in output
    assert wrong_secret not in output and seaweedfs_server.secret_key not in output
    assert "Traceback" not in output
    with pytest.raises(json.JSONDecodeError):
        json.loads(run.stdout or "not json")


DRIVER = """
import sys, time
from pipeline.run.lease import LeaseHeld, OutputLease
from pipeline.storage import S3Config, S3Store

store = S3Store(sys.argv[1], "runs/r1", S3Config())
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))  # both drivers start at the same moment
lease = OutputLease(store, ttl_s=60)
try:
    lease.acquire()
except LeaseHeld as error:
    print("refused:", error, flush=True)
    sys.exit(0)
print("holds:", lease.holder["pid"], flush=True)
sys.stdin.readline()  # until the test has seen the other driver refused
lease.release()
"""


def test_two_drivers_racing_for_one_output_get_one_lease_on_seaweedfs(seaweedfs_bucket):
    import os
    import time

    for _ in range(3):  # the race, a few times
        start = str(time.time() + 2.0)
        drivers = [
            subprocess.Popen(
                [sys.executable, "-c", DRIVER, seaweedfs_bucket.name, start],
                cwd=REPO,
                env={**os.environ, "PYTHONPATH": str(REPO)},
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        try:
            said = [driver.stdout.readline().strip() for driver in drivers]
            holders = [line.removeprefix("holds: ") for line in said if line.startswith("holds: ")]
            assert len(holders) == 1, said
            refused = next(line for line in said if not line.startswith("holds: "))
            assert refused.startswith("refused: ") and f"another driver (pid {holders[0]} on" in refused
            lease = json.loads(seaweedfs_bucket.read("runs/r1/_lease.json"))
            assert lease["pid"] == int(holders[0])
        finally:
            for driver in drivers:
                driver.communicate("\n", timeout=60)
        assert [driver.returncode for driver in drivers] == [0, 0]
        assert seaweedfs_bucket.object_keys("runs/r1/") == []  # released by its holder
