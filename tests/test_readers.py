"""The shards feed training directly: Hugging Face `datasets` reads a run's shard parquets as one table
(webdataset and ray.data readers of the tars are exercised in the storage, fault and demo tests).

Not tested here: `load_dataset("webdataset", ...)` on the tars. Its loader infers the json member's
features from the first 5 samples, so a field that is null there (`content` in stylization rows) and set
later fails to cast; pass `features=` or read the metadata from the parquets (see README)."""

import datasets
import pytest

from tests.output_fixtures import build_output, read_shard_tables


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    return build_output(tmp_path_factory.mktemp("readers"))


def test_hf_datasets_reads_the_shard_parquets_as_one_table(finished, tmp_path):
    tables = sorted(str(p) for p in (finished.store.root / "metadata").glob("*.parquet"))
    ds = datasets.load_dataset(
        "parquet", data_files={"train": tables}, split="train", cache_dir=str(tmp_path)
    )
    expected = read_shard_tables(finished.store)
    assert ds.num_rows == expected.num_rows and sorted(ds["uid"]) == sorted(
        expected.column("uid").to_pylist()
    )
