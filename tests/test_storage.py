"""Stores and the shard commit protocol, on a local folder and on a real S3 server (moto).

What must hold: nothing under a final name until the marker exists; exactly one attempt wins a shard
and the others clean up and change nothing; a crash at any step is completed or cleaned by the next
commit / finalize / remove_orphans; keys never leave the output root; no credential is ever written."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.shards import ShardRow, ShardSample, write_shard_table, write_tar
from pipeline.storage import (
    LocalFile,
    LocalStore,
    ObjectNotFound,
    S3Config,
    S3Store,
    ShardIntegrityError,
    StorageError,
    open_store,
)
from pipeline.storage import commit as commit_module
from pipeline.storage.layout import marker_key, rejected_key, table_key, tar_key

pytest_plugins = ["s3_fixtures"]

REPO = Path(__file__).resolve().parents[1]
SMALL_PARTS = {"multipart_threshold_mib": 5, "multipart_chunksize_mib": 5}


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        return LocalStore(tmp_path / "output")
    bucket = request.getfixturevalue("s3_bucket")  # endpoint and credentials come from the env
    return S3Store(bucket.name, "runs/r1", S3Config(**SMALL_PARTS))


def build_shard(folder: Path, shard_id: int, attempt: str, *, samples: int = 3, payload: int = 0) -> dict:
    """A shard's local files as the worker builds them: the tar is the same for every attempt (same
    samples), the table records the attempt id, so the files of different attempts differ."""
    folder = folder / f"{shard_id}-{attempt}"
    rng = np.random.default_rng(shard_id)
    uids = [hashlib.sha256(f"{shard_id}/{n}".encode()).hexdigest()[:32] for n in range(samples)]
    images = [rng.bytes(payload or 64) for _ in uids]
    write_tar(
        [
            ShardSample(uid, image, "png", {"n": n})
            for n, (uid, image) in enumerate(zip(uids, images, strict=True))
        ],
        folder / "kept.tar",
    )
    rows = [ShardRow(uid, "kept", meta={"attempt_id": attempt}) for uid in uids]
    stats = write_shard_table(rows, folder / "rows.parquet", shard_id)
    return {"tar": folder / "kept.tar", "table": folder / "rows.parquet", "summary": stats.counts()}


def read_final(store, key: str) -> bytes:
    return store.get_bytes(key)


def commit_dying_after_one_publish(store, shard_id: int, files: dict, monkeypatch, **overrides) -> None:
    """Commit `files` as attempt "winner" and die after publishing one of them: the marker exists, the
    shard is half published."""
    publish = store.publish
    published = []

    def crash_after_one(source, destination, size, sha256):
        if published:
            raise RuntimeError("worker died while publishing")
        publish(source, destination, size, sha256)
        published.append(destination)

    with monkeypatch.context() as patch:
        patch.setattr(store, "publish", crash_after_one)
        with pytest.raises(RuntimeError, match="died while publishing"):
            store.commit_shard(shard_id, attempt_id="winner", **{**files, **overrides})


def keys(store, prefix: str = "") -> list[str]:
    return [info.key for info in store.list(prefix)]


def assert_published(store, shard_id: int, files: dict, marker) -> None:
    """Final names hold exactly the given local files, and the marker describes them."""
    for key, local in ((tar_key(shard_id), files["tar"]), (table_key(shard_id), files["table"])):
        data = local.read_bytes()
        assert store.get_bytes(key) == data
        assert marker.files[key].size == len(data)
        assert marker.files[key].sha256 == hashlib.sha256(data).hexdigest()
    assert keys(store, "_attempts/") == []


# --- plain object operations ----------------------------------------------------------------------------


def test_object_operations(store, tmp_path):
    store.put_bytes("run.json", b'{"a": 1}')
    store.put_bytes("logs/run-1.log", b"line\n")
    (tmp_path / "plan.parquet").write_bytes(b"x" * 1000)
    info = store.put_file("plan.parquet", tmp_path / "plan.parquet")
    assert (info.size, info.sha256) == (1000, hashlib.sha256(b"x" * 1000).hexdigest())
    assert store.get_bytes("run.json") == b'{"a": 1}'
    assert store.exists("run.json") and not store.exists("nothing.json")
    assert store.head("nothing.json") is None
    assert store.head("logs/run-1.log").size == 5
    assert keys(store) == ["logs/run-1.log", "plan.parquet", "run.json"]
    assert keys(store, "logs/") == ["logs/run-1.log"]
    with store.open("plan.parquet") as file:
        file.seek(990)
        assert file.read() == b"x" * 10
        file.seek(-4, os.SEEK_END)
        assert file.read(100) == b"xxxx"
    store.put_bytes("run.json", b"{}")  # overwrite
    assert store.get_bytes("run.json") == b"{}"
    store.delete(["run.json", "never-existed.json"])
    assert keys(store) == ["logs/run-1.log", "plan.parquet"]
    with pytest.raises(ObjectNotFound, match="run.json"):
        store.get_bytes("run.json")


@pytest.mark.parametrize(
    "key", ["../escape", "/abs/path", "a/../../b", "a//b", "a\\b", ".hidden", "a/./b", ""]
)
def test_keys_cannot_leave_the_output_root(store, tmp_path, key):
    for operation in (
        lambda: store.put_bytes(key, b"x"),
        lambda: store.get_bytes(key),
        lambda: store.head(key),
        lambda: store.delete([key]),
        lambda: store.create_if_absent(key, b"x"),
    ):
        with pytest.raises(ValueError, match="invalid object key"):
            operation()
    assert keys(store) == []
    if isinstance(store, LocalStore):
        assert [p.name for p in tmp_path.iterdir()] == []  # nothing written next to or above the root


def test_s3_prefix_scopes_every_key(s3_bucket):
    store = S3Store(s3_bucket.name, "team/run-7/")
    store.put_bytes("run.json", b"{}")
    assert s3_bucket.object_keys() == ["team/run-7/run.json"]
    assert keys(store) == ["run.json"]
    assert store.url("run.json") == f"s3://{s3_bucket.name}/team/run-7/run.json"


# --- commit ------------------------------------------------------------------------------------------------


def test_commit_publishes_the_shard_and_the_marker_describes_it(store, tmp_path):
    files = build_shard(tmp_path, 3, "attempt-a")
    result = store.commit_shard(
        3, tar=files["tar"], table=files["table"], summary=files["summary"], attempt_id="attempt-a"
    )
    assert result.won and result.committed and result.attempt_id == "attempt-a"
    marker = result.marker
    assert (marker.shard_id, marker.attempt_id, marker.summary) == (3, "attempt-a", files["summary"])
    assert set(marker.files) == {tar_key(3), table_key(3)}
    assert all(
        entry.attempt_key.startswith("_attempts/shard-000003/attempt-a/") for entry in marker.files.values()
    )
    assert_published(store, 3, files, marker)
    assert store.committed_shards() == {3: marker}
    assert store.read_marker(3) == marker and store.read_marker(4) is None
    assert keys(store) == [marker_key(3), table_key(3), tar_key(3)]


def test_rejected_tar_is_committed_with_the_shard(store, tmp_path):
    files = build_shard(tmp_path, 0, "a")
    rejected = build_shard(tmp_path / "rejected", 0, "a", samples=2)["tar"]
    result = store.commit_shard(
        0,
        tar=files["tar"],
        table=files["table"],
        rejected=LocalFile.from_path(rejected),
        summary=files["summary"],
    )
    assert store.get_bytes(rejected_key(0)) == rejected.read_bytes()
    assert result.marker.files[rejected_key(0)].size == rejected.stat().st_size


def test_a_second_attempt_loses_and_changes_nothing(store, tmp_path):
    first = build_shard(tmp_path, 1, "first")
    second = build_shard(tmp_path, 1, "second")
    won = store.commit_shard(
        1, tar=first["tar"], table=first["table"], summary={"kept": 3}, attempt_id="first"
    )
    before = {key: store.get_bytes(key) for key in keys(store)}
    lost = store.commit_shard(
        1, tar=second["tar"], table=second["table"], summary={"kept": 0}, attempt_id="second"
    )
    assert won.won and not lost.won
    assert lost.marker == won.marker and lost.attempt_id == "second"
    assert {key: store.get_bytes(key) for key in keys(store)} == before
    assert pq.read_table(store.open(table_key(1))).column("attempt_id").to_pylist() == ["first"] * 3


def test_racing_attempts_commit_exactly_once(store, tmp_path, monkeypatch):
    attempts = ["racer-a", "racer-b"]
    files = {attempt: build_shard(tmp_path, 5, attempt) for attempt in attempts}
    both_uploaded = threading.Barrier(2, timeout=30)
    create = store.create_if_absent

    def create_together(key, data):
        both_uploaded.wait()  # both attempts reach the commit point with their uploads done
        return create(key, data)

    monkeypatch.setattr(store, "create_if_absent", create_together)
    results, errors = {}, []

    def run(attempt):
        try:
            f = files[attempt]
            results[attempt] = store.commit_shard(
                5, tar=f["tar"], table=f["table"], summary={}, attempt_id=attempt
            )
        except BaseException as error:  # surfaced below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(attempt,)) for attempt in attempts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    winners = [attempt for attempt in attempts if results[attempt].won]
    assert len(winners) == 1
    winner = winners[0]
    marker = store.read_marker(5)
    assert marker.attempt_id == winner and all(result.marker == marker for result in results.values())
    assert_published(store, 5, files[winner], marker)  # never the loser's table
    assert keys(store) == [marker_key(5), table_key(5), tar_key(5)]


def test_conditional_create_gets_412_when_the_marker_exists(s3_bucket):
    from botocore.exceptions import ClientError

    store = S3Store(s3_bucket.name, "out")
    assert store.create_if_absent("_SUCCESS/shard-000000.json", b"first")
    with pytest.raises(ClientError) as raised:
        s3_bucket.client.put_object(
            Bucket=s3_bucket.name, Key="out/_SUCCESS/shard-000000.json", Body=b"x", IfNoneMatch="*"
        )
    assert raised.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412
    assert not store.create_if_absent("_SUCCESS/shard-000000.json", b"second")
    assert s3_bucket.read("out/_SUCCESS/shard-000000.json") == b"first"


def test_an_attempt_that_sees_no_marker_loses_on_412_and_cleans_up(s3_bucket, tmp_path, monkeypatch):
    """The race the early marker check cannot see: the marker appears after the check."""
    store = S3Store(s3_bucket.name, "out")
    winner = build_shard(tmp_path, 2, "winner")
    late = build_shard(tmp_path, 2, "late")
    store.commit_shard(2, tar=winner["tar"], table=winner["table"], summary={}, attempt_id="winner")
    real_read_marker = commit_module.read_marker
    calls = []

    def stale_first_read(store_, shard_id):
        calls.append(shard_id)
        return None if len(calls) == 1 else real_read_marker(store_, shard_id)

    monkeypatch.setattr(commit_module, "read_marker", stale_first_read)
    statuses = []

    def record(http_response, **_):
        statuses.append(http_response.status_code)

    events = store._client.meta.events
    events.register("after-call.s3.PutObject", record)
    try:
        result = store.commit_shard(2, tar=late["tar"], table=late["table"], summary={}, attempt_id="late")
    finally:
        events.unregister("after-call.s3.PutObject", record)
    assert statuses == [200, 200, 412]  # two attempt uploads, then the conditional marker PUT
    assert not result.won and result.marker.attempt_id == "winner"
    assert s3_bucket.object_keys("out/_attempts/") == []  # the late attempt's uploads are gone
    assert_published(store, 2, winner, result.marker)


def test_upload_interrupted_by_an_error_leaves_no_visible_shard(store, tmp_path):
    files = build_shard(tmp_path, 4, "doomed", payload=6 * 1024 * 1024)  # a 12 MiB tar: multipart on S3
    if isinstance(store, S3Store):  # botocore would retry the broken part upload 10 times
        store = S3Store(store.bucket, store.prefix, S3Config(max_attempts=1, **SMALL_PARTS))
    sent = []

    def fail_midway(count):
        sent.append(count)
        if sum(sent) > 4 * 1024 * 1024:
            raise ConnectionAbortedError("network gone mid-upload")

    with pytest.raises((ConnectionAbortedError, StorageError), match="network gone mid-upload"):
        store.commit_shard(4, tar=files["tar"], table=files["table"], summary={}, progress=fail_midway)
    assert keys(store) == []  # no marker, nothing under a final name, no attempt objects
    if isinstance(store, S3Store):
        assert store._client.list_multipart_uploads(Bucket=store.bucket).get("Uploads", []) == []
    else:
        assert [p for p in store.root.rglob("*") if p.is_file()] == []  # no temp files either
    result = store.commit_shard(4, tar=files["tar"], table=files["table"], summary={})
    assert result.won
    assert_published(store, 4, files, result.marker)


@pytest.mark.slow
def test_process_killed_mid_upload_leaves_no_visible_shard_and_a_rerun_commits(s3_bucket, tmp_path):
    files = build_shard(tmp_path, 6, "killed", payload=8 * 1024 * 1024)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from pipeline.storage import S3Config, S3Store\n"
        "store = S3Store(sys.argv[1], 'out', S3Config(max_concurrency=1, multipart_threshold_mib=5,"
        " multipart_chunksize_mib=5))\n"
        "def slow(count):\n"
        "    print('sending', flush=True)\n"
        "    time.sleep(0.2)\n"
        "store.commit_shard(6, tar=Path(sys.argv[2]), table=Path(sys.argv[3]), summary={}, progress=slow)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script, s3_bucket.name, str(files["tar"]), str(files["table"])],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        assert child.stdout.readline() == b"sending\n", child.stderr.read().decode()
        time.sleep(0.3)  # a part or two in flight
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
    store = S3Store(s3_bucket.name, "out", S3Config(**SMALL_PARTS))
    assert [key for key in s3_bucket.object_keys() if not key.startswith("out/_attempts/")] == []
    assert len(s3_bucket.multipart_uploads()) == 1  # invisible to readers, but holding parts
    assert store.abort_stale_multipart_uploads(older_than=timedelta(0)) == 1
    assert s3_bucket.multipart_uploads() == []
    result = store.commit_shard(6, tar=files["tar"], table=files["table"], summary={})
    assert result.won
    store.remove_orphans(older_than=timedelta(0))
    assert_published(store, 6, files, result.marker)


def test_crash_before_the_marker_is_redone_and_its_orphans_removed(store, tmp_path, monkeypatch):
    crashed = build_shard(tmp_path, 7, "crashed")
    rerun = build_shard(tmp_path, 7, "rerun")

    def crash(key, data):
        raise RuntimeError("worker died before the marker")

    with monkeypatch.context() as patch:
        patch.setattr(store, "create_if_absent", crash)
        with pytest.raises(RuntimeError, match="worker died"):
            store.commit_shard(
                7, tar=crashed["tar"], table=crashed["table"], summary={}, attempt_id="crashed"
            )
    leftovers = keys(store, "_attempts/")
    assert leftovers == [
        f"_attempts/shard-000007/crashed/{table_key(7)}",
        f"_attempts/shard-000007/crashed/{tar_key(7)}",
    ]
    assert store.committed_shards() == {} and not store.exists(tar_key(7))

    result = store.commit_shard(7, tar=rerun["tar"], table=rerun["table"], summary={}, attempt_id="rerun")
    assert result.won
    assert store.remove_orphans() == []  # younger than the default age: could still be uploading
    assert store.remove_orphans(older_than=timedelta(0)) == leftovers
    assert_published(store, 7, rerun, result.marker)


@pytest.mark.parametrize("completer", ["finalize", "next commit"])
def test_crash_after_the_marker_is_completed_from_the_marked_attempt(store, tmp_path, monkeypatch, completer):
    winner = build_shard(tmp_path, 8, "winner")
    other = build_shard(tmp_path, 8, "other")
    commit_dying_after_one_publish(store, 8, winner, monkeypatch, summary={"kept": 3})
    assert store.read_marker(8).attempt_id == "winner"
    assert len(keys(store, "shards/") + keys(store, "metadata/")) == 1  # one of two files published

    if completer == "finalize":
        assert store.finalize() == [8]
        assert store.finalize() == []  # nothing left to do
        marker = store.read_marker(8)
    else:
        result = store.commit_shard(8, tar=other["tar"], table=other["table"], summary={}, attempt_id="other")
        assert not result.won
        marker = result.marker
    assert_published(store, 8, winner, marker)


def test_a_marker_whose_objects_are_gone_is_reported(store, tmp_path, monkeypatch):
    files = build_shard(tmp_path, 9, "gone")
    with monkeypatch.context() as patch:
        patch.setattr(store, "publish", lambda *args: (_ for _ in ()).throw(RuntimeError("crash")))
        with pytest.raises(RuntimeError):
            store.commit_shard(9, tar=files["tar"], table=files["table"], summary={}, attempt_id="gone")
    store.delete(keys(store, "_attempts/"))
    with pytest.raises(
        ShardIntegrityError, match="shard 9: .*shard-000009.json names attempt gone.*delete the marker"
    ):
        store.finalize()


def test_remove_orphans_deletes_final_names_no_marker_accounts_for(store, tmp_path):
    files = build_shard(tmp_path, 1, "a")
    store.commit_shard(1, tar=files["tar"], table=files["table"], summary={})
    store.put_bytes(tar_key(2), b"half a tar from some other tool")  # no marker for shard 2
    store.put_bytes(rejected_key(1), b"not in shard 1's marker")
    store.put_bytes("shards/README.txt", b"not a shard file: left alone")
    store.put_bytes("_attempts/shard-000003/zombie/shards/shard-000003.tar", b"lost attempt")
    removed = store.remove_orphans(older_than=timedelta(0))
    assert sorted(removed) == sorted(
        [tar_key(2), rejected_key(1), "_attempts/shard-000003/zombie/shards/shard-000003.tar"]
    )
    assert keys(store) == [marker_key(1), table_key(1), "shards/README.txt", tar_key(1)]


def test_remove_orphans_spares_a_shard_committed_while_it_lists(tmp_path):
    """A commit that lands while remove_orphans lists: its final names must not be taken for orphans.
    LocalStore.publish keeps the upload's mtime, so a slow commit's files are older than the cutoff."""
    files = build_shard(tmp_path, 3, "slow")
    root = tmp_path / "output"

    class CommitDuringListing(LocalStore):
        def list(self, prefix=""):
            listed = super().list(prefix)
            if prefix == "_attempts/" and not self.exists(marker_key(3)):
                LocalStore(root).commit_shard(3, tar=files["tar"], table=files["table"], summary={})
                hours_ago = time.time() - 7200
                for key in (tar_key(3), table_key(3)):
                    os.utime(root / key, (hours_ago, hours_ago))
            return listed

    assert CommitDuringListing(root).remove_orphans(older_than=timedelta(hours=1)) == []
    assert keys(LocalStore(root)) == [marker_key(3), table_key(3), tar_key(3)]


def test_a_local_file_that_changed_after_hashing_is_refused(tmp_path, request):
    path = tmp_path / "shard.tar"
    path.write_bytes(b"original bytes")
    claimed = LocalFile.from_path(path)
    path.write_bytes(b"modified bytes")
    bucket = request.getfixturevalue("s3_bucket")
    stores = [LocalStore(tmp_path / "out"), S3Store(bucket.name, "out", S3Config(verify="read"))]
    for store in stores:
        with pytest.raises(ShardIntegrityError, match="sha256"):
            store.commit_shard(0, tar=claimed, table=claimed, summary={})
        assert keys(store) == []


def test_summary_must_be_json(store, tmp_path):
    files = build_shard(tmp_path, 0, "a")
    with pytest.raises(ValueError, match="shard 0: the commit summary must be plain JSON"):
        store.commit_shard(0, tar=files["tar"], table=files["table"], summary={"when": object()})


# --- fallback without conditional writes -------------------------------------------------------------------


def test_fallback_without_conditional_writes_still_picks_one_winner(s3_bucket, tmp_path, monkeypatch):
    config = S3Config(conditional_writes=False, **SMALL_PARTS)
    store = S3Store(s3_bucket.name, "out", config)
    first, second = build_shard(tmp_path, 0, "first"), build_shard(tmp_path, 0, "second")
    assert store.commit_shard(0, tar=first["tar"], table=first["table"], summary={}, attempt_id="first").won
    assert not store.commit_shard(
        0, tar=second["tar"], table=second["table"], summary={}, attempt_id="second"
    ).won

    # Both HEAD before either PUTs, and both PUT before either reads back: the read-back decides.
    files = {attempt: build_shard(tmp_path, 1, attempt) for attempt in ("x", "y")}
    together = threading.Barrier(2, timeout=30)
    put_marker = store._put_marker

    def put_together(key, data):
        together.wait()  # both have seen no marker (HEAD)
        outcome = put_marker(key, data)
        together.wait()  # both have PUT; the later PUT is what both read back
        return outcome

    monkeypatch.setattr(store, "_put_marker", put_together)
    results = {}
    threads = [
        threading.Thread(
            target=lambda a=attempt: results.__setitem__(
                a,
                store.commit_shard(1, tar=files[a]["tar"], table=files[a]["table"], summary={}, attempt_id=a),
            )
        )
        for attempt in files
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(result.won for result in results.values()) == [False, True]
    winner = next(attempt for attempt, result in results.items() if result.won)
    assert store.read_marker(1).attempt_id == winner
    assert_published(store, 1, files[winner], store.read_marker(1))


# --- stale uploads ------------------------------------------------------------------------------------------


def test_abort_stale_multipart_uploads(s3_bucket):
    store = S3Store(s3_bucket.name, "out")
    s3_bucket.client.create_multipart_upload(Bucket=s3_bucket.name, Key="out/_attempts/shard-000000/a/x.tar")
    s3_bucket.client.create_multipart_upload(Bucket=s3_bucket.name, Key="elsewhere/x.tar")  # not ours
    # moto reports every upload as initiated in 2010, so any age counts as stale here; SeaweedFS's real
    # timestamps are checked in test_storage_seaweedfs.
    assert store.abort_stale_multipart_uploads(older_than=timedelta(hours=1)) == 1
    assert [upload["Key"] for upload in s3_bucket.multipart_uploads()] == ["elsewhere/x.tar"]


def test_an_upload_that_vanishes_during_the_sweep_does_not_stop_it(s3_bucket, monkeypatch):
    store = S3Store(s3_bucket.name, "out")
    for name in ("a", "b"):
        s3_bucket.client.create_multipart_upload(Bucket=s3_bucket.name, Key=f"out/_attempts/x/{name}.tar")
    abort = store._client.abort_multipart_upload
    swept = []

    def concurrent_sweep_got_the_first(**request):
        if not swept:  # another sweeper aborts it between our listing and our abort: NoSuchUpload
            abort(**request)
        swept.append(request["Key"])
        return abort(**request)

    monkeypatch.setattr(store._client, "abort_multipart_upload", concurrent_sweep_got_the_first)
    assert store.abort_stale_multipart_uploads(older_than=timedelta(hours=1)) == 1
    assert len(swept) == 2 and s3_bucket.multipart_uploads() == []


def test_local_stale_temp_files_are_removed(tmp_path):
    store = LocalStore(tmp_path)
    store.put_bytes("shards/shard-000000.tar", b"done")
    temp = tmp_path / "shards" / ".shard-000001.tar.tmp-0123"
    temp.write_bytes(b"half")
    assert store.abort_stale_multipart_uploads() == 0  # fresh: its writer may still be running
    old = time.time() - 7200
    os.utime(temp, (old, old))
    assert store.abort_stale_multipart_uploads() == 1
    assert not temp.exists() and store.exists("shards/shard-000000.tar")


def test_local_marker_is_created_exclusively(tmp_path):
    store = LocalStore(tmp_path)
    assert store.create_if_absent("_SUCCESS/shard-000000.json", b"one")
    assert not store.create_if_absent("_SUCCESS/shard-000000.json", b"two")
    assert (tmp_path / "_SUCCESS" / "shard-000000.json").read_bytes() == b"one"
    assert sorted(p.name for p in (tmp_path / "_SUCCESS").iterdir()) == ["shard-000000.json"]


# --- opening stores and S3 configuration --------------------------------------------------------------------


def test_open_store_picks_the_store_by_scheme(tmp_path, s3_env, monkeypatch):
    assert isinstance(open_store(tmp_path), LocalStore)
    assert open_store(f"file://{tmp_path}/out").root == tmp_path / "out"
    s3 = open_store("s3://my-bucket/some/prefix/", addressing_style="path")
    assert (s3.bucket, s3.prefix, s3.uri) == ("my-bucket", "some/prefix", "s3://my-bucket/some/prefix")
    assert s3.config.addressing_style == "path"
    monkeypatch.setenv("STYLEGEN_S3_MAX_CONCURRENCY", "3")
    monkeypatch.setenv("STYLEGEN_S3_CONDITIONAL_WRITES", "false")
    s3 = open_store("s3://my-bucket", s3_config=S3Config(max_concurrency=5), verify="read")
    assert (s3.config.max_concurrency, s3.config.conditional_writes, s3.config.verify) == (5, False, "read")
    with pytest.raises(ValueError, match="unsupported output URI scheme 'gs'"):
        open_store("gs://bucket/x")
    with pytest.raises(ValueError, match=r"options \['endpoint_url'\] only apply to s3://"):
        open_store(tmp_path, endpoint_url="http://x")
    with pytest.raises(ValueError, match="names no bucket"):
        open_store("s3:///prefix")
    monkeypatch.setenv("STYLEGEN_S3_ENDPIONT_URL", "http://typo")
    with pytest.raises(ValueError, match="STYLEGEN_S3_ENDPIONT_URL"):
        open_store("s3://my-bucket")


def test_credentials_are_refused_as_options_without_echoing_them(s3_env):
    secret = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"
    for name in ("aws_secret_access_key", "aws_access_key_id", "session_token"):
        with pytest.raises(ValueError) as raised:
            open_store("s3://bucket/x", **{name: secret})
        assert "looks like a credential" in str(raised.value) and secret not in str(raised.value)
    with pytest.raises(ValueError) as raised:
        S3Config(endpoint_url="http://x", unknown_option=secret)
    assert secret not in str(raised.value)


def test_one_client_per_process(s3_bucket):
    a = S3Store(s3_bucket.name, "a")
    b = open_store(f"s3://{s3_bucket.name}/b")
    assert a._client is b._client
    assert S3Store(s3_bucket.name, "c", S3Config(max_attempts=2))._client is not a._client
    retries = a._client.meta.config.retries
    assert retries["mode"] == "adaptive" and retries["total_max_attempts"] == 10


def test_no_credential_is_ever_written(s3_bucket, tmp_path):
    from s3_fixtures import MOTO_KEY, MOTO_SECRET

    store = S3Store(s3_bucket.name, "out")
    files = build_shard(tmp_path, 0, "a")
    store.commit_shard(0, tar=files["tar"], table=files["table"], summary={"kept": 3})
    for key in s3_bucket.object_keys():
        data = s3_bucket.read(key)
        assert MOTO_SECRET.encode() not in data and MOTO_KEY.encode() not in data
    assert MOTO_SECRET not in repr(store) and MOTO_SECRET not in store.config.model_dump_json()


@pytest.mark.parametrize("when", ["after mkdir", "within mkdir"])
def test_a_commit_survives_another_writers_pruning_of_the_folder_it_just_made(tmp_path, monkeypatch, when):
    """Workers sharing a local output: one attempt's cleanup prunes empty `_attempts/` folders while
    another has just created them (it raised FileNotFoundError). The race, made to happen every time."""
    store = LocalStore(tmp_path / "output")
    files = build_shard(tmp_path, 3, "a3")
    real_mkdir, pruned, depth = Path.mkdir, [], []

    def mkdir_then_pruned_once(self, *args, **kwargs):
        depth.append(self)
        try:
            real_mkdir(self, *args, **kwargs)  # with parents=True it recurses through this function
        finally:
            depth.pop()
        inner = bool(depth)  # a level made inside mkdir's own recursion, before its child
        if inner != (when == "within mkdir") or "_attempts" not in self.parts or pruned:
            return
        pruned.append(self)  # the other writer's delete prunes it right away
        while self != store.root and not any(self.iterdir()):
            self.rmdir()
            self = self.parent

    monkeypatch.setattr(Path, "mkdir", mkdir_then_pruned_once)
    assert store.commit_shard(3, attempt_id="a3", **files).won
    assert pruned and sorted(store.committed_shards()) == [3] and keys(store, "_attempts/") == []
