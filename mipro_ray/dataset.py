"""Examples: loading (JSONL, CSV, Parquet via pyarrow), validation, seeded splits, Parquet save.

An :data:`~mipro_ray.signature.Example` is one row, a ``dict[str, JsonValue]`` keyed by field
name. Rows are numbered from 0 everywhere in this module and in :class:`DatasetError` messages
("row 0" is the first data row, not counting a CSV header).

Sources are local paths or any URI that :meth:`pyarrow.fs.FileSystem.from_uri` understands
(``file:///data/train.jsonl``, ``s3://bucket/train.parquet``, ``gs://...``). CSV has no types,
so CSV cells are loaded as strings (empty cells as ``None``); :func:`validate_examples` then
coerces them to the types the signature declares.
"""

from __future__ import annotations

import datetime as dt
import decimal
import json
import logging
import math
import os
import random
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.fs as pa_fs
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, JsonValue, model_validator

from mipro_ray.errors import ConfigError, DatasetError
from mipro_ray.signature import Example, Field, FieldType, Signature

__all__ = [
    "DatasetFormat",
    "DatasetSpec",
    "examples_from_rows",
    "load_examples",
    "save_parquet",
    "split_examples",
    "validate_examples",
]

logger = logging.getLogger(__name__)

DatasetFormat = Literal["jsonl", "csv", "parquet"]

MAX_REPORTED_PROBLEMS = 20
"""How many row problems one :class:`DatasetError` from :func:`validate_examples` lists."""

_EXTENSIONS: dict[str, DatasetFormat] = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
}
# pyarrow's input streams decompress these transparently, so "train.jsonl.gz" is JSONL.
_COMPRESSION_EXTENSIONS = (".gz", ".bz2", ".zst", ".lz4", ".br")
# Parquet schema metadata key listing columns that save_parquet stored as JSON text because
# Arrow cannot type them (mixed types, objects with varying keys).
_JSON_COLUMNS_KEY = b"mipro_ray.json_columns"
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})


# ---------------------------------------------------------------------------------------------
# Loading


def load_examples(
    source: str | os.PathLike[str], *, format: DatasetFormat | None = None
) -> list[Example]:
    """Loads examples from a JSONL, CSV or Parquet file.

    Args:
        source: A local path or a pyarrow filesystem URI (``file://``, ``s3://``, ``gs://``...).
            A Parquet source may be a directory of Parquet files.
        format: The file format; by default it is taken from the extension (``.jsonl``,
            ``.ndjson``, ``.json``, ``.csv``, ``.parquet``, ``.pq``, optionally followed by a
            compression extension such as ``.gz``).

    Returns:
        One example per row, in file order. Columns absent from a row are ``None``; dates and
        times are ISO 8601 strings; CSV cells are strings (see :func:`validate_examples`).

    Raises:
        DatasetError: The file is missing, its format is unknown, or it cannot be read.
    """
    fs, path = _filesystem(source)
    fmt = format if format is not None else _format_from_name(path, source)
    info = _file_info(fs, path, source)
    if info.type == pa_fs.FileType.Directory and fmt != "parquet":
        raise DatasetError(
            f"dataset source {_show(source)} is a directory; only Parquet "
            "datasets may be directories: point at a file instead"
        )
    try:
        if fmt == "parquet":
            table = pq.read_table(path, filesystem=fs)
        elif fmt == "csv":
            table = _read_csv(fs, path)
        else:
            if _starts_with_array(fs, path):
                with fs.open_input_stream(path) as stream:
                    rows = json.loads(stream.read())
                return examples_from_rows(rows)
            table = _read_jsonl(fs, path)
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise DatasetError(
            f"cannot read {fmt} dataset {_show(source)}: {exc}; check that the "
            f"file really is {fmt} (or pass format=...)"
        ) from exc
    examples = _table_to_examples(table, source)
    logger.debug("loaded %d examples from %s", len(examples), _show(source))
    return examples


