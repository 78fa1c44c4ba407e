"""Chaos soak: fake-generator runs on a local folder and on SeaweedFS under random faults drawn from a seed,
each followed by a rerun, each round ending with every planned uid exactly once in the tars, the
parquets, `stylegen status` and `stylegen report`, and every tar byte-identical to an undisturbed run.

The fault tests (tests/test_faults*.py, test_graceful_stop.py, test_multinode.py, test_lease.py) each
check one fault. Here they come one after another on the same output, at moments drawn from `--seed`:

    driver_sigkill  driver_sigterm  actor_kill  node_removed  second_driver  concurrent_append
    concurrent_retry  disk_full (local folder only)  s3_restart (SeaweedFS only)

(bench/chaos_faults.py says what each does and how the processes it hits must end). A round is one
output: a driver starts, a fault strikes it, the next driver is the rerun (and may be struck too), and
after 1-3 faults a last rerun must finish; then the round is checked (bench/chaos_check.py), and the
next round starts on a new output, the next storage in turn. `--append` of a bigger manifest enters a
round through concurrent_append; the round's plan is then the bigger manifest's.

Everything runs against a Ray cluster of the soak's own (`ray.cluster_utils.Cluster`: a head without
GPUs and GPU nodes with logical GPUs, bench/chaos_world.py) that the drivers join by address, and a
`weed mini` the soak starts, stops and restarts on the same folder and ports. The undisturbed run is
`stylegen run` of the same manifest and config (then `--append` of the bigger one) into a folder of its
own on the same cluster, made when the first round is checked (`--reference worker`: one ShardWorker in
this process, no Ray and no append; the short form in tests/test_chaos_soak.py, which also joins the
suite's shared Ray instead of starting a cluster, so it removes no node and fills no disk).

The full disk needs no root: bench/chaos_shim/sitecustomize.py, first on PYTHONPATH of the cluster and
the drivers, makes every file the local store creates fail with a real OSError(ENOSPC) while a flag file
exists (2-5 s). Not done here: a filesystem that is really full (needs root for a small mount), a
network partition or slow network (needs root for iptables / tc), a full disk on SeaweedFS's own volume
(the s3_restart fault stands for a failing S3 server), losing the head node (the cluster and every
driver on it end; nothing to resume from but the output, which driver_sigkill covers), and rows that
fail (the fake generator fails a row every time or never, so `--retry-failed` here is only ever
refused or has nothing to do).

    .venv/bin/python bench/chaos_soak.py --seed 7 --faults 6 --storage local     # 3-5 minutes here
    .venv/bin/python bench/chaos_soak.py --seed 1 --minutes 10 --storage both
    .venv/bin/python bench/chaos_soak.py --kinds s3_restart,node_removed --storage seaweedfs --keep

Prints one line per fault and per round, and ends with
`faults_injected=.. survived=.. lost_rows=.. duplicated_rows=.. seed=.. ...`: a fault survived when the
processes it hit ended as they should and its round ended with every row once and identical tars.
`left_behind` counts objects under `_attempts/` and leases still there after a round's last rerun
(reported, not a failure). Exits 1 when a fault was not survived. `--keep` keeps the work folder: each
stylegen process's stderr in `logs/`, each round's output (run logs under its `logs/`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from chaos_check import check_output  # noqa: E402
from chaos_faults import FAULTS, Driver, Stage, faults_for  # noqa: E402
from chaos_world import REPO, SHIM, ChaosCluster, RestartableSeaweedFS  # noqa: E402
from run_fixtures import build_manifest, fake_config, reference_tars  # noqa: E402

from manifests.read import read_manifest  # noqa: E402
from pipeline.dataset.status import collect_status  # noqa: E402
from pipeline.report.build import write_report  # noqa: E402
from pipeline.storage import open_store  # noqa: E402
from pipeline.storage.layout import LEASE_KEY  # noqa: E402

BUCKET = "chaos"


class Soak:
    def __init__(self, args: argparse.Namespace, work: Path, address: str | None = None):
        """`address`: drivers join that running cluster instead of one the soak starts (the short form
        in tests/, on the suite's shared Ray): no node is removed, and no disk fills (its actors lack the
        shim)."""
        self.args, self.work, self.rng = args, work, random.Random(args.seed)
        self.started = time.monotonic()
        self.logs = work / "logs"
        self.logs.mkdir()
        self.manifest = build_manifest(work / "inputs", rows=args.rows)
        self.bigger = build_manifest(work / "inputs", rows=args.rows + args.appended, name="bigger.parquet")
        self.planned = {
            path: read_manifest(str(path)).column("uid").to_pylist() for path in (self.manifest, self.bigger)
        }
        settings = {
            "shard_size": args.shard_size,
            "execution.first_deadline_s": 120,
            "execution.min_deadline_s": 60,
            "execution.drain_s": 10,
            "execution.storage_outage_s": 120,
        }
        self.config = config = fake_config(**settings, **{"generator.fake.latency_s": args.latency})
        # the latency only sleeps: `--reference worker` makes the same tars without it (tests/test_faults.py)
        self.reference_config = fake_config(**settings)
        self.config_file = work / "run.yaml"
        self.config_file.write_text(yaml.safe_dump(config.to_dict()))
        self.disk_full_flag = work / "disk-full"
        # what the cluster (when the soak starts it) and every stylegen process see
        self.env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(SHIM), str(REPO)])}
        self.env["CHAOS_SOAK_DISK_FULL"] = str(self.disk_full_flag)
        self.env.pop("RAY_ADDRESS", None)
        self.weed = None
        if args.storage in ("seaweedfs", "both"):
            (work / "seaweedfs").mkdir()
            self.weed = RestartableSeaweedFS(work / "seaweedfs", "chaos-soak", secrets.token_hex(20))
            self.s3_environment()
            self.weed.client().create_bucket(Bucket=BUCKET)
        self.actors = args.nodes * args.gpus_per_node
        self.cluster = ChaosCluster(args.nodes, args.gpus_per_node, self.env) if address is None else None
        self.address = address or self.cluster.address
        print(f"[{self.clock()}] cluster ready: {self.address}", flush=True)
        self.reference: dict[Path, dict[str, bytes]] = {}
        self.results: list[tuple[str, bool]] = []  # (fault kind, survived)
        self.lost = self.duplicated = self.tars_checked = self.tars_differing = self.rounds = self.strays = 0

    def clock(self) -> str:
        return f"{time.monotonic() - self.started:6.1f} s"

    def s3_environment(self) -> None:
        """The SeaweedFS credentials and endpoint for the drivers, the cluster and this process (which
        reads the output back)."""
        nowhere = str(self.work / "no-aws-config")
        s3 = {
            "AWS_ACCESS_KEY_ID": self.weed.access_key,
            "AWS_SECRET_ACCESS_KEY": self.weed.secret_key,
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": self.weed.endpoint_url,
            "AWS_CONFIG_FILE": nowhere,
            "AWS_SHARED_CREDENTIALS_FILE": nowhere,
        }
        for environment in (os.environ, self.env):
            environment.update(s3)
            for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3"):
                environment.pop(name, None)

    def close(self) -> None:
        Driver.stop_all()
        if self.cluster is not None:
            self.cluster.close()
        if self.weed is not None:
            self.weed.close()

    # --- the undisturbed run ----------------------------------------------------------------------------

    def undisturbed(self, manifest: Path) -> dict[str, bytes]:
        """The tars of an undisturbed run, made the first time a round needs them: what every round must
        reproduce. `--reference run`: `stylegen run` of the manifest (then `--append` of the bigger one)
        into a folder of its own on the same cluster; `worker`: one ShardWorker in this process, no Ray
        (the short form; it has no append, so concurrent_append is not drawn then)."""
        if manifest in self.reference:
            return self.reference[manifest]
        folder, started = self.work / "undisturbed", time.monotonic()
        if self.args.reference == "worker":
            self.reference[manifest] = reference_tars(
                self.work, manifest, self.reference_config, self.shards(manifest)
            )
        else:
            stage = Stage(self, "local", str(folder), lambda: 0, dict)
            for append in [m == self.bigger for m in dict.fromkeys((self.manifest, manifest))]:
                stage.append = append
                driver = stage.start()
                if driver.wait() != 0:
                    raise SystemExit(f"the undisturbed run failed: {driver.stderr[-3000:]}")
                tars = sorted((folder / "shards").glob("*.tar"))
                self.reference[self.bigger if append else self.manifest] = {
                    p.name: p.read_bytes() for p in tars
                }
        print(f"  [{self.clock()}] undisturbed {self.args.reference}: {time.monotonic() - started:.1f} s, "
              f"{len(self.reference[manifest])} tars", flush=True)  # fmt: skip
        return self.reference[manifest]

    def shards(self, manifest: Path) -> int:
        """Shards of the run of `manifest` (of the bigger one: the run's, then the appended rows')."""
        size, rows = self.args.shard_size, self.args.rows
        return -(-rows // size) + (-(-self.args.appended // size) if manifest == self.bigger else 0)

    # --- rounds -----------------------------------------------------------------------------------------

    def stage(self, storage: str) -> Stage:
        name = f"round-{self.rounds:03d}"
        if storage == "local":
            folder = self.work / name

            def local_lease() -> dict:
                with contextlib.suppress(OSError, ValueError):
                    return json.loads((folder / LEASE_KEY).read_text())
                return {}

            markers = lambda: len(list((folder / "_SUCCESS").glob("*.json")))  # noqa: E731
            return Stage(self, storage, str(folder), markers, local_lease)
        client, seen = self.weed.client(), [0]

        def s3_markers() -> int:
            with contextlib.suppress(Exception):  # while the server is down: what was seen last
                seen[0] = client.list_objects_v2(Bucket=BUCKET, Prefix=f"{name}/_SUCCESS/").get("KeyCount", 0)
            return seen[0]

        def s3_lease() -> dict:
            with contextlib.suppress(Exception):
                return json.loads(client.get_object(Bucket=BUCKET, Key=f"{name}/{LEASE_KEY}")["Body"].read())
            return {}

        return Stage(self, storage, f"s3://{BUCKET}/{name}", s3_markers, s3_lease)

    def kinds(self, storage: str) -> list[str]:
        """The faults this soak can draw on `storage` (`--kinds` limits them)."""
        left_out = set()
        if self.args.reference == "worker":
            left_out.add("concurrent_append")
        if self.cluster is None:
            left_out |= {"node_removed", "disk_full"}
        chosen = self.args.kinds.split(",") if self.args.kinds else FAULTS
        return [kind for kind in faults_for(storage) if kind in chosen and kind not in left_out]

    def round(self, storage: str, faults: int) -> int:
        """One output under `faults` faults (fewer when it finishes first), then the last rerun and the
        check. Returns how many faults were injected."""
        stage, outcomes = self.stage(storage), []
        print(f"[{self.clock()}] round {self.rounds} on {stage.output} ({storage}):", flush=True)
        while len(outcomes) < faults:
            since = stage.markers()
            if since >= stage.total():
                break  # complete: the next driver would have nothing to do
            kinds = self.kinds(storage)
            if not kinds:
                raise SystemExit(f"none of the faults --kinds names can strike a run on {storage}")
            kind = self.rng.choice(kinds)
            driver = stage.start()
            outcome = FAULTS[kind](stage, driver, self.rng, since)
            if outcome is None:
                code = driver.wait()
                print(
                    f"  [{self.clock()}] {kind}: not injected (the driver ended first, exit {code})",
                    flush=True,
                )
                break  # the output is complete (or the last rerun says why not)
            outcomes.append(outcome)
            print(f"  [{self.clock()}] {kind}: {outcome.detail}{'' if outcome.ok else ' NOT AS EXPECTED: '}"
                  f"{'; '.join(outcome.notes)}", flush=True)  # fmt: skip
        finished = self.last_rerun(stage)
        verdict_ok = finished and self.verify(stage)
        self.results += [(outcome.kind, outcome.ok and verdict_ok) for outcome in outcomes]
        self.rounds += 1
        return len(outcomes)

    def last_rerun(self, stage: Stage) -> bool:
        for _ in range(2):  # a rerun stopped by a storage error gets one more try, as a user would
            driver = stage.start()
            code = driver.wait()
            if code == 0 and "Traceback" not in driver.stderr:
                return True
            print(f"  rerun: exit {code}: {driver.last_line()[:300]} ({driver.stderr_path.name})", flush=True)
        return False

    def verify(self, stage: Stage) -> bool:
        manifest = self.bigger if stage.append else self.manifest
        copy = self.local_copy(stage)
        store, report = open_store(stage.output), self.work / "report.html"
        try:
            status = collect_status(store)
            write_report(stage.output, report, {})
        except Exception as error:  # noqa: BLE001 - a broken output is a finding, not the soak's end
            print(f"  status / report failed: {type(error).__name__}: {error}", flush=True)
            status = {}
        html = report.read_text() if report.exists() else ""
        verdict = check_output(copy, self.planned[manifest], self.undisturbed(manifest), status, html)
        report.unlink(missing_ok=True)
        # what a finished run should not leave behind: not counted as lost or duplicated, only reported
        strays = [info.key for info in store.list("_attempts/")] + [LEASE_KEY] * bool(stage.lease())
        self.strays += len(strays)
        if strays:
            print(
                f"  left behind after the last rerun: {strays[:5]}{' ...' if len(strays) > 5 else ''}",
                flush=True,
            )
        self.lost += verdict.lost
        self.duplicated += verdict.duplicated
        self.tars_checked += verdict.tars_checked
        self.tars_differing += len(verdict.tars_differing)
        rows = len(self.planned[manifest])
        print(f"  [{self.clock()}] check: {rows} rows, {verdict.tars_checked - len(verdict.tars_differing)}/"
              f"{verdict.tars_checked} tars identical, lost {verdict.lost}, duplicated {verdict.duplicated}"
              + ("" if verdict.ok else f"; PROBLEMS: {'; '.join(verdict.problems)} "
                 f"differing tars {verdict.tars_differing}"), flush=True)  # fmt: skip
        return verdict.ok

    def local_copy(self, stage: Stage) -> Path:
        """The output's tars and parquets in a folder (an S3 output downloaded with boto3)."""
        if stage.storage == "local":
            return Path(stage.output)
        folder = self.work / "copy"
        shutil.rmtree(folder, ignore_errors=True)
        client, prefix = self.weed.client(), stage.output.removeprefix(f"s3://{BUCKET}/") + "/"
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            for item in page.get("Contents", []):
                key = item["Key"][len(prefix) :]
                if key.startswith(("shards/", "metadata/")):
                    (folder / key).parent.mkdir(parents=True, exist_ok=True)
                    client.download_file(BUCKET, item["Key"], str(folder / key))
        return folder

    def summary(self, seconds: float) -> str:
        kinds = Counter(kind for kind, _ in self.results)
        return " ".join([
            f"faults_injected={len(self.results)}",
            f"survived={sum(ok for _, ok in self.results)}",
            f"lost_rows={self.lost}",
            f"duplicated_rows={self.duplicated}",
            f"seed={self.args.seed}",
            f"storage={self.args.storage}",
            f"rounds={self.rounds}",
            f"tars_identical={self.tars_checked - self.tars_differing}/{self.tars_checked}",
            f"left_behind={self.strays}",
            f"minutes={seconds / 60:.1f}",
            "kinds=" + ",".join(f"{kind}:{count}" for kind, count in sorted(kinds.items())),
        ])  # fmt: skip


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--faults", type=int, help="stop after this many faults (default 6)")
    budget.add_argument("--minutes", type=float, help="stop after the round running at this time")
    parser.add_argument("--storage", choices=("local", "seaweedfs", "both"), default="local")
    parser.add_argument(
        "--kinds", help=f"comma-separated faults to draw from (default all: {', '.join(FAULTS)})"
    )
    parser.add_argument("--rows", type=int, default=64, help="rows of the manifest")
    parser.add_argument("--appended", type=int, default=16, help="rows the bigger manifest adds")
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--latency", type=float, default=0.15, help="fake generator seconds per image")
    parser.add_argument("--nodes", type=int, default=2, help="GPU nodes")
    parser.add_argument("--gpus-per-node", type=int, default=2)
    parser.add_argument("--max-faults-per-round", type=int, default=3)
    parser.add_argument(
        "--reference", choices=("run", "worker"), default="run", help="how the undisturbed tars are made"
    )
    parser.add_argument("--keep", action="store_true", help="keep the work folder (logs, outputs)")
    args = parser.parse_args(argv)
    if args.faults is None and args.minutes is None:
        args.faults = 6
    unknown = set(args.kinds.split(",")) - set(FAULTS) if args.kinds else set()
    if unknown:
        parser.error(f"unknown faults {sorted(unknown)}; known: {', '.join(FAULTS)}")
    return args


