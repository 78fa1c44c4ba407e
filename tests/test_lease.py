"""One writer per output (pipeline/run/lease.py): a driver holds `_lease.json` while it writes; a second
driver is told who holds it and since when and changes nothing, waits with --wait-for-lease, or takes
over a lease that lapsed. On a folder and on S3 (conditional create). `stylegen select -o NEW` takes the
same lease on NEW (dedup's test is in test_dedup.py)."""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli.app import app
from pipeline.run.lease import LeaseHeld, OutputLease
from pipeline.run_config import RunConfig
from pipeline.storage.layout import LEASE_KEY
from tests.output_fixtures import build_output
from tests.test_storage import store  # noqa: F401 - the store fixture (local and s3)

pytest_plugins = ["s3_fixtures"]


def test_a_held_lease_refuses_a_second_holder_and_lapses_when_not_renewed(store):  # noqa: F811
    first = OutputLease(store, ttl_s=30)
    first.acquire()
    try:
        with pytest.raises(LeaseHeld, match=r"being written by another driver \(pid \d+ on .*, since 20"):
            OutputLease(store, ttl_s=30).acquire()
        held = json.loads(store.get_bytes(LEASE_KEY))
        assert held["token"] == first.holder["token"] and held["since"] == first.since
    finally:
        first.release()
    assert not store.exists(LEASE_KEY)
    # a killed driver's lease: never renewed since long ago
    stale = {"host": "gone", "pid": 1, "token": "x", "since": "2020-01-01T00:00:00+00:00"}
    store.put_bytes(LEASE_KEY, json.dumps({**stale, "renewed": stale["since"], "ttl_s": 30}).encode())
    with OutputLease(store, ttl_s=30) as taker:
        assert json.loads(store.get_bytes(LEASE_KEY))["token"] == taker.holder["token"]
    assert not store.exists(LEASE_KEY)


def test_the_holder_renews_and_notices_a_takeover(store):  # noqa: F811
    with OutputLease(store, ttl_s=0.3) as lease:
        since = json.loads(store.get_bytes(LEASE_KEY))["renewed"]
        deadline = time.monotonic() + 10
        while json.loads(store.get_bytes(LEASE_KEY))["renewed"] == since and time.monotonic() < deadline:
            time.sleep(0.05)
        assert json.loads(store.get_bytes(LEASE_KEY))["renewed"] > since
        store.put_bytes(LEASE_KEY, json.dumps({"token": "someone-else", "renewed": since}).encode())
        assert lease.lost.wait(10)
    assert store.exists(LEASE_KEY)  # not ours any more: left to its holder


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    built = build_output(tmp_path_factory.mktemp("run"))
    config = tmp_path_factory.mktemp("config") / "run.yaml"
    config.write_text(yaml.safe_dump(RunConfig.model_validate(built.run_record["config"]).to_dict()))
    return built, config


def rerun(finished, *flags):
    built, config = finished
    command = ["run", str(built.manifest), "--output", built.uri, "--config", str(config), *flags]
    return CliRunner().invoke(app, command)


def test_a_second_driver_is_told_who_writes_and_changes_nothing(finished):
    built, _ = finished
    before = {path: path.stat().st_mtime_ns for path in built.store.root.rglob("*")}
    with OutputLease(built.store, ttl_s=60) as holder:
        result = rerun(finished)
        assert result.exit_code == 2 and result.output.count("\n") == 1
        assert (
            f"(pid {holder.holder['pid']} on {holder.holder['host']}, since {holder.since}" in result.output
        )
        lease = built.store.root / LEASE_KEY
        assert {p: p.stat().st_mtime_ns for p in built.store.root.rglob("*") if p != lease} == before


def test_wait_for_lease_runs_once_the_holder_is_done(finished):
    built, _ = finished
    holder = OutputLease(built.store, ttl_s=60)
    holder.acquire()
    threading.Timer(1.0, holder.release).start()
    started = time.monotonic()
    result = rerun(finished, "--wait-for-lease", "30")
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert time.monotonic() - started >= 1.0
    assert not built.store.exists(LEASE_KEY)