def examples_from_rows(rows: Iterable[Mapping[str, object]]) -> list[Example]:
    """Builds examples from inline rows, checking that every value is JSON.

    Tuples become lists and dates/times become ISO 8601 strings; anything else that is not a
    JSON value (sets, bytes, NaN, custom objects, non-string keys) is rejected.

    Args:
        rows: Mappings from field name to value.

    Returns:
        One new example per row.

    Raises:
        DatasetError: A row is not a mapping or holds a non-JSON value (names the row).
    """
    examples: list[Example] = []
    for i, row in enumerate(rows):
        if not isinstance(row, Mapping):
            raise DatasetError(
                f"dataset row {i} is a {type(row).__name__}, not an object "
                "mapping field names to values",
                row=i,
            )
        example: Example = {}
        for key, value in row.items():
            if not isinstance(key, str):
                raise DatasetError(
                    f"dataset row {i} has a non-string key {key!r}; field names must be strings",
                    row=i,
                )
            try:
                example[key] = _to_json(value)
            except _NotJson as exc:
                raise DatasetError(
                    f"dataset row {i} field '{key}' {exc}", row=i, field=key
                ) from None
        examples.append(example)
    return examples


def _filesystem(source: str | os.PathLike[str]) -> tuple[pa_fs.FileSystem, str]:
    text = os.fspath(source)
    if "://" not in text:
        return pa_fs.LocalFileSystem(), os.path.abspath(os.path.expanduser(text))
    try:
        fs, path = pa_fs.FileSystem.from_uri(text)
    except (pa.ArrowException, OSError, ValueError, ImportError) as exc:
        raise DatasetError(
            f"cannot open dataset URI {text!r}: {exc}; use a local path or a URI "
            "pyarrow supports (file://, s3://, gs://, hdfs://)"
        ) from exc
    return fs, path


def _file_info(fs: pa_fs.FileSystem, path: str, source: object) -> pa_fs.FileInfo:
    try:
        info = fs.get_file_info(path)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot access dataset {_show(source)}: {exc}") from exc
    if info.type == pa_fs.FileType.NotFound:
        raise DatasetError(
            f"dataset file {_show(source)} does not exist; check the path "
            "(relative paths are resolved from the working directory)"
        )
    return info


def _format_from_name(path: str, source: object) -> DatasetFormat:
    name = path.rsplit("/", 1)[-1].lower()
    for comp in _COMPRESSION_EXTENSIONS:
        name = name.removesuffix(comp)
    ext = os.path.splitext(name)[1]
    if ext in _EXTENSIONS:
        return _EXTENSIONS[ext]
    known = ", ".join(_EXTENSIONS)
    raise DatasetError(
        f"cannot tell the format of dataset {_show(source)} from its extension "
        f"{ext or '(none)'!r}; use one of {known} or pass format='jsonl', 'csv' "
        "or 'parquet'"
    )


def _starts_with_array(fs: pa_fs.FileSystem, path: str) -> bool:
    # pyarrow only reads newline-delimited objects; a top-level JSON array is parsed by json.
    with fs.open_input_stream(path) as stream:
        head = stream.read(4096).lstrip()
    return bool(head.startswith(b"["))


