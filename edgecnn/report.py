"""Tables for people and files for machines: text, JSON, CSV and Markdown from one row list.

Every report (validation, benchmark, inspection) is a list of flat dict rows plus metadata, so
one set of writers serves them all; outputs are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgecnn.files.outputs import write_text_atomic

Row = dict[str, Any]


def fill_section(text: str, start: str, end: str, body: str) -> str:
    """``text`` with what lies between the markers ``start`` and ``end`` replaced by ``body``
    (the markers and the prose around them kept); appended at the end where there are none.
    The measuring scripts refresh their tables in docs/ this way."""
    head, _, rest = text.partition(start)
    tail = rest.partition(end)[2] if rest else "\n"
    return f"{head}{start}\n{body.rstrip(chr(10))}\n{end}{tail}"


def format_value(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return format_number(value)
    if isinstance(value, (list, tuple)):
        return "x".join(map(str, value)) if all(isinstance(v, int) for v in value) else ", ".join(
            map(str, value))
    return str(value)


def format_number(value: float) -> str:
    """One format for every float in a table: four significant digits, thousands separated,
    scientific only below 0.001 (logit differences); ``12,345``, ``123.5``, ``4.957``, ``0.03``."""
    if value == 0:
        return "0"
    if not math.isfinite(value):
        return str(value)
    magnitude = abs(value)
    if magnitude < 1e-3:
        return f"{value:.2e}"
    decimals = max(0, 3 - math.floor(math.log10(magnitude)))
    text = f"{value:,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def text_table(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    """A plain aligned table; numbers right-aligned."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())
    cells = [[format_value(row.get(c)) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows)
               for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w)
                         for v, w, num in zip(values, widths, numeric, strict=False)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule, *(line(r) for r in cells)])


def markdown_table(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    if not rows:
        return ""
    columns = list(columns or rows[0].keys())

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    out = ["| " + " | ".join(cell(c) for c in columns) + " |",
           "|" + "|".join("---" for _ in columns) + "|"]
    out += ["| " + " | ".join(cell(format_value(r.get(c))) for c in columns) + " |" for r in rows]
    return "\n".join(out)


def csv_text(rows: Sequence[Row], columns: Sequence[str] | None = None) -> str:
    buffer = io.StringIO()
    columns = list(columns or (rows[0].keys() if rows else []))
    writer = csv.DictWriter(buffer, fieldnames=columns, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({c: _csv_cell(row.get(c)) for c in columns})
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return value


def _jsonable(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if hasattr(value, "item"):  # numpy scalars
        return value.item()
    return value


def write_reports(payload: dict[str, Any], rows: Sequence[Row], columns: Sequence[str], *,
                  json_path: Path | None = None, csv_path: Path | None = None,
                  markdown_path: Path | None = None, title: str = "") -> None:
    """Write the report as JSON (the whole payload), CSV and Markdown (the rows)."""
    if json_path:
        write_text_atomic(json_path, json.dumps(_jsonable(payload), indent=2) + "\n")
    if csv_path:
        write_text_atomic(csv_path, csv_text(rows, columns))
    if markdown_path:
        heading = f"# {title}\n\n" if title else ""
        write_text_atomic(markdown_path, heading + markdown_table(rows, columns) + "\n")
