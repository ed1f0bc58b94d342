"""Text inputs (JSONL and TSV): numbered, decoded lines, JSON objects, and the checks of their
fields (ids, texts, grades, unique ids), each error naming the file and the line."""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterable, Iterator

from synrank import storage
from synrank.data.errors import DataError
from synrank.data.readers.paths import _JSONL_SUFFIXES, _suffix

Progress = Callable[[int], None]

_INT_RE = re.compile(r"[+-]?\d+\Z")
_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UTF8_BOM = b"\xef\xbb\xbf"


def _iter_lines(path: str, progress: Progress | None = None) -> Iterator[tuple[int, str]]:
    """(1-based line number, decoded line without its line ending); strict UTF-8 per line."""
    with storage.open(path, "rb", compression="infer") as handle:
        yield from _decode_lines(path, enumerate(handle, 1), progress)


def _decode_lines(path: str, numbered: Iterable[tuple[int, bytes]], progress: Progress | None = None,
                  file_start: bool = True) -> Iterator[tuple[int, str]]:
    """Raw numbered lines decoded as `_iter_lines` does; a BOM is dropped only at the `file_start`."""
    for lineno, raw in numbered:
        if progress is not None:
            progress(len(raw))
        if file_start and lineno == 1 and raw.startswith(_UTF8_BOM):
            raw = raw[len(_UTF8_BOM) :]
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DataError(
                path,
                f"not valid UTF-8: byte 0x{raw[exc.start]:02x} at byte {exc.start + 1} of the line "
                "(re-encode the file as UTF-8)",
                line=lineno,
            ) from None
        yield lineno, line.rstrip("\r\n")


def _iter_json_objects(path: str, progress: Progress | None = None) -> Iterator[tuple[int, dict]]:
    return _parse_json_lines(path, _iter_lines(path, progress))


def _parse_json_lines(path: str, lines: Iterable[tuple[int, str]]) -> Iterator[tuple[int, dict]]:
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataError(path, f"malformed JSON: {exc.msg} (column {exc.colno})", line=lineno) from None
        if not isinstance(obj, dict):
            raise DataError(path, f"expected a JSON object, got {_json_type(obj)}", line=lineno)
        yield lineno, obj


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    return {bool: "boolean", int: "number", float: "number", str: "string", list: "array", dict: "object"}.get(
        type(value), type(value).__name__
    )


def _get_id(obj: dict, names: tuple[str, ...], path: str, lineno: int) -> str:
    for name in names:
        if name in obj:
            value = obj[name]
            break
    else:
        raise DataError(path, f"missing required field {' or '.join(map(repr, names))}", line=lineno)
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise DataError(path, f"field {name!r} must be a string, got {_json_type(value)}", line=lineno)
    value = str(value)
    if not value.strip():
        raise DataError(path, f"empty id in field {name!r}", line=lineno)
    return value


def _get_text(obj: dict, names: tuple[str, ...], path: str, lineno: int, required: bool = True) -> str:
    for name in names:
        if name in obj:
            value = obj[name]
            break
    else:
        if not required:
            return ""
        raise DataError(path, f"missing required field {' or '.join(map(repr, names))}", line=lineno)
    if value is None and not required:
        return ""
    if not isinstance(value, str):
        raise DataError(path, f"field {name!r} must be a string, got {_json_type(value)}", line=lineno)
    return value


def _is_int(text: str) -> bool:
    return bool(_INT_RE.match(text))


def _grade(text: str, path: str, lineno: int) -> int:
    if not _is_int(text.strip()):
        raise DataError(path, f"grade {text!r} is not an integer", line=lineno)
    value = int(text)
    if not _INT32_MIN <= value <= _INT32_MAX:
        raise DataError(path, f"grade {text!r} does not fit in int32", line=lineno)
    return value


class _Unique:
    """Remembers ids and where they were first seen; raises on the second sighting."""

    def __init__(self, path: str, label: str, enabled: bool = True):
        self.path, self.label, self.enabled = path, label, enabled
        self.seen: dict[str, int] = {}

    def add(self, key: str, lineno: int) -> None:
        if not self.enabled:
            return
        first = self.seen.setdefault(key, lineno)
        if first != lineno:
            raise DataError(self.path, f"duplicate {self.label} {key!r} (first on line {first})", line=lineno)


def _sniff_text_format(path: str, kind: str) -> str:
    """'jsonl', 'sgml' or 'tsv', from the suffix and, for .txt/.tsv/unknown, the first character."""
    suffix = _suffix(path)
    if suffix in _JSONL_SUFFIXES:
        return "jsonl"
    with storage.open(path, "rb", compression="infer") as handle:
        head = handle.read(4096)
    head = head[len(_UTF8_BOM):] if head.startswith(_UTF8_BOM) else head
    first = head.lstrip()[:1]
    if first == b"{":
        return "jsonl"
    if first == b"<" and kind == "queries":
        return "sgml"
    return "tsv"
