"""Shared progress bar and summary table helpers (tqdm bar, rich table).

Example:
    >>> for x in track(range(100), total=100, desc="align"):   # doctest: +SKIP
    ...     pass
    >>> with progress_bar(total=1000, desc="files") as bar:      # doctest: +SKIP
    ...     bar.update(64)
    >>> print_summary("align", {"files": 10, "faces": 9, "img/s": 12.3})  # doctest: +SKIP
"""
from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping, TypeVar

__all__ = ["track", "progress_bar", "make_bar", "print_summary", "print_hints", "format_value"]

T = TypeVar("T")

_BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}, {rate_fmt}{postfix}]"


def make_bar(total: int | None, desc: str = "", unit: str = "img", disable: bool | None = None, initial: int = 0):
    """A tqdm bar (count, rate, ETA on stderr) that the caller closes; prefer :func:`progress_bar`.

    Args:
        total: expected count (``None``: unknown, no ETA).
        desc: label.
        unit: unit for the rate.
        disable: ``True`` hides the bar; ``None`` lets tqdm decide.
        initial: count already done (a resumed run): the bar starts there, the rate from zero.
    """
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr,
               bar_format=_BAR_FORMAT if total else None, disable=disable, smoothing=0.1)
    if initial:
        bar.initial = bar.n = bar.last_print_n = initial
        bar.refresh()
    return bar


def track(iterable: Iterable[T], total: int | None = None, desc: str = "", unit: str = "img",
          disable: bool | None = None) -> Iterator[T]:
    """Iterate with a progress bar showing count, rate and ETA (on stderr).

    Args:
        iterable: items.
        total: number of items (``len(iterable)`` when omitted and available).
        desc: label.
        unit: unit for the rate (``img/s``).
        disable: ``True`` hides the bar; ``None`` (default) lets tqdm decide.
    """
    if total is None:
        try:
            total = len(iterable)  # type: ignore[arg-type]
        except TypeError:
            total = None
    with progress_bar(total, desc, unit, disable) as bar:
        for x in iterable:
            yield x
            bar.update(1)


@contextmanager
def progress_bar(total: int | None, desc: str = "", unit: str = "img", disable: bool | None = None,
                 initial: int = 0):
    """Context manager yielding a bar with ``.update(n)`` and ``.set_postfix(**kv)`` (see
    :func:`make_bar` for the arguments)."""
    bar = make_bar(total, desc, unit, disable, initial)
    try:
        yield bar
    finally:
        bar.close()


def format_value(v) -> str:
    """Human formatting for summary cells (thousands separators, 2-3 significant decimals)."""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        return f"{v:,.2f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def print_summary(title: str, rows: Mapping[str, object], file=None) -> None:
    """Print a two-column summary table (rich) to ``file`` (stderr by default).

    Nested mappings (e.g. ``{"errors": {"decode_error": 2}}``) are flattened as indented rows.
    Cells are plain text: no rich markup or emoji codes are read in them (a rule written
    ``lfw:one:accuracy`` or a file named ``[x].jpg`` prints as written).
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from maskkit.util.names import safe_text

    def cell(x: str) -> Text:
        return Text(safe_text(x))  # a name that is not UTF-8 prints as its display form

    table = Table(title=cell(str(title)), show_header=True, header_style="bold")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for k, v in rows.items():
        if isinstance(v, Mapping):
            table.add_row(cell(str(k)), cell(format_value(sum(x for x in v.values() if isinstance(x, (int, float))))
                                             if v else "0"))
            for k2, v2 in v.items():
                table.add_row(cell(f"  {k2}"), cell(format_value(v2)))
        else:
            table.add_row(cell(str(k)), cell(format_value(v)))
    Console(file=file or sys.stderr, soft_wrap=True, emoji=False).print(table)


def print_hints(hints: Iterable[str], file=None) -> None:
    """Print each hint as one ``hint: ...`` line to ``file`` (stderr by default), after a summary
    table (e.g. the forgotten ``--aligned``, :mod:`maskkit.pipeline.hints`)."""
    from maskkit.util.names import safe_text

    for h in hints:
        print(f"hint: {safe_text(str(h))}", file=file or sys.stderr)
