"""The short form of bench/chaos_soak.py: a seeded soak on a local folder, its drivers joining the suite's
shared Ray, ends with every planned row once in the tars, parquets, status and report, the tars
byte-identical to an undisturbed run's, and every fault survived. Minutes of it, on SeaweedFS too, are
run by hand (README, "Faults and recovery")."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))

from chaos_soak import parse_args, run_soak  # noqa: E402

SEED = 25  # one output: the driver SIGKILLed while starting, then an actor killed mid-run


@pytest.mark.slow
def test_a_seeded_chaos_soak_loses_and_duplicates_nothing(ray_cluster, tmp_path):
    address = ray_cluster.get_runtime_context().gcs_address
    args = parse_args(
        f"--seed {SEED} --faults 2 --max-faults-per-round 2 --storage local --rows 16 --shard-size 4 "
        "--latency 0.2 --nodes 1 --gpus-per-node 2 --reference worker".split()
    )
    line, clean = run_soak(args, tmp_path, address=address)
    figures = dict(part.split("=", 1) for part in line.split())
    assert clean, line
    assert (figures["faults_injected"], figures["survived"]) == ("2", "2"), line
    assert (figures["lost_rows"], figures["duplicated_rows"], figures["seed"]) == ("0", "0", str(SEED))
    identical, checked = figures["tars_identical"].split("/")
    assert identical == checked and int(checked) >= 4, line
