import csv
import json

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from manifest_fixtures import write_parquet

from manifests.read import read_manifest
from manifests.schema import CANONICAL_COLUMNS, ManifestError
from manifests.uid import compute_uid

pytest_plugins = ["s3_fixtures"]

ODD_PROMPTS = [
    'a cat, "quoted", with commas',
    "two\nlines",
    "tab\there and a trailing space ",
    "1984",  # must stay text, not become a number
    "unicode ü 猫 and a line separator \u2028 inside",
]


def uids_of(table: pa.Table) -> list[str]:
    return [compute_uid(r["style"], r["content"], r["prompt"], r["seed"]) for r in table.to_pylist()]


def test_pandas_manifest_with_index_nan_ids_and_seeds(tmp_path):
    frame = pd.DataFrame(
        {
            "prompt": ["a cat", "a dog", "a bird"],
            "style": ["/s/a.png", "s3://bucket/b.png", "file:///s/c.png"],
            "content": [None, "/c/x.png", ""],
            "id": [7, None, 9],  # pandas stores this as float64 7.0, NaN, 9.0
            "seed": [11, None, 13],  # likewise
            "score": [0.5, 0.25, 1.0],
        },
        index=[10, 20, 30],  # a non-range index is written as __index_level_0__
    )
    frame.to_parquet(tmp_path / "m.parquet")
    assert "__index_level_0__" in pq.read_schema(tmp_path / "m.parquet").names

    table = read_manifest(str(tmp_path / "m.parquet"))
    assert table.column_names == [*CANONICAL_COLUMNS, "score"]
    assert table.column("row").to_pylist() == [0, 1, 2]
    assert table.column("id").to_pylist() == ["7", None, "9"]
    assert table.column("seed").to_pylist() == [11, None, 13]
    assert table.column("seed").type == pa.int64()
    assert table.column("content").to_pylist() == [None, "/c/x.png", None]  # "" means no content
    assert table.column("score").to_pylist() == [0.5, 0.25, 1.0]
    assert table.column("uid").to_pylist() == uids_of(table)


def test_pandas_named_index_is_data_and_categoricals_are_text(tmp_path):
    frame = pd.DataFrame({"id": ["x1", "x2"], "prompt": ["a cat", "a cat"], "style": ["a.png", "b.png"]})
    frame["prompt"] = frame["prompt"].astype("category")
    frame.set_index("id").to_parquet(tmp_path / "m.parquet")
    table = read_manifest(str(tmp_path / "m.parquet"))
    assert table.column("id").to_pylist() == ["x1", "x2"]
    assert table.column("prompt").type == pa.string()
    assert table.column("prompt").to_pylist() == ["a cat", "a cat"]


def test_pyarrow_manifest_types_and_extra_columns_are_carried_untouched(tmp_path):
    extras = {
        "tags": pa.array([["a", "b"], []], pa.list_(pa.string())),
        "meta": pa.array([{"k": 1}, {"k": 2}]),
        "weight": pa.array([1.5, None], pa.float32()),
    }
    path = write_parquet(
        tmp_path / "m.parquet",
        {
            "style": pa.array(["a.png", "b.png"], pa.large_string()),
            "prompt": pa.array(["p1", "p2"]).dictionary_encode(),
            "seed": pa.array([1, 2], pa.uint8()),
            "id": pa.array([True, False]),
            **extras,
        },
    )
    table = read_manifest(path)
    assert table.column_names == [*CANONICAL_COLUMNS, "tags", "meta", "weight"]
    assert table.schema.field("style").type == pa.string()
    assert table.column("seed").to_pylist() == [1, 2]
    assert table.column("id").to_pylist() == ["true", "false"]
    for name, array in extras.items():
        assert table.column(name).combine_chunks().equals(array)


def test_folder_of_parquet_files_numbers_rows_across_files(tmp_path):
    folder = tmp_path / "parts dir"
    write_parquet(folder / "part-0.parquet", {"prompt": ["a", "b"], "style": ["s1.png", "s2.png"]})
    write_parquet(folder / "sub" / "part-1.parquet", {"prompt": ["c"], "style": ["s3.png"], "note": ["x"]})
    write_parquet(folder / "_tmp" / "ignored.parquet", {"prompt": ["zzz"], "style": ["z.png"]})
    (folder / "_SUCCESS").write_text("")
    (folder / ".hidden.parquet").write_bytes(b"not parquet")
    table = read_manifest(str(folder))
    assert table.column("prompt").to_pylist() == ["a", "b", "c"]
    assert table.column("row").to_pylist() == [0, 1, 2]
    assert table.column("note").to_pylist() == [None, None, "x"]


def test_error_in_second_file_names_that_file_the_row_and_the_column(tmp_path):
    folder = tmp_path / "parts"
    write_parquet(folder / "a.parquet", {"prompt": ["a", "b"], "style": ["s.png", "t.png"]})
    write_parquet(
        folder / "b.parquet", {"prompt": ["c", "d"], "style": ["u.png", "v.png"], "seed": ["5", "x"]}
    )
    with pytest.raises(ManifestError) as caught:
        read_manifest(str(folder))
    message = str(caught.value)
    assert "b.parquet" in message and "column 'seed'" in message and "row 3" in message and "'x'" in message
    assert caught.value.rows == [3] and caught.value.column == "seed"


def write_csv(path, rows: list[dict]) -> str:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return str(path)