def _read_jsonl(fs: pa_fs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_stream(path) as stream:
        table = pa_json.read_json(stream)
    # pyarrow infers timestamps from ISO strings, which would turn "2024-01-01" into
    # "2024-01-01T00:00:00"; read again keeping such columns as the strings they were.
    schema = pa.schema([f.with_type(_no_timestamps(f.type)) for f in table.schema])
    if schema.equals(table.schema):
        return table
    options = pa_json.ParseOptions(explicit_schema=schema)
    with fs.open_input_stream(path) as stream:
        return pa_json.read_json(stream, parse_options=options)


def _no_timestamps(type_: pa.DataType) -> pa.DataType:
    if pa.types.is_timestamp(type_):
        return pa.string()
    if pa.types.is_list(type_):
        return pa.list_(_no_timestamps(type_.value_type))
    if pa.types.is_struct(type_):
        return pa.struct(
            [
                type_.field(i).with_type(_no_timestamps(type_.field(i).type))
                for i in range(type_.num_fields)
            ]
        )
    return type_


def _read_csv(fs: pa_fs.FileSystem, path: str) -> pa.Table:
    with fs.open_input_stream(path) as stream:
        names = pa_csv.open_csv(stream).schema.names
    # Every column as text: inference would turn "007" into 7 and "NA" into null.
    options = pa_csv.ConvertOptions(
        column_types={n: pa.string() for n in names}, strings_can_be_null=True, null_values=[""]
    )
    with fs.open_input_stream(path) as stream:
        return pa_csv.read_csv(stream, convert_options=options)


def _table_to_examples(table: pa.Table, source: object) -> list[Example]:
    metadata = table.schema.metadata or {}
    json_columns = set(json.loads(metadata.get(_JSON_COLUMNS_KEY, b"[]")))
    examples: list[Example] = []
    for i, row in enumerate(table.to_pylist(maps_as_pydicts="strict")):
        example: Example = {}
        for key, value in row.items():
            try:
                if key in json_columns and isinstance(value, str):
                    example[key] = json.loads(value)
                else:
                    example[key] = _to_json(value)
            except (_NotJson, ValueError) as exc:
                raise DatasetError(
                    f"dataset {_show(source)} row {i} column '{key}' {exc}", row=i, field=key
                ) from None
        examples.append(example)
    return examples


class _NotJson(Exception):
    """A value is not representable as JSON (internal; becomes a DatasetError)."""


def _to_json(value: object) -> JsonValue:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None  # pandas-written files use NaN for missing cells
        if math.isinf(value):
            raise _NotJson("is infinite, which JSON cannot hold")
        return value
    if isinstance(value, (dt.date, dt.time)):  # datetime is a date
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        out: dict[str, JsonValue] = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise _NotJson(f"has a non-string key {k!r}")
            out[k] = _to_json(v)
        return out
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    raise _NotJson(
        f"holds a {type(value).__name__}, which is not a JSON value; use strings, "
        "numbers, booleans, null, lists or objects"
    )


def _show(source: object) -> str:
    return repr(os.fspath(source)) if isinstance(source, (str, os.PathLike)) else repr(source)


# ---------------------------------------------------------------------------------------------
# Validation


def validate_examples(
    examples: Sequence[Example], signature: Signature, *, require_outputs: bool = True
) -> list[Example]:
    """Checks examples against a signature and coerces values to the declared field types.

    Every required input field (and, when ``require_outputs``, every required output field)
    must be present and not ``None``; optional fields and internal output fields may be missing.
    Present values are coerced where the intent is obvious: numeric strings to numbers for
    ``number`` fields, ``"true"``/``"false"``/``"yes"``/``"no"``/``"1"``/``"0"`` to booleans,
    numbers to strings for text fields, JSON strings to lists for list fields and to objects for
    ``json`` fields, and ``class`` values to the spelling of the matching option (case and
    surrounding whitespace are ignored). Fields not in the signature are kept unchanged.

    Args:
        examples: The examples to check; they are not modified.
        signature: The signature the examples must fit.
        require_outputs: Whether output fields (labels) are required.

    Returns:
        New examples with coerced values.

    Raises:
        DatasetError: Some rows do not fit. The message lists up to 20 problems by 0-based row
            and field; ``row`` and ``field`` are those of the first problem.
    """
    problems: list[tuple[int, str, str]] = []
    total = 0
    checked = [(f, "input", True) for f in signature.inputs]
    checked += [(f, "output", require_outputs) for f in signature.outputs]
    out: list[Example] = []
    for i, example in enumerate(examples):
        new = dict(example)
        for field, kind, required in checked:
            value = example.get(field.name)
            if value is None:
                if required and not field.optional and not field.internal:
                    total += 1
                    problems.append((i, field.name, f"has no {kind} field '{field.name}'"))
                continue
            try:
                new[field.name] = _coerce_field(field, value)
            except _Mismatch as exc:
                total += 1
                problems.append((i, field.name, f"field '{field.name}' {exc}"))
        out.append(new)
    if problems:
        raise _validation_error(problems[:MAX_REPORTED_PROBLEMS], total, signature, require_outputs)
    return out


def _validation_error(
    problems: list[tuple[int, str, str]], total: int, signature: Signature, require_outputs: bool
) -> DatasetError:
    row, field, _ = problems[0]
    hint = "fix or drop these rows, or mark the field optional in the signature ('name?:type')"
    if not require_outputs:
        hint = "fix or drop these rows"
    if total == 1:
        text = problems[0][2]
        message = f"dataset row {row} {text} required by signature '{signature}'; {hint}"
        if not text.startswith("has no "):
            message = f"dataset row {row} {text} (signature '{signature}'); {hint}"
        return DatasetError(message, row=row, field=field)
    lines = [f"  row {r}: {text}" for r, _, text in problems]
    if total > len(problems):
        lines.append(f"  ... and {total - len(problems)} more")
    message = (
        f"{total} problems in dataset rows for signature '{signature}' (rows are "
        f"0-based); {hint}:\n" + "\n".join(lines)
    )
    return DatasetError(message, row=row, field=field)


class _Mismatch(Exception):
    """A value does not fit its field (internal; collected into a DatasetError)."""


def _coerce_field(field: Field, value: JsonValue) -> JsonValue:
    if not field.is_list:
        return _coerce_scalar(field, value)
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except ValueError:
            raise _Mismatch(
                f"is {_brief(value)}, not a list; give a list or a JSON array "
                'string such as \'["a", "b"]\''
            ) from None
    if not isinstance(value, list):
        raise _Mismatch(f"is {_brief(value)}, not a list")
    items: list[JsonValue] = []
    for j, item in enumerate(value):
        try:
            items.append(_coerce_scalar(field, item))
        except _Mismatch as exc:
            raise _Mismatch(f"item {j} {exc}") from None
    return items


def _coerce_scalar(field: Field, value: JsonValue) -> JsonValue:
    kind = field.type
    if kind == FieldType.NUMBER:
        return _coerce_number(value)
    if kind == FieldType.BOOLEAN:
        return _coerce_bool(value)
    if kind == FieldType.CLASS:
        return _coerce_class(field, value)
    if kind == FieldType.JSON:
        if isinstance(value, str) and value.lstrip()[:1] in ("{", "["):
            try:
                return json.loads(value)  # type: ignore[no-any-return]
            except ValueError:
                return value
        return value
    if kind in (FieldType.DATE, FieldType.DATETIME):
        return _coerce_date(value, kind)
    # string, code, url: text
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    raise _Mismatch(f"is {_brief(value)}, not text")


def _coerce_number(value: JsonValue) -> JsonValue:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip()
        for parse in (int, float):
            try:
                number = parse(text)
            except ValueError:
                continue
            if isinstance(number, float) and not math.isfinite(number):
                break
            return number
    raise _Mismatch(f"is {_brief(value)}, not a number")


def _coerce_bool(value: JsonValue) -> JsonValue:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise _Mismatch(f"is {_brief(value)}, not a boolean (true/false)")


def _coerce_class(field: Field, value: JsonValue) -> JsonValue:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # e.g. star ratings with options "1, 2, 3"
    if not isinstance(value, str):
        raise _Mismatch(f"is {_brief(value)}, not a class label")
    if not field.options:
        return value
    wanted = value.strip().casefold()
    for option in field.options:
        if option.strip().casefold() == wanted:
            return option
    choices = ", ".join(repr(o) for o in field.options)
    raise _Mismatch(f"is {value!r}, not one of the options {choices}")


def _coerce_date(value: JsonValue, kind: FieldType) -> JsonValue:
    if isinstance(value, str):
        text = value.strip()
        try:
            if kind == FieldType.DATE:
                dt.date.fromisoformat(text)
            else:
                dt.datetime.fromisoformat(
                    text.removesuffix("Z") + ("+00:00" if text.endswith("Z") else "")
                )
        except ValueError:
            pass
        else:
            return text
    example = "2024-01-31" if kind == FieldType.DATE else "2024-01-31T09:30:00"
    raise _Mismatch(f"is {_brief(value)}, not an ISO 8601 {kind.value} such as '{example}'")


def _brief(value: JsonValue) -> str:
    text = json.dumps(value, ensure_ascii=False)
    return text if len(text) <= 60 else text[:57] + "..."


# ---------------------------------------------------------------------------------------------
# Splitting and saving


def split_examples(
    examples: Sequence[Example], *, sizes: Sequence[int | float], seed: int
) -> tuple[list[Example], ...]:
    """Shuffles examples with a seeded RNG and cuts them into consecutive disjoint parts.

    Args:
        examples: The examples to split (not modified; the parts share the example dicts).
        sizes: One size per part: an ``int`` is a count, a ``float`` in ``(0, 1]`` a fraction
            of the dataset (rounded down). When every size is a fraction and they sum to 1, the
            last part also takes the rows lost to rounding, so the parts cover the dataset.
            Otherwise rows beyond the requested sizes are left out.
        seed: Seed of :class:`random.Random`; the same seed gives the same parts.

    Returns:
        One list per size, in order.

    Raises:
        ConfigError: A size is negative, a fraction is outside ``(0, 1]``, or sizes is empty.
        DatasetError: The sizes add up to more examples than there are.
    """
    if not sizes:
        raise ConfigError("split_examples needs at least one size, e.g. sizes=(0.8, 0.2)")
    n = len(examples)
    counts: list[int] = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, (int, float)):
            raise ConfigError(f"split size {size!r} is not a count (int) or fraction (float)")
        if isinstance(size, int):
            if size < 0:
                raise ConfigError(f"split size {size} is negative; use a count >= 0")
            counts.append(size)
        elif not 0.0 < size <= 1.0:
            raise ConfigError(f"split fraction {size} is outside (0, 1]; use an int for a count")
        else:
            counts.append(math.floor(size * n))
    if all(isinstance(s, float) for s in sizes) and math.isclose(sum(sizes), 1.0):
        counts[-1] = n - sum(counts[:-1])
    if sum(counts) > n:
        raise DatasetError(
            f"split sizes {list(sizes)} ask for {sum(counts)} examples but the "
            f"dataset has {n}; use smaller sizes or fractions"
        )
    order = list(range(n))
    random.Random(seed).shuffle(order)
    parts: list[list[Example]] = []
    start = 0
    for count in counts:
        parts.append([examples[i] for i in order[start : start + count]])
        start += count
    return tuple(parts)


