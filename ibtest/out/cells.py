"""Table cells for people: markdown-safe text, and column widths that fit a terminal.

:func:`md_cell` makes any text one GitHub-flavoured markdown table cell that renders back to the
same text (a ``|`` in ``|ΔR|=0.02`` no longer splits the cell). :func:`fit_widths` picks the
widest each column of a plain-text table may be so that the table fits a width; tabulate wraps
the cells at those widths (full values stay in the JSON results and in ``--wide``).
"""
from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import tabulate as _tabulate

DEFAULT_WIDTH = 100  # columns a table fits by default (``--wide``: no limit)
GAP = 2  # spaces between the columns of tabulate's "simple" format

# ASCII punctuation that markdown reads as syntax inside a table cell; backslash-escaped, each
# renders as itself (CommonMark: any ASCII punctuation may be escaped)
_MD_SPECIAL = re.compile(r"([\\|*_`\[\]<~&])")


def md_cell(value: Any) -> str:
    """``value`` as the text of one GFM table cell: markdown syntax escaped, line breaks as
    ``<br>`` (a raw newline would end the row)."""
    text = "" if value is None else str(value)
    lines = [_MD_SPECIAL.sub(r"\\\1", line) for line in text.splitlines() or [""]]
    return "<br>".join(lines)


def md_text(value: Any) -> str:
    """Free text (a paragraph, a list item) with markdown syntax escaped, line breaks kept."""
    return "\n".join(_MD_SPECIAL.sub(r"\\\1", line) for line in str(value).splitlines())


def _longest_word(text: str) -> int:
    return max((len(w) for w in text.split()), default=0)


def fit_widths(rows: Sequence[dict[str, Any]], width: int = DEFAULT_WIDTH) -> list[int | None]:
    """Per column (in the rows' key order), the most characters a line of it may hold so that the
    table is at most ``width`` wide (headers unpadded: :func:`fitted_table`); ``None`` for a
    column left as it is. The widest column is
    narrowed first, never below its longest word (nor its header's) while another column can
    still give; only a table whose words alone are wider than ``width`` has words broken."""
    keys = list(rows[0]) if rows else []
    natural = [max([len(str(k))] + [max((len(x) for x in str(r.get(k, "")).splitlines()), default=0)
                                     for r in rows]) for k in keys]
    floor = [max([_longest_word(str(k)), 4] + [_longest_word(str(r.get(k, ""))) for r in rows]) for k in keys]
    cur = list(natural)
    budget = width - GAP * (len(keys) - 1)
    for floors in (floor, [4] * len(keys)):  # first keep words whole, then break them if need be
        while sum(cur) > budget:
            room = [i for i in range(len(keys)) if cur[i] > floors[i]]
            if not room:
                break
            i = max(room, key=lambda j: cur[j])
            cur[i] -= 1
        if sum(cur) <= budget:
            break
    return [c if c < n else None for c, n in zip(cur, natural)]


def fitted_table(rows: Sequence[dict[str, Any]], width: int = DEFAULT_WIDTH) -> str:
    """``rows`` as tabulate's "simple" table at most ``width`` columns wide, long cells wrapped at
    the widths of :func:`fit_widths`. Headers get no extra padding (tabulate's ``MIN_PADDING``,
    set back after), so a column is as wide as its widest line, header or cell."""
    widths = fit_widths(rows, width)
    saved = _tabulate.MIN_PADDING
    _tabulate.MIN_PADDING = 0
    try:
        return _tabulate.tabulate(list(rows), headers="keys", tablefmt="simple", disable_numparse=True,
                                  maxcolwidths=widths, maxheadercolwidths=[w or 10**6 for w in widths])
    finally:
        _tabulate.MIN_PADDING = saved