def test_csv_round_trips_odd_prompts_and_empty_cells(tmp_path):
    rows = [
        {
            "prompt": p,
            "style": f"/st yles/ü {i}.png",
            "content": "" if i % 2 else "/c.png",
            "seed": "" if i else "3",
        }
        for i, p in enumerate(ODD_PROMPTS)
    ]
    table = read_manifest(write_csv(tmp_path / "hand made.v2.csv", rows))
    assert table.column("prompt").to_pylist() == ODD_PROMPTS
    assert table.column("style").to_pylist() == [r["style"] for r in rows]
    assert table.column("content").to_pylist() == [None if i % 2 else "/c.png" for i in range(len(rows))]
    assert table.column("seed").to_pylist() == [3] + [None] * (len(rows) - 1)
    assert table.column("uid").to_pylist() == uids_of(table)


def test_jsonl_round_trips_odd_prompts_and_mixed_ids(tmp_path):
    records = [
        {"prompt": p, "style": "s.png", "id": i if i % 2 else f"id-{i}"} for i, p in enumerate(ODD_PROMPTS)
    ]
    records[0]["seed"] = 12
    path = tmp_path / "list ü.jsonl"
    path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n\n", encoding="utf-8")
    table = read_manifest(str(path))
    assert table.column("prompt").to_pylist() == ODD_PROMPTS
    assert table.column("id").to_pylist() == ["id-0", "1", "id-2", "3", "id-4"]
    assert table.column("seed").to_pylist() == [12, None, None, None, None]


def test_csv_and_parquet_of_the_same_rows_give_the_same_uids(tmp_path):
    rows = [{"prompt": p, "style": "s.png"} for p in ODD_PROMPTS]
    from_csv = read_manifest(write_csv(tmp_path / "m.csv", rows))
    from_parquet = read_manifest(write_parquet(tmp_path / "m.parquet", pd.DataFrame(rows).to_dict("list")))
    assert from_csv.column("uid").to_pylist() == from_parquet.column("uid").to_pylist()


@pytest.mark.parametrize(
    ("columns", "expected"),
    [
        ({"style": ["a.png"]}, ["missing required column 'prompt'"]),
        ({"prompt": ["p"], "style": ["a.png"], "uid": ["x"]}, ["column 'uid' is reserved"]),
        ({"prompt": [1], "style": ["a.png"]}, ["column 'prompt' must hold text", "int64"]),
        (
            {"prompt": ["p", "q"], "style": ["a.png", "b.png"], "seed": [1.0, 1.5]},
            ["column 'seed'", "row 1", "1.5"],
        ),
        (
            {"prompt": ["p"], "style": ["a.png"], "seed": pa.array([2**64 - 1], pa.uint64())},
            ["column 'seed'", "row 0"],
        ),
    ],
)
def test_schema_errors_name_the_file_column_and_rows(tmp_path, columns, expected):
    path = write_parquet(tmp_path / "bad file.parquet", columns)
    with pytest.raises(ManifestError) as caught:
        read_manifest(path)
    assert "bad file.parquet" in str(caught.value)
    for text in expected:
        assert text in str(caught.value)


def test_unreadable_inputs_are_clear_errors(tmp_path):
    (tmp_path / "m.txt").write_text("prompt,style\n")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a", "style": "s.png"}\n{not json}\n')
    (tmp_path / "empty.csv").write_text("prompt,style\n")
    (tmp_path / "nothing here").mkdir()
    cases = {
        "m.txt": "unknown manifest format '.txt'",
        "bad.jsonl": "line 2 is not valid JSON",
        "empty.csv": "no rows",
        "nothing here": "no manifest files",
        "missing.parquet": "not found",
    }
    for name, expected in cases.items():
        with pytest.raises(ManifestError, match=expected):
            read_manifest(str(tmp_path / name))


def test_jsonl_column_with_mixed_types_names_the_rows(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text(
        '{"prompt": "a", "style": "s.png", "x": 1}\n{"prompt": "b", "style": "s.png", "x": "two"}\n'
    )
    with pytest.raises(ManifestError, match=r"column 'x' mixes value types: int \(row 0\), str \(row 1\)"):
        read_manifest(str(path))


def test_compact_read_holds_the_same_values(tmp_path):
    path = write_parquet(
        tmp_path / "m.parquet",
        {"prompt": ["a", "b", "a"], "style": ["s.png", "s.png", "t.png"], "content": ["", None, "c.png"]},
    )
    plain, compact = read_manifest(path), read_manifest(path, compact=True)
    assert pa.types.is_dictionary(compact.schema.field("prompt").type)
    assert compact.to_pylist() == plain.to_pylist()


def test_reads_parquet_csv_and_prefixes_from_s3(s3_bucket, tmp_path):
    local = write_parquet(
        tmp_path / "m.parquet", {"prompt": ["a", "b"], "style": ["s3://x/1.png", "s3://x/2.png"]}
    )
    s3_bucket.client.upload_file(local, s3_bucket.name, "manifests/part 1.parquet")
    csv_path = write_csv(tmp_path / "m.csv", [{"prompt": "c, d", "style": "s3://x/3.png"}])
    s3_bucket.client.upload_file(csv_path, s3_bucket.name, "manifests/part 2.csv")
    single = read_manifest(s3_bucket.uri("manifests/part 1.parquet"))
    assert single.column("prompt").to_pylist() == ["a", "b"]
    folder = read_manifest(s3_bucket.uri("manifests/"))
    assert folder.column("prompt").to_pylist() == ["a", "b", "c, d"]
    assert folder.column("row").to_pylist() == [0, 1, 2]
