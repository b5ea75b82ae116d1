"""What a person sees of an artifact without unpickling it: a longer repr and, for a data frame, its
first rows, both made when the step saves the value.

The artifact view in the Airflow UI (and anyone browsing a run) must never unpickle: a pickle is
code, and the API server is no place to run a step's. So the step, which holds the value anyway,
writes down what it looks like: a repr bounded in size (reprlib, so a list of ten million items
costs a few thousand element reprs, not ten million) and, for a pandas or polars data frame, a
table of its first rows as strings. The preview is JSON, stored as a blob named by its hash; the
previews of one save share a pack of their own (one write; loading an artifact never downloads
them), and are read back verified.

A value whose one-line repr in the manifest already says everything gets no preview.
"""

from __future__ import annotations

import builtins
import json
import re
import reprlib
from typing import Any

#: The longest repr a preview keeps (the UI pages through it).
PREVIEW_REPR_CHARS = 48 * 1024
#: The most rows and columns of a data frame a preview keeps, and the longest cell.
TABLE_ROWS = 100
TABLE_COLUMNS = 40
CELL_CHARS = 120
#: A preview's JSON is kept under this size (rows are dropped to fit): it rides in a pack.
PREVIEW_MAX_BYTES = 64 * 1024


def cut_end(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` characters: its beginning, then ``...`` when it is longer.

    The beginning says what a value is (``CaughtException(ValueError: alpha too large...``);
    reprlib's own cut keeps both ends and drops the middle, which is where a message is.
    """
    return text if len(text) <= limit else text[: max(0, limit - 3)] + "..."


class BoundedRepr(reprlib.Repr):
    """reprlib that never builds a giant intermediate string, and cuts at the end.

    reprlib already slices str before calling repr, but not bytes: repr() of a 256 MB bytes value
    would build a 1 GB string only to cut it. ``bytes_shown`` bounds that. Every cut keeps the
    beginning (:func:`cut_end`), where reprlib would keep both ends.
    """

    bytes_shown = 60

    def repr_str(self, value: str, level: int) -> str:
        return cut_end(builtins.repr(value[: self.maxstring]), self.maxstring)

    def repr_int(self, value: int, level: int) -> str:
        return cut_end(builtins.repr(value), self.maxlong)

    def repr_instance(self, value: Any, level: int) -> str:
        try:
            text = builtins.repr(value)
        except Exception as error:
            return self.unrepresentable(value, error)
        return cut_end(text, self.maxother)

    def unrepresentable(self, value: Any, error: Exception) -> str:
        return f"<repr failed: {type(error).__name__}>"

    def _repr_binary(self, value: Any, level: int) -> str:
        text = builtins.repr(value[: self.bytes_shown])
        if len(value) > self.bytes_shown:
            text = text[:-1] + "..." + text[-1]
        return text

    repr_bytes = repr_bytearray = _repr_binary

    def repr_memoryview(self, value: memoryview, level: int) -> str:
        return f"<memoryview of {value.nbytes} bytes>"


class _LongRepr(BoundedRepr):
    """Generous but finite limits: enough to read, never the whole of a huge value."""

    bytes_shown = 256

    def __init__(self) -> None:
        super().__init__()
        self.maxlevel = 6
        self.maxtuple = self.maxlist = self.maxarray = self.maxdeque = 5000
        self.maxdict = self.maxset = self.maxfrozenset = 2000
        self.maxstring = self.maxother = PREVIEW_REPR_CHARS
        self.maxlong = 2000


_LONG_REPR = _LongRepr()


def make_preview(value: Any, short_repr: str) -> bytes | None:
    """The preview of ``value`` as JSON bytes, or None when ``short_repr`` already shows all of it.

    Never raises: a value whose repr or table fails gets what could be made, or no preview. Raw
    bytes get none: a page of escaped bytes tells a person nothing the one-line repr does not (the
    download is there for them).
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return None
    try:
        text = _LONG_REPR.repr(value)
    except Exception as error:
        text = f"<repr failed: {type(error).__name__}>"
    table = _table(value)
    # The one-line repr is at most 80 characters: a longer text always says more.
    if table is None and len(text) <= 2 * len(short_repr) and re.sub(r"\s*\n\s*", " ", text) == short_repr:
        return None
    preview: dict[str, Any] = {"repr": text[:PREVIEW_REPR_CHARS]}
    if len(text) > PREVIEW_REPR_CHARS:
        preview["repr_truncated"] = True
    if table is not None:
        preview["table"] = table
    data = _dumps(preview)
    while len(data) > PREVIEW_MAX_BYTES and table is not None and table["rows"]:
        table["rows"] = table["rows"][: len(table["rows"]) // 2]
        table["index"] = table["index"][: len(table["rows"])]
        data = _dumps(preview)
    if len(data) > PREVIEW_MAX_BYTES:
        preview["repr"] = text[: PREVIEW_MAX_BYTES // 4]
        preview["repr_truncated"] = True
        data = _dumps(preview)
    return data


def read_preview(data: bytes) -> dict[str, Any]:
    """A stored preview back as a dict (the bytes were verified against their hash by the caller)."""
    preview = json.loads(data)
    if not isinstance(preview, dict) or not isinstance(preview.get("repr"), str):
        raise ValueError("not a preview")
    return preview


def _dumps(preview: dict[str, Any]) -> bytes:
    return json.dumps(preview, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _table(value: Any) -> dict[str, Any] | None:
    """The first rows of a pandas or polars data frame as strings; None for anything else."""
    cls = type(value)
    module = getattr(cls, "__module__", "") or ""
    if cls.__name__ != "DataFrame" or module.split(".")[0] not in ("pandas", "polars"):
        return None
    try:
        if module.startswith("pandas"):
            rows_total, columns_total = value.shape
            head = value.iloc[:TABLE_ROWS, :TABLE_COLUMNS]
            columns = [_cell(c) for c in head.columns]
            index = [_cell(i) for i in head.index]
            rows = [[_cell(v) for v in row] for row in head.itertuples(index=False, name=None)]
        else:
            rows_total, columns_total = value.shape
            head = value.head(TABLE_ROWS).select(value.columns[:TABLE_COLUMNS])
            columns = [_cell(c) for c in head.columns]
            index = [str(i) for i in range(head.height)]
            rows = [[_cell(v) for v in row] for row in head.rows()]
    except Exception:
        return None
    return {
        "columns": columns,
        "index": index,
        "rows": rows,
        "total_rows": int(rows_total),
        "total_columns": int(columns_total),
    }


def _cell(value: Any) -> str:
    try:
        text = str(value)
    except Exception:
        return "<unprintable>"
    return text if len(text) <= CELL_CHARS else text[: CELL_CHARS - 3] + "..."
