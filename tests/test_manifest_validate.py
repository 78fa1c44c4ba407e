import pyarrow as pa
import pytest
from manifest_fixtures import png_bytes, sample_images, write_parquet

from manifests.read import read_manifest
from manifests.schema import ManifestError
from manifests.tiny_tokenizer import save_tiny_clip_tokenizer
from manifests.tokens import default_tokenizer_dir, load_clip_tokenizer
from manifests.validate import validate_manifest, validate_table

pytest_plugins = ["s3_fixtures"]


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tokenizer")
    save_tiny_clip_tokenizer(directory)
    return directory


def validate_rows(tmp_path, tokenizer_dir, check_files=False, **columns):
    path = write_parquet(tmp_path / "manifest.parquet", columns)
    return validate_manifest(path, check_files=check_files, tokenizer_dir=tokenizer_dir)


def only(report, kind):
    found = report.by_kind().get(kind, [])
    assert len(found) == 1, [p.message() for p in report.problems]
    return found[0]


def test_a_clean_manifest_has_no_problems(tmp_path, tokenizer_dir):
    images = sample_images(tmp_path)
    report = validate_rows(
        tmp_path,
        tokenizer_dir,
        check_files=True,
        prompt=["a cat", "a dog"],
        style=[images["s1"], "file://" + images["s2"].replace(" ", "%20")],
        content=[images["c1"], None],
    )
    assert report.problems == [] and report.ok and report.num_rows == 2


def test_missing_and_empty_required_values(tmp_path, tokenizer_dir):
    report = validate_rows(
        tmp_path,
        tokenizer_dir,
        prompt=["a cat", None, "  ", "a cow", None],
        style=["a.png", "b.png", "c.png", None, ""],
    )
    messages = sorted(p.message() for p in report.problems)
    assert messages == [
        "column 'prompt', row 2: prompt is empty ('  ')",
        "column 'prompt', rows 1, 4: prompt is missing (null)",
        "column 'style', row 3: style is missing (null)",
        "column 'style', row 4: style is empty ('')",
    ]
    assert {p.kind for p in report.problems} == {"missing-value", "empty-value"}
    assert not report.ok


def test_unsupported_uris_name_the_value_row_and_column(tmp_path, tokenizer_dir):
    report = validate_rows(
        tmp_path,
        tokenizer_dir,
        prompt=["a", "b", "c", "d"],
        style=["http://example.com/a.png", "s3://bucket/k.png", "s3://bucket-only", "gs://b/x.png"],
        content=[None, "ftp://h/c.png", None, None],
    )
    messages = sorted(p.message() for p in report.by_kind()["unsupported-uri"])
    assert messages == [
        "column 'content', row 1: 'ftp://h/c.png': unsupported URI scheme 'ftp://' "
        "(use a local path, file:// or s3://)",
        "column 'style', row 0: 'http://example.com/a.png': unsupported URI scheme 'http://' "
        "(use a local path, file:// or s3://)",
        "column 'style', row 2: 's3://bucket-only': an s3:// URI needs a bucket and an object key (s3://bucket/key)",
        "column 'style', row 3: 'gs://b/x.png': unsupported URI scheme 'gs://' (use a local path, file:// or s3://)",
    ]


def test_negative_seed(tmp_path, tokenizer_dir):
    report = validate_rows(tmp_path, tokenizer_dir, prompt=["a", "b"], style=["s.png", "s.png"], seed=[3, -2])
    assert (
        only(report, "bad-seed").message()
        == "column 'seed', row 1: seed must be >= 0 (it seeds the generator)"
    )


def test_duplicate_uids_name_all_their_rows(tmp_path, tokenizer_dir):
    report = validate_rows(
        tmp_path,
        tokenizer_dir,
        prompt=["a", "b", "a", "a", "b"],
        style=["s.png", "s.png", "s.png", "t.png", "s.png"],
        extra=[1, 2, 3, 4, 5],  # extra columns do not make rows distinct
    )
    table = read_manifest(str(tmp_path / "manifest.parquet"))
    uids = table.column("uid").to_pylist()
    found = sorted((p.rows, p.reason) for p in report.by_kind()["duplicate-uid"])
    assert found == [
        ((0, 2), f"uid {uids[0]} is shared by these rows (same style, content, prompt and seed)"),
        ((1, 4), f"uid {uids[1]} is shared by these rows (same style, content, prompt and seed)"),
    ]
    assert all(p.column == "uid" for p in report.by_kind()["duplicate-uid"])


