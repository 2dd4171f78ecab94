"""Tests of mipro_ray.dataset: loading, validation, splitting and saving examples."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from mipro_ray.dataset import (
    DatasetSpec,
    examples_from_rows,
    load_examples,
    save_parquet,
    split_examples,
    validate_examples,
)
from mipro_ray.errors import ConfigError, DatasetError
from mipro_ray.signature import Example, Signature

SIGNATURE = Signature.parse(
    'question, year:number, hint?:string -> label:class "yes, no", score:number, ok:boolean'
)

ROWS: list[Example] = [
    {
        "question": "Is water wet?",
        "year": 2020,
        "hint": "obvious",
        "label": "yes",
        "score": 1.5,
        "ok": True,
    },
    {
        "question": "Is fire cold?",
        "year": 2021,
        "hint": None,
        "label": "no",
        "score": 0.0,
        "ok": False,
    },
    {
        "question": "Is 007 a code?",
        "year": 1962,
        "hint": "Bond",
        "label": "yes",
        "score": 2.0,
        "ok": True,
    },
]


def _write_jsonl(path: Path, rows: list[Example]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _write_csv(path: Path, rows: list[Example]) -> Path:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow(
                {
                    k: "" if v is None else str(v).lower() if isinstance(v, bool) else v
                    for k, v in row.items()
                }
            )
    return path


def _write_parquet(path: Path, rows: list[Example]) -> Path:
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize(
    ("name", "writer"),
    [("data.jsonl", _write_jsonl), ("data.csv", _write_csv), ("data.parquet", _write_parquet)],
)
def test_every_format_loads_the_same_examples(tmp_path: Path, name: str, writer: object) -> None:
    path = writer(tmp_path / name, ROWS)  # type: ignore[operator]
    examples = validate_examples(load_examples(path), SIGNATURE)
    assert examples == ROWS


def test_csv_cells_load_as_text_and_numeric_strings_are_coerced(tmp_path: Path) -> None:
    path = tmp_path / "data.csv"
    path.write_text("question,year,label,score,ok\n007,2020,YES ,3.25,True\n")
    raw = load_examples(path)
    assert raw == [
        {"question": "007", "year": "2020", "label": "YES ", "score": "3.25", "ok": "True"}
    ]
    [example] = validate_examples(raw, SIGNATURE)
    assert example == {"question": "007", "year": 2020, "label": "yes", "score": 3.25, "ok": True}


def test_file_uri_and_explicit_format(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "data.jsonl", ROWS)
    assert load_examples(path.as_uri()) == load_examples(str(path))
    odd = tmp_path / "data.txt"
    odd.write_text(path.read_text())
    assert load_examples(odd, format="jsonl") == load_examples(path)


def test_jsonl_keeps_date_strings_and_json_array_files_load(tmp_path: Path) -> None:
    rows: list[Example] = [{"q": "a", "when": "2024-01-01"}, {"q": "b", "when": "2024-02-29"}]
    assert load_examples(_write_jsonl(tmp_path / "d.ndjson", rows)) == rows
    array = tmp_path / "d.json"
    array.write_text(json.dumps(rows, indent=2))
    assert load_examples(array) == rows


def test_missing_required_field_names_row_field_and_signature() -> None:
    rows: list[Example] = [dict(r) for r in ROWS]
    del rows[1]["label"]
    with pytest.raises(DatasetError) as info:
        validate_examples(rows, SIGNATURE)
    assert info.value.row == 1
    assert info.value.field == "label"
    message = str(info.value)
    assert "row 1 has no output field 'label'" in message
    assert str(SIGNATURE) in message


def test_optional_fields_and_unrequired_outputs_may_be_missing() -> None:
    inputs_only: list[Example] = [{"question": "q", "year": "1999"}]
    assert validate_examples(inputs_only, SIGNATURE, require_outputs=False) == [
        {"question": "q", "year": 1999}
    ]


def test_all_problems_are_reported_together() -> None:
    rows: list[Example] = [dict(r) for r in ROWS]
    rows[0]["label"] = "maybe"
    rows[2]["year"] = "soon"
    del rows[2]["question"]
    with pytest.raises(DatasetError) as info:
        validate_examples(rows, SIGNATURE)
    message = str(info.value)
    assert "3 problems" in message
    assert "row 0: field 'label' is 'maybe', not one of the options 'yes', 'no'" in message
    assert "row 2: field 'year' is \"soon\", not a number" in message
    assert "row 2: has no input field 'question'" in message
    assert (info.value.row, info.value.field) == (0, "label")


def test_problem_list_is_capped() -> None:
    rows: list[Example] = [{"question": "q"} for _ in range(30)]
    with pytest.raises(DatasetError) as info:
        validate_examples(rows, Signature.parse("question -> answer"))
    assert "30 problems" in str(info.value)
    assert "... and 10 more" in str(info.value)


def test_class_values_are_normalized_to_the_option_spelling() -> None:
    sig = Signature.parse('text -> label:class "Positive, Negative", stars:class "1, 2, 3"')
    rows: list[Example] = [{"text": "t", "label": " positive", "stars": 3}]
    assert validate_examples(rows, sig) == [{"text": "t", "label": "Positive", "stars": "3"}]


def test_lists_from_json_strings_and_bad_list_items() -> None:
    sig = Signature.parse("text -> tags:string[], counts:number[]")
    [ok] = validate_examples([{"text": "t", "tags": '["a", "b"]', "counts": ["1", 2]}], sig)
    assert ok == {"text": "t", "tags": ["a", "b"], "counts": [1, 2]}
    with pytest.raises(DatasetError, match=r"field 'counts' item 1 is \"x\", not a number"):
        validate_examples([{"text": "t", "tags": [], "counts": [1, "x"]}], sig)


def test_seeded_split_is_deterministic_disjoint_and_complete() -> None:
    examples: list[Example] = [{"i": i} for i in range(10)]
    first = split_examples(examples, sizes=(0.7, 0.3), seed=0)
    assert first == split_examples(examples, sizes=(0.7, 0.3), seed=0)
    assert [len(p) for p in first] == [7, 3]
    ids = [e["i"] for part in first for e in part]
    assert sorted(ids) == list(range(10))  # type: ignore[type-var]
    assert ids != list(range(10))
    assert split_examples(examples, sizes=(0.7, 0.3), seed=1) != first
    assert [len(p) for p in split_examples(examples, sizes=(2, 3), seed=0)] == [2, 3]


def test_split_sizes_that_do_not_fit_are_errors() -> None:
    examples: list[Example] = [{"i": i} for i in range(5)]
    with pytest.raises(DatasetError, match="ask for 6 examples but the dataset has 5"):
        split_examples(examples, sizes=(3, 3), seed=0)
    with pytest.raises(ConfigError, match="outside"):
        split_examples(examples, sizes=(1.5,), seed=0)


def test_save_parquet_round_trips(tmp_path: Path) -> None:
    rows: list[Example] = [
        {"q": "a", "n": 1, "tags": ["x", "y"], "meta": {"k": [1, 2]}, "mixed": 1},
        {"q": "b", "n": 2, "tags": [], "meta": {"other": None}, "mixed": "one", "extra": True},
    ]
    dest = tmp_path / "new" / "dir" / "out.parquet"
    save_parquet(rows, dest)
    loaded = load_examples(dest)
    assert loaded == [{**rows[0], "extra": None}, rows[1]]
    save_parquet(rows, (tmp_path / "uri.parquet").as_uri())
    assert load_examples(tmp_path / "uri.parquet") == loaded


def test_missing_file_and_unknown_extension(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"missing\.jsonl' does not exist"):
        load_examples(tmp_path / "missing.jsonl")
    odd = tmp_path / "data.xlsx"
    odd.write_text("x")
    with pytest.raises(DatasetError, match=r"extension '\.xlsx'.*format='jsonl'"):
        load_examples(odd)


def test_unreadable_content_is_a_dataset_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.parquet"
    bad.write_text("not parquet")
    with pytest.raises(DatasetError, match=r"cannot read parquet dataset .*bad\.parquet"):
        load_examples(bad)


def test_examples_from_rows_rejects_non_json_values() -> None:
    assert examples_from_rows([{"a": (1, 2)}]) == [{"a": [1, 2]}]
    with pytest.raises(DatasetError, match="row 1 field 'b' holds a set") as info:
        examples_from_rows([{"b": 1}, {"b": {1, 2}}])
    assert (info.value.row, info.value.field) == (1, "b")


def test_dataset_spec_needs_exactly_one_source(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "d.jsonl", ROWS)
    assert DatasetSpec(uri=str(path)).load() == load_examples(path)
    assert DatasetSpec(examples=[{"q": "a"}]).load() == [{"q": "a"}]
    with pytest.raises(ValidationError, match="exactly one"):
        DatasetSpec(uri=str(path), examples=[{"q": "a"}])
    with pytest.raises(ValidationError, match="exactly one"):
        DatasetSpec()
