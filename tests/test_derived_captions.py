"""A derived output (select, dedup) carries every member its source had, the `{uid}.txt` caption too,
so the README's reader `.to_tuple("jpg;png;webp", "txt", "json")` works on it as on the run."""

from __future__ import annotations

import tarfile

import webdataset as wds

from pipeline.dataset.select import Selection, select_output
from tests.output_fixtures import build_output


def members(root) -> dict[str, bytes]:
    found = {}
    for path in sorted((root / "shards").glob("*.tar")):
        with tarfile.open(path) as tar:
            found.update({m.name: tar.extractfile(m).read() for m in tar.getmembers()})
    return found


def test_select_keeps_every_caption_and_the_readme_reader_reads_it(tmp_path):
    built = build_output(tmp_path / "run", rows=24, shard_size=5)
    select_output(built.uri, str(tmp_path / "top"), Selection("clip_t", top=0.5), shard_size=3)
    source, derived = members(built.store.root), members(tmp_path / "top")
    captions = {name: data for name, data in derived.items() if name.endswith(".txt")}
    kept = {name.split(".")[0] for name in derived}
    assert len(captions) == len(kept) > 0
    assert all(source[name] == data for name, data in captions.items())
    shards = sorted(str(path) for path in (tmp_path / "top" / "shards").glob("*.tar"))
    read = list(wds.WebDataset(shards, shardshuffle=False).to_tuple("__key__", "jpg;png;webp", "txt", "json"))
    assert sorted(key for key, *_ in read) == sorted(kept)
    assert all(caption == source[f"{key}.txt"] for key, _, caption, _ in read)