def test_prompt_length_limit_is_77_tokens_with_start_and_end(tmp_path, tokenizer_dir):
    at_limit = " ".join(["a"] * 75)  # 75 one-token words + start + end
    over = at_limit + " sky"
    tokenizer = load_clip_tokenizer(tokenizer_dir)
    assert [len(tokenizer(p).input_ids) for p in (at_limit, over)] == [77, 78]  # the independent count
    report = validate_rows(
        tmp_path, tokenizer_dir, prompt=[at_limit, over, over], style=["s.png", "s.png", "t.png"]
    )
    problem = only(report, "prompt-too-long")
    assert problem.severity == "warning" and problem.rows == (1, 2) and problem.column == "prompt"
    assert problem.reason == "78 tokens, the text encoder takes 77: the prompt will be truncated"
    assert report.ok  # warnings only
    assert f"token counts use the tokenizer in {tokenizer_dir}" in report.notes


def test_default_tokenizer_is_built_once_into_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert default_tokenizer_dir() == tmp_path / "cache" / "stylegen" / "tiny-clip-tokenizer"
    table = read_manifest(write_parquet(tmp_path / "m.parquet", {"prompt": ["a cat"], "style": ["s.png"]}))
    report = validate_table(table)
    assert report.problems == [] and report.notes == []  # nothing flagged: which tokenizer is moot
    assert (default_tokenizer_dir() / "tokenizer_config.json").exists()
    long = read_manifest(write_parquet(tmp_path / "l.parquet", {"prompt": ["a " * 80], "style": ["s.png"]}))
    report = validate_table(long)
    assert [p.kind for p in report.problems] == ["prompt-too-long"]
    assert len(report.notes) == 1 and "same byte-level BPE scheme as CLIP-bigG" in report.notes[0]
    assert len(load_clip_tokenizer()) > 2 * 256


def test_check_files_finds_missing_and_undecodable_images(tmp_path, tokenizer_dir):
    images = sample_images(tmp_path)
    (tmp_path / "fake.png").write_bytes(b"this is not a png")
    (tmp_path / "truncated.png").write_bytes(png_bytes(size=(64, 64))[:-30])
    missing = str(tmp_path / "gone dir" / "missing ü.png")
    report = validate_rows(
        tmp_path,
        tokenizer_dir,
        check_files=True,
        prompt=["a", "b", "c", "d", "e"],
        style=[images["s1"], missing, str(tmp_path / "fake.png"), missing, images["s2"]],
        content=[None, None, None, str(tmp_path / "truncated.png"), images["s1"]],  # a style can be a content
    )
    missing_problem = only(report, "missing-file")
    assert missing_problem.message() == f"column 'style', rows 1, 3: {missing!r}: file not found"
    unreadable = sorted(p.message() for p in report.by_kind()["unreadable-file"])
    assert unreadable[0].startswith(f"column 'content', row 3: {str(tmp_path / 'truncated.png')!r}: ")
    assert (
        unreadable[1]
        == f"column 'style', row 2: {str(tmp_path / 'fake.png')!r}: not an image (unknown format)"
    )


def test_check_files_reads_s3_objects(s3_bucket, tmp_path, tokenizer_dir):
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="styles/ok image.png", Body=png_bytes())
    s3_bucket.client.put_object(Bucket=s3_bucket.name, Key="styles/bad.png", Body=b"nope")
    report = validate_rows(
        tmp_path,
        tokenizer_dir,
        check_files=True,
        prompt=["a", "b", "c"],
        style=[
            s3_bucket.uri("styles/ok image.png"),
            s3_bucket.uri("styles/missing.png"),
            s3_bucket.uri("styles/bad.png"),
        ],
    )
    assert only(report, "missing-file").rows == (1,)
    assert only(report, "unreadable-file").rows == (2,)


def test_unreadable_manifest_is_one_schema_problem(tmp_path, tokenizer_dir):
    report = validate_rows(
        tmp_path, tokenizer_dir, prompt=["a", "b"], style=["s.png", "t.png"], seed=["1", "x"]
    )
    problem = only(report, "schema")
    assert problem.column == "seed" and problem.rows == (1,) and "row 1" in problem.reason
    assert not report.ok and report.num_rows == 0


def test_problems_keep_the_first_rows_and_the_total_count(tmp_path):
    columns = {"prompt": [""] * 1500, "style": [f"s{i}.png" for i in range(1500)]}
    table = read_manifest(write_parquet(tmp_path / "m.parquet", columns))
    report = validate_table(table, check_prompt_length=False)
    [problem] = report.problems
    assert problem.row_count == 1500 and problem.rows == tuple(range(1000))
    assert problem.message() == (
        "column 'prompt', rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ... (+1490 more): prompt is empty ('')"
    )
    with pytest.raises(ManifestError, match="1 error"):
        report.raise_for_errors()


def test_structured_report_is_reusable_on_any_normalized_table(tmp_path):
    table = read_manifest(
        write_parquet(tmp_path / "m.parquet", {"prompt": ["a", None], "style": ["s.png", "s.png"]})
    )
    report = validate_table(pa.concat_tables([table]), source="in memory", check_prompt_length=False)
    assert [(p.severity, p.kind, p.column, p.rows) for p in report.errors] == [
        ("error", "missing-value", "prompt", (1,))
    ]
