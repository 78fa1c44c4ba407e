"""Inputs that are not image files: a FIFO, /dev/zero, /dev/urandom, a huge sparse file. Each fails its
row (or its validate/report entry) at once with a clear reason; nothing blocks and nothing is read whole.
Every read runs on a daemon thread with a timeout, so a regression fails the test instead of hanging it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from run_fixtures import fake_config, make_image, shard_rows

from pipeline.models.fake_generator import FakeGenerator
from pipeline.run.plan import plan_run, write_plan
from pipeline.storage import open_store
from pipeline.worker.shard_worker import ShardWorker

MIB = 2**20
pytest_plugins = ["s3_fixtures"]


def within(seconds: float, call):
    """call() on a daemon thread; its result (or exception), or a failure if it is still running."""
    outcome: dict = {}

    def target():
        try:
            outcome["value"] = call()
        except BaseException as error:  # handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


@pytest.fixture
def specials(tmp_path) -> dict[str, tuple[str, str]]:
    """name -> (path, the reason its row must fail with)."""
    fifo = tmp_path / "fifo.png"
    os.mkfifo(fifo)
    sparse = tmp_path / "sparse.png"
    with open(sparse, "wb") as file:
        file.truncate(16 * 2**30)  # 16 GiB that take no disk space
    return {
        "fifo": (str(fifo), "not a regular file (a FIFO)"),
        "zero": ("/dev/zero", "not a regular file (a character device)"),
        "urandom": ("/dev/urandom", "not a regular file (a character device)"),
        "sparse": (str(sparse), f"{16 * 2**30} bytes, over the input size limit of {256 * MIB} bytes"),
        "folder": (str(tmp_path), "is a directory, not an image file"),
    }


def test_the_input_loader_refuses_special_files_at_once(specials):
    from manifests.input_files import InputError
    from pipeline.worker.inputs import InputLoader

    loader = InputLoader()
    try:
        for path, reason in specials.values():
            with pytest.raises(InputError) as raised:
                within(10, lambda path=path: loader.image(path).result())
            assert str(raised.value) == f"{path}: {reason}"
    finally:
        loader.close()


def test_the_size_limit_is_checked_before_reading_and_is_configurable(tmp_path):
    from manifests.input_files import InputError
    from pipeline.worker.inputs import InputLoader

    image = make_image(tmp_path / "style.png", (200, 30, 30), size=64)
    size = image.stat().st_size
    small = InputLoader(max_input_bytes=size - 1)
    with pytest.raises(InputError, match=rf"{size} bytes, over the input size limit of {size - 1} bytes"):
        small.image(str(image)).result(timeout=10)
    assert InputLoader(max_input_bytes=size).image(str(image)).result(timeout=10).size == (64, 64)
    assert fake_config(**{"execution.max_input_mib": 1}).execution.max_input_mib == 1
    assert fake_config().execution.max_input_mib == 256


def test_a_shard_with_special_inputs_fails_only_those_rows(tmp_path, specials):
    good = make_image(tmp_path / "good.png", (20, 120, 220))
    styles = [str(good)] + [path for path, _ in specials.values()] + [str(good)]
    manifest = tmp_path / "manifest.parquet"
    prompts = [f"prompt {i}" for i in range(len(styles))]
    pq.write_table(pa.table({"prompt": prompts, "style": styles}), manifest)
    config = fake_config(shard_size=len(styles))
    store = open_store(tmp_path / "out")
    plan, _ = plan_run(str(manifest), config)
    write_plan(store, plan)
    worker = ShardWorker(FakeGenerator(config.generator.fake), None, None, store, config)
    try:
        result = within(30, lambda: worker.run_shard(0, "attempt-1"))
    finally:
        worker.close()
    assert (result.kept, result.failed) == (2, len(specials))
    rows = {row["style"]: row for row in shard_rows(tmp_path / "out")}
    for path, reason in specials.values():
        assert rows[path]["status"] == "failed"
        assert rows[path]["reason"] == f"input style: {path}: {reason}"


def test_validate_check_files_and_the_report_do_not_block_on_special_files(tmp_path, specials):
    from manifests.validate import validate_manifest
    from pipeline.report.gallery import _load_uri

    manifest = tmp_path / "manifest.parquet"
    styles = [path for path, _ in specials.values()]
    pq.write_table(pa.table({"prompt": [f"p {i}" for i in range(len(styles))], "style": styles}), manifest)
    report = within(30, lambda: validate_manifest(str(manifest), check_files=True, check_prompt_length=False))
    found = {p.reason for p in report.errors if p.kind == "unreadable-file"}
    assert found == {f"{path!r}: {reason}" for path, reason in specials.values()}

    for path, reason in specials.values():
        image, error = within(10, lambda path=path: _load_uri(path, 64))
        assert image is None and error == f"InputError: {path}: {reason}"


def test_a_file_that_grows_past_the_limit_while_read_is_refused(tmp_path, monkeypatch):
    """The stat says small, the read says otherwise (a file being written): never more than the limit."""
    from manifests import input_files as inputs

    path = Path(tmp_path / "growing.png")
    path.write_bytes(b"x" * 100)
    real_fstat = os.fstat

    class Shrunk:
        def __init__(self, info):
            self.st_mode, self.st_size = info.st_mode, 10

    monkeypatch.setattr(os, "fstat", lambda fd: Shrunk(real_fstat(fd)))
    with pytest.raises(inputs.InputError, match="over the input size limit of 50 bytes"):
        inputs.read_bytes(str(path), max_bytes=50)


def test_an_s3_object_over_the_limit_is_refused_from_its_content_length(s3_bucket):
    from manifests.input_files import InputFileError, read_s3_object

    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="styles/big.png", Body=b"x" * 1000)
    reads = []

    class CountingClient:  # the real client; records every read of an object's body
        def get_object(self, **request):
            response = s3_bucket.client.get_object(**request)
            body, read = response["Body"], response["Body"].read
            body.read = lambda *args: reads.append(args) or read(*args)
            return response

    with pytest.raises(InputFileError, match="^1000 bytes, over the input size limit of 999 bytes$"):
        read_s3_object(CountingClient(), s3_bucket.name, "styles/big.png", 999)
    assert reads == []  # refused from ContentLength: not a byte of the body was read
    assert read_s3_object(CountingClient(), s3_bucket.name, "styles/big.png", 1000) == b"x" * 1000