def save_parquet(examples: Sequence[Example], dest: str | os.PathLike[str]) -> None:
    """Writes examples to one Parquet file that :func:`load_examples` reads back unchanged.

    Columns are the union of the rows' keys (a row without a key gets ``None``). A column Arrow
    cannot type (mixed value types, objects with varying keys) is stored as JSON text and
    marked in the file's metadata, so it loads back as the original values.

    Args:
        examples: The examples to write.
        dest: A local path (missing parent directories are created) or a pyarrow filesystem URI.

    Raises:
        DatasetError: The file cannot be written.
    """
    fs, path = _filesystem(dest)
    names = list(dict.fromkeys(key for example in examples for key in example))
    arrays: list[pa.Array] = []
    json_columns: list[str] = []
    for name in names:
        values = [example.get(name) for example in examples]
        array = _arrow_column(values)
        if array is None:
            json_columns.append(name)
            array = pa.array([None if v is None else json.dumps(v) for v in values], pa.string())
        arrays.append(array)
    metadata = {_JSON_COLUMNS_KEY: json.dumps(json_columns).encode()} if json_columns else None
    table = pa.Table.from_arrays(arrays, names=names, metadata=metadata)
    try:
        if isinstance(fs, pa_fs.LocalFileSystem):
            os.makedirs(os.path.dirname(path), exist_ok=True)
        pq.write_table(table, path, filesystem=fs)
    except (pa.ArrowException, OSError) as exc:
        raise DatasetError(f"cannot write Parquet dataset {_show(dest)}: {exc}") from exc
    logger.debug("saved %d examples to %s", len(examples), _show(dest))


