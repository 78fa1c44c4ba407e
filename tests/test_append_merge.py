"""--append compares the run's plan with the bigger manifest's by a sorted merge on uid (find_sorted):
the same answer as a dictionary lookup, for plan uids (32 hex digits, a view of Arrow's buffer) and any
other strings, sliced or chunked."""

from __future__ import annotations

import random

import numpy as np
import pyarrow as pa
import pytest

from pipeline.run.append import find_sorted


@pytest.mark.parametrize("seed", range(6))
def test_find_sorted_equals_a_lookup(seed):
    rng = random.Random(seed)
    width = 32 if seed % 2 == 0 else None  # None: strings of other lengths (the fallback)
    make = lambda: "".join(rng.choice("0123456789abcdef") for _ in range(width or rng.randint(1, 6)))  # noqa: E731
    among = list(dict.fromkeys(make() for _ in range(rng.randint(0, 300))))
    wanted = [
        rng.choice(among) if among and rng.random() < 0.7 else make() for _ in range(rng.randint(0, 300))
    ]
    position = {uid: index for index, uid in enumerate(among)}
    expected = [position.get(uid, -1) for uid in wanted]
    cut = len(among) // 2
    chunked = pa.chunked_array([pa.array(among[:cut], pa.string()), pa.array(among[cut:], pa.string())])
    sliced = pa.chunked_array([pa.array(["x" * 32, *wanted], pa.string()).slice(1)])  # a buffer offset
    assert find_sorted(sliced, chunked).tolist() == expected
    assert find_sorted(sliced, chunked).dtype == np.int64