def run_soak(args: argparse.Namespace, work: Path, address: str | None = None) -> tuple[str, bool]:
    """The soak in `work`; returns its summary line and whether every fault was survived."""
    storages = ["local", "seaweedfs"] if args.storage == "both" else [args.storage]
    soak = Soak(args, work, address)
    try:
        injected = 0
        while True:
            if args.faults is not None and injected >= args.faults:
                break
            if args.minutes is not None and time.monotonic() - soak.started >= 60 * args.minutes:
                break
            most = args.max_faults_per_round
            if args.faults is not None:
                most = min(most, args.faults - injected)
            injected += soak.round(storages[soak.rounds % len(storages)], soak.rng.randint(1, most))
    finally:
        soak.close()
    survived = all(ok for _, ok in soak.results)
    clean = survived and not (soak.lost or soak.duplicated or soak.tars_differing)
    return soak.summary(time.monotonic() - soak.started), clean


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Ctrl-C or SIGTERM (also when started in the background, where SIGINT comes ignored) end the soak
    # through its `finally`: the cluster, the server and any driver in flight are stopped by handle.
    # (Once the cluster runs, Ray's own SIGTERM handler drains its nodes first, then exits the same way.)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = Path(tempfile.mkdtemp(prefix="chaos-soak-"))
    try:
        line, clean = run_soak(args, work)
    finally:
        if args.keep:
            print(f"work folder kept: {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(line, flush=True)
    return 0 if clean else 1


if __name__ == "__main__":
    sys.exit(main())
