"""The faults of bench/chaos_soak.py: each waits for a moment drawn from the soak's random generator in a
running driver, does its harm, waits for every process it touched, and says whether they ended as they
should. A fault whose driver finished before its moment came is not injected (None).

What "as they should" means, per fault:
  driver_sigkill      the driver's process group gets SIGKILL: it dies (-9)
  driver_sigterm      SIGTERM to the driver: it drains and exits 143 with `stylegen: stopped by SIGTERM`
                      (before it holds the output's lease, still starting, the signal may end it: -15)
  actor_kill          SIGKILL to one GeneratorActor process: the driver finishes (0)
  node_removed        a GPU node is removed (raylet and workers killed), a fresh one added 1-3 s later:
                      the driver finishes (0)
  disk_full           every file the local store creates fails with ENOSPC for 2-5 s (bench/chaos_shim):
                      the driver finishes (0), or stops with one `error:` line and no traceback
  s3_restart          the SeaweedFS server is stopped and started again on its folder and ports 2-5 s
                      later: the driver finishes (0), or stops with one `error:` line and no traceback
  second_driver       the same command again while the driver writes: refused with one line naming the
                      lease holder (2), or a no-op (0) when the first had just finished; the first
                      finishes (0)
  concurrent_append   `run BIGGER --append` while the driver writes: refused the same way (2) or run (0);
                      from then on the round's command is that append (a user trying it again)
  concurrent_retry    `run --retry-failed` while the driver writes: refused (2: the lease, or the run is
                      not finished) or nothing to retry (0); the first finishes (0)
Whatever the fault, no process may print a traceback.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from chaos_world import REPO, generator_actor_pids

LEASE_LINE = "is being written by another driver ("
DRIVER_TIMEOUT_S = 600


class Driver:
    """One `stylegen` process in its own process group, its stderr in a file."""

    count = 0
    started: set[Driver] = set()  # every driver not yet waited for, so the soak's end can stop them

    def __init__(self, args: list[str], env: dict, logs: Path):
        Driver.count += 1
        self.args, self.stderr_path = args, logs / f"stylegen-{Driver.count:03d}.err"
        self.started = time.monotonic()
        with open(self.stderr_path, "w") as stderr:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "pipeline.cli.app", *args],
                cwd=REPO,
                env=env,
                start_new_session=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        Driver.started.add(self)

    def running(self) -> bool:
        return self.process.poll() is None

    def wait(self, timeout_s: float = DRIVER_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill_group()
            self.process.wait()
            return -999  # hung: reported as such
        finally:
            self.kill_group()  # whatever it left behind in its group
            Driver.started.discard(self)

    @classmethod
    def stop_all(cls) -> None:
        for driver in list(cls.started):
            driver.kill_group()
            driver.process.wait()
            cls.started.discard(driver)

    def kill_group(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def last_line(self) -> str:
        lines = [line for line in self.stderr.splitlines() if line.strip()]
        return lines[-1] if lines else ""


@dataclass
class Outcome:
    """How the processes a fault touched ended: `ok` when as the fault's rule says."""

    kind: str
    detail: str
    ok: bool
    notes: list[str] = field(default_factory=list)


class Stage:
    """What a fault needs of its round: the command, the output's markers, the cluster and server."""

    def __init__(
        self, soak, storage: str, output: str, markers: Callable[[], int], lease: Callable[[], dict]
    ):
        self.soak, self.storage, self.output, self.markers, self.lease = soak, storage, output, markers, lease
        self.manifest = soak.manifest
        self.append = False  # whether the round's command is the append of the bigger manifest

    def command(self, flag: str | None = None) -> list[str]:
        """The round's `stylegen run` (its manifest, or the bigger one once it appends), with `flag`:
        `--append` (of the bigger manifest) or `--retry-failed` (of the run as it is)."""
        append = self.append or flag == "--append"
        manifest = self.soak.bigger if append else self.manifest
        flags = ["--retry-failed"] if flag == "--retry-failed" else ["--append"] if append else []
        return [
            *("run", str(manifest), "--output", self.output, "--config", str(self.soak.config_file)),
            *flags,
            *("--actors", str(self.soak.actors), "--address", self.soak.address),
        ]

    def start(self, flag: str | None = None) -> Driver:
        return Driver(self.command(flag), self.soak.env, self.soak.logs)

    def total(self) -> int:
        """The shards of the round's run once its command has run to the end."""
        return self.soak.shards(self.soak.bigger if self.append else self.manifest)

    def wait_for_lease(self, driver: Driver) -> bool:
        """Until the output's lease names `driver` (it writes from then on): whether it still runs."""
        while self.lease().get("pid") != driver.process.pid:
            if not driver.running():
                return False
            time.sleep(0.05)
        return True

    def wait_for_commits(self, driver: Driver, new: int, delay_s: float, since: int) -> bool:
        """Until `new` shards have committed since the driver started (fewer when fewer are left: the
        fault comes before the last commit), then `delay_s` more: whether the driver still runs then
        (else the fault comes too late)."""
        total = self.total()
        if since >= total:
            return False
        while self.markers() < min(since + new, total - 1):
            if not driver.running():
                return False
            time.sleep(0.05)
        deadline = time.monotonic() + delay_s
        while time.monotonic() < deadline and driver.running():
            time.sleep(0.02)
        return driver.running()


def clean(driver: Driver) -> list[str]:
    """A traceback in a driver's stderr is a crash, whatever its exit code."""
    return [f"a traceback ({driver.stderr_path.name})"] if "Traceback" in driver.stderr else []


