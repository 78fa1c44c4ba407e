"""S3 upload throughput of a shard commit vs a raw boto3 `upload_file` of the same bytes.

For each server (moto in a subprocess; SeaweedFS `weed mini` when installed) the same shard (a tar of
--mib MiB plus its parquet) is sent REPEATS times, alternating:
  raw     boto3 `upload_file` of the tar and the parquet (same client settings and TransferConfig)
  upload  S3Store.put_file of both files (TransferManager upload + HEAD verification)
  commit  S3Store.commit_shard: attempt upload + verify + conditional marker + server-side copy to the
          final names + delete of the attempt keys (sha256 known from write_tar, as the worker has it)
ratio = raw seconds / store seconds (medians), so 1.0 means "as fast as boto3 alone"; target >= 0.9.
The commit also copies the shard server-side (S3 has no rename); that copy does not use the client's
bandwidth, but it takes time on the server: `publish_s` reports it.

    .venv/bin/python bench/bench_s3_upload.py [--mib 128] [--repeats 5]
"""

from __future__ import annotations

import argparse
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import ExitStack, contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "tests")]

from s3_fixtures import _client, _free_ports, start_seaweedfs, weed_binary  # noqa: E402

from pipeline.shards import ShardRow, ShardSample, write_shard_table, write_tar  # noqa: E402
from pipeline.storage import LocalFile, S3Config, S3Store  # noqa: E402
from pipeline.storage.s3_config import s3_client  # noqa: E402


@contextmanager
def moto_subprocess(folder: Path):
    port = _free_ports(1)[0]
    log = open(folder / "moto.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=log
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        client = _client(endpoint, "bench", "bench")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.list_buckets()
                break
            except Exception:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise
                time.sleep(0.1)
        yield endpoint, "bench", "bench"
    finally:
        process.terminate()
        process.wait(timeout=15)
        log.close()


def build_shard(folder: Path, mib: int) -> tuple[LocalFile, LocalFile]:
    """A realistic shard: 2 MiB incompressible 'images' (like PNGs) with their JSON, plus the table."""
    uids = [uuid.UUID(int=n).hex for n in range(max(1, mib // 2))]
    samples = [ShardSample(uid, os.urandom(2 * 1024 * 1024 - 700), "png", {"prompt": "x"}) for uid in uids]
    stats = write_tar(samples, folder / "kept.tar")
    write_shard_table(
        [ShardRow(uid, "kept", meta={"prompt": "x"}) for uid in uids], folder / "rows.parquet", 0
    )
    return LocalFile(folder / "kept.tar", stats.size, stats.sha256), LocalFile.from_path(
        folder / "rows.parquet"
    )


def measure(endpoint: str, key: str, secret: str, tar: LocalFile, table: LocalFile, repeats: int) -> dict:
    os.environ.update(AWS_ACCESS_KEY_ID=key, AWS_SECRET_ACCESS_KEY=secret, AWS_DEFAULT_REGION="us-east-1")
    config = S3Config(endpoint_url=endpoint, addressing_style="path")
    raw_client, transfer = s3_client(config), config.transfer_config()
    bucket = f"bench-{uuid.uuid4().hex[:12]}"
    raw_client.create_bucket(Bucket=bucket)
    store = S3Store(bucket, "out", config)
    times: dict[str, list[float]] = {"raw": [], "upload": [], "commit": []}

    def raw(rep: int) -> None:
        for file in (tar, table):
            raw_client.upload_file(str(file.path), bucket, f"raw/{rep}/{file.path.name}", Config=transfer)

    def upload(rep: int) -> None:
        for file in (tar, table):
            store.put_file(f"uploads/{rep}/{file.path.name}", file.path, sha256=file.sha256)

    def commit(rep: int) -> None:
        assert store.commit_shard(rep, tar=tar, table=table, summary={"kept": 1}).won

    def clear() -> None:  # keep the server's memory flat (moto holds objects in RAM)
        store.delete([info.key for info in store.list("")])
        listing = raw_client.list_objects_v2(Bucket=bucket, Prefix="raw/").get("Contents", [])
        for item in listing:
            raw_client.delete_object(Bucket=bucket, Key=item["Key"])

    raw(-1)  # warm up connections and the server
    clear()
    for rep in range(repeats):
        steps = [("raw", raw), ("upload", upload), ("commit", commit)]
        for name, step in steps if rep % 2 == 0 else steps[::-1]:
            started = time.perf_counter()
            step(rep)
            times[name].append(time.perf_counter() - started)
            clear()
            time.sleep(0.5)  # let the server settle (free the deleted objects) before the next step
    medians = {name: statistics.median(values) for name, values in times.items()}
    mib = (tar.size + table.size) / 2**20
    return {
        "raw_mib_s": mib / medians["raw"],
        "upload_mib_s": mib / medians["upload"],
        "commit_mib_s": mib / medians["commit"],
        "upload_ratio": medians["raw"] / medians["upload"],
        "commit_ratio": medians["raw"] / medians["commit"],
        # what the commit adds on top of the upload: mostly the server-side copy to the final names
        "publish_s": medians["commit"] - medians["upload"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=128, help="shard tar size in MiB")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    results: dict[str, float | str] = {"shard_mib": args.mib}
    with tempfile.TemporaryDirectory(prefix="bench-s3-") as scratch, ExitStack() as stack:
        folder = Path(scratch)
        tar, table = build_shard(folder, args.mib)
        servers = {"moto": stack.enter_context(moto_subprocess(folder))}
        if weed_binary() is not None:
            (folder / "weed").mkdir()
            weed = stack.enter_context(start_seaweedfs(folder / "weed", "bench", secrets.token_hex(16)))
            servers["seaweedfs"] = (weed.endpoint_url, weed.access_key, weed.secret_key)
        else:
            results["seaweedfs"] = "not-installed"
        for name, (endpoint, key, secret) in servers.items():
            numbers = measure(endpoint, key, secret, tar, table, args.repeats)
            print(f"{name:10s} " + "  ".join(f"{k}={v:.2f}" for k, v in numbers.items()), flush=True)
            results.update({f"{name}_{k}": round(v, 3) for k, v in numbers.items()})
    for kind in ("upload", "commit"):
        ratios = [value for key, value in results.items() if key.endswith(f"{kind}_ratio")]
        results[f"{kind}_target_met"] = str(min(ratios) >= 0.9).lower()
    print(" ".join(f"{key}={value}" for key, value in results.items()))


if __name__ == "__main__":
    main()