def test_a_lapsed_lease_is_taken_over(finished):
    built, _ = finished
    long_ago = (datetime.now(timezone.utc) - timedelta(hours=1)).isoformat()
    record = {"host": "crashed-node", "pid": 7, "token": "dead", "since": long_ago, "renewed": long_ago}
    built.store.put_bytes(LEASE_KEY, json.dumps({**record, "ttl_s": 120}).encode())
    result = rerun(finished)
    assert result.exit_code == 0 and "nothing to do" in result.output
    assert not built.store.exists(LEASE_KEY)


def test_the_lease_of_a_driver_gone_from_this_machine_is_taken_over_at_once(store):  # noqa: F811
    import socket
    import subprocess
    import sys

    gone = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    now = datetime.now(timezone.utc).isoformat()
    record = {
        "host": socket.gethostname(),
        "pid": int(gone.stdout),
        "token": "killed",
        "since": now,
        "renewed": now,
    }
    store.put_bytes(LEASE_KEY, json.dumps({**record, "ttl_s": 3600}).encode())
    with OutputLease(store, ttl_s=3600) as taker:
        assert json.loads(store.get_bytes(LEASE_KEY))["token"] == taker.holder["token"]
    alive = {**record, "pid": os.getpid(), "token": "alive"}  # this very process: alive, fresh
    store.put_bytes(LEASE_KEY, json.dumps({**alive, "ttl_s": 3600}).encode())
    with pytest.raises(LeaseHeld):
        OutputLease(store, ttl_s=3600).acquire()


def select_command(built, new, *flags):
    return ["select", built.uri, "--by", "clip_t", "--top", "0.5", "-o", str(new), *flags]


def test_select_takes_the_new_outputs_lease_and_waits_for_it(finished, tmp_path):
    from pipeline.storage import open_store

    built, _ = finished
    new = tmp_path / "selected"
    holder = OutputLease(open_store(str(new)), ttl_s=60)
    holder.acquire()
    try:
        result = CliRunner().invoke(app, select_command(built, new))
        assert result.exit_code == 2 and result.output.count("\n") == 1
        assert f"being written by another driver (pid {holder.holder['pid']}" in result.output
        assert [path.name for path in new.rglob("*")] == [LEASE_KEY]  # nothing else was written
    finally:
        threading.Timer(0.5, holder.release).start()
    result = CliRunner().invoke(app, select_command(built, new, "--wait-for-lease", "30"))
    assert result.exit_code == 0, result.output
    assert (new / "run.json").exists() and not (new / LEASE_KEY).exists()  # released when done
    result = CliRunner().invoke(app, select_command(built, new))  # the same selection resumes
    assert result.exit_code == 0 and "shards written │ 0" in result.output


def test_select_into_a_foreign_folder_writes_nothing_not_even_the_lease(finished, tmp_path):
    built, _ = finished
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    (foreign / "run.json").write_text('{"format": "someone-else"}')
    result = CliRunner().invoke(app, select_command(built, foreign))
    assert result.exit_code == 2 and "is not a selection output" in result.output
    assert sorted(path.name for path in foreign.iterdir()) == ["notes.txt", "run.json"]


def test_select_stops_when_its_lease_is_taken_over(finished, tmp_path):
    from contextlib import nullcontext
    from types import SimpleNamespace

    from pipeline.dataset.select import Selection, select_output
    from pipeline.dataset.subset import SelectError

    built, _ = finished
    lost = SimpleNamespace(lost=threading.Event())
    lost.lost.set()  # as when a renewal finds another holder
    with pytest.raises(SelectError, match="another writer took over this output's lease"):
        select_output(
            built.uri,
            str(tmp_path / "new"),
            Selection("clip_t", top=1.0),
            lease=lambda store: nullcontext(lost),
        )
    assert not list((tmp_path / "new").glob("_SUCCESS/*"))