def finished(kind: str, detail: str, driver: Driver, allowed: dict[int, tuple[str, ...]]) -> Outcome:
    """Wait for `driver`; ok when its exit code is allowed and, where lines are named for that code,
    stderr has one of them."""
    code = driver.wait()
    notes = clean(driver)
    if code not in allowed:
        notes.append(f"exit {code}: {driver.last_line()[:300]}")
    elif allowed[code] and not any(line in driver.stderr for line in allowed[code]):
        notes.append(f"exit {code} without any of {allowed[code]}: {driver.last_line()[:300]}")
    return Outcome(kind, f"{detail}, exit {code}", not notes, notes)


def driver_sigkill(stage: Stage, driver: Driver, rng: random.Random, since: int) -> Outcome | None:
    new, delay = rng.choice([0, 1, 2]), rng.uniform(0, 1.5)
    if not stage.wait_for_commits(driver, new, delay, since):
        return None
    driver.kill_group()
    return finished("driver_sigkill", f"after {new} commits + {delay:.1f} s", driver, {-9: (), 0: ()})


def driver_sigterm(stage: Stage, driver: Driver, rng: random.Random, since: int) -> Outcome | None:
    new, delay = rng.choice([0, 1, 2]), rng.uniform(0, 1.5)
    if not stage.wait_for_commits(driver, new, delay, since):
        return None
    started = stage.lease().get("pid") == driver.process.pid
    driver.process.send_signal(signal.SIGTERM)
    allowed = {143: ("stylegen: stopped by SIGTERM",), 0: ()}
    if not started:  # still importing: the default action ends it (it has written nothing yet)
        allowed[-signal.SIGTERM] = ()
    when = f"after {new} commits + {delay:.1f} s{'' if started else ', before the lease'}"
    return finished("driver_sigterm", when, driver, allowed)


def actor_kill(stage: Stage, driver: Driver, rng: random.Random, since: int) -> Outcome | None:
    if not stage.wait_for_commits(driver, 1, rng.uniform(0, 1.0), since):
        return None
    pids = generator_actor_pids()
    if not pids:
        return None
    victim = rng.choice(pids)
    with contextlib.suppress(ProcessLookupError):
        os.kill(victim, signal.SIGKILL)
    return finished("actor_kill", f"1 of {len(pids)} actors", driver, {0: ()})


def node_removed(stage: Stage, driver: Driver, rng: random.Random, since: int) -> Outcome | None:
    if not stage.wait_for_commits(driver, 1, rng.uniform(0, 1.0), since):
        return None
    index, away = rng.randrange(len(stage.soak.cluster.gpu_nodes)), rng.uniform(1, 3)
    stage.soak.cluster.replace_node(index, away)
    return finished("node_removed", f"GPU node {index}, back after {away:.1f} s", driver, {0: ()})


def storage_outage(kind: str, stage: Stage, driver: Driver, rng: random.Random, since: int) -> Outcome | None:
    new, length = rng.choice([0, 1, 2]), rng.uniform(2, 5)
    if not stage.wait_for_commits(driver, new, rng.uniform(0, 2.0), since):
        return None
    if kind == "disk_full":
        stage.soak.disk_full_flag.touch()
        time.sleep(length)
        stage.soak.disk_full_flag.unlink()
    else:
        stage.soak.weed.stop()
        time.sleep(length)
        stage.soak.weed.start()
    code = driver.wait()
    notes = clean(driver)
    if code != 0 and not driver.last_line().startswith("error: "):
        notes.append(f"exit {code} without a one-line error: {driver.last_line()[:300]}")
    detail = f"{length:.1f} s after {new} commits, exit {code}"
    if code:
        detail += f" ({driver.last_line()[:160]})"
    return Outcome(kind, detail, not notes, notes)


CONCURRENT_FLAGS = {
    "second_driver": None,
    "concurrent_append": "--append",
    "concurrent_retry": "--retry-failed",
}


def concurrent(kind: str, stage: Stage, driver: Driver, rng: random.Random, since: int) -> Outcome | None:
    if not stage.wait_for_lease(driver) or not stage.wait_for_commits(driver, 0, rng.uniform(0, 3), since):
        return None  # only while the driver holds the lease (it started the run: no append of nothing)
    other = stage.start(CONCURRENT_FLAGS[kind])
    if kind == "concurrent_append":
        stage.append = True  # refused or not, the user's next try is this append
    refusals = (LEASE_LINE, "is not finished") if kind == "concurrent_retry" else (LEASE_LINE,)
    other_end = finished(kind, "second process", other, {2: refusals, 0: ()})
    first_end = finished(kind, "first driver", driver, {0: ()})
    notes = other_end.notes + first_end.notes
    return Outcome(kind, f"{other_end.detail}; {first_end.detail}", not notes, notes)


FAULTS: dict[str, Callable[[Stage, Driver, random.Random, int], Outcome | None]] = {
    "driver_sigkill": driver_sigkill,
    "driver_sigterm": driver_sigterm,
    "actor_kill": actor_kill,
    "node_removed": node_removed,
    "disk_full": lambda *a: storage_outage("disk_full", *a),
    "s3_restart": lambda *a: storage_outage("s3_restart", *a),
    "second_driver": lambda *a: concurrent("second_driver", *a),
    "concurrent_append": lambda *a: concurrent("concurrent_append", *a),
    "concurrent_retry": lambda *a: concurrent("concurrent_retry", *a),
}
STORAGE_ONLY = {"disk_full": "local", "s3_restart": "seaweedfs"}


def faults_for(storage: str) -> list[str]:
    return [name for name in FAULTS if STORAGE_ONLY.get(name, storage) == storage]