def _arrow_column(values: list[JsonValue]) -> pa.Array | None:
    if any(
        isinstance(v, dict) or (isinstance(v, list) and any(isinstance(x, (dict, list)) for x in v))
        for v in values
    ):
        return None  # structs would gain null keys on the way back; keep nested data as JSON
    try:
        return pa.array(values)
    except (pa.ArrowException, OverflowError):
        return None


# ---------------------------------------------------------------------------------------------
# Config model


class DatasetSpec(BaseModel):
    """Where a dataset comes from, for YAML configs and HTTP job specs.

    Exactly one of ``uri`` and ``examples`` is set.

    Attributes:
        uri: A local path or pyarrow filesystem URI passed to :func:`load_examples`.
        examples: Inline rows.
        format: The file format of ``uri``; by default taken from its extension.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    uri: str | None = None
    examples: list[Example] | None = None
    format: DatasetFormat | None = None

    @model_validator(mode="after")
    def _one_source(self) -> DatasetSpec:
        if (self.uri is None) == (self.examples is None):
            raise ValueError(
                "give exactly one of 'uri' (a file or URI) and 'examples' (inline rows)"
            )
        if self.format is not None and self.uri is None:
            raise ValueError("'format' only applies to 'uri'; drop it for inline examples")
        return self

    def load(self) -> list[Example]:
        """Loads the examples (from the URI, or copies of the inline rows).

        Raises:
            DatasetError: The source cannot be read.
        """
        if self.uri is not None:
            return load_examples(self.uri, format=self.format)
        return examples_from_rows(self.examples or [])
