"""Table cells for people: markdown-safe text, and column widths that fit a terminal.

:func:`md_cell` makes any text one GitHub-flavoured markdown table cell that renders back to the
same text (a ``|`` in ``|ΔR|=0.02`` no longer splits the cell). :func:`fit_widths` picks the
widest each column of a plain-text table may be so that the table fits a width; tabulate wraps
the cells at those widths (full values stay in the JSON results and in ``--wide``).
"""
from __future__ import annotations

import re
import textwrap
from collections.abc import Sequence
from typing import Any

import tabulate as _tabulate

DEFAULT_WIDTH = 100  # columns a table fits by default (``--wide``: no limit)
GAP = 2  # spaces between the columns of tabulate's "simple" format

# ASCII punctuation that markdown reads as syntax inside a table cell; backslash-escaped, each
# renders as itself (CommonMark: any ASCII punctuation may be escaped)
# (an underscore between two letters or digits, as in my_reg_p=1, never marks emphasis: left as is)
_MD_SPECIAL = re.compile(r"([\\|*`\[\]<~&]|(?<![A-Za-z0-9])_|_(?![A-Za-z0-9]))")


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


def _wrapped_lines(cells: Sequence[str], width: int) -> int:
    """Lines the cells of a column take wrapped at ``width`` (as tabulate wraps them)."""
    return sum(max(1, len(textwrap.wrap(c, width, break_long_words=True))) if c else 1 for c in cells)


def fit_widths(rows: Sequence[dict[str, Any]], width: int = DEFAULT_WIDTH) -> list[int | None]:
    """Per column (in the rows' key order), the most characters a line of it may hold so that the
    table is at most ``width`` wide (headers unpadded: :func:`fitted_table`); ``None`` for a
    column left as it is. Each step narrows by one character the column where that adds the
    fewest wrapped lines (the widest among equals), never below its longest word (nor its
    header's) while another column can still give; only a table whose words alone are wider than
    ``width`` has words broken."""
    keys = list(rows[0]) if rows else []
    cells = [[str(k)] + [str(r.get(k, "")) for r in rows] for k in keys]
    natural = [max(max((len(x) for x in c.splitlines()), default=0) for c in col) for col in cells]
    floor = [max([4] + [_longest_word(c) for c in col]) for col in cells]
    cur = list(natural)
    budget = width - GAP * (len(keys) - 1)
    lines: dict[tuple[int, int], int] = {}

    def cost(i: int, w: int) -> int:
        if (i, w) not in lines:
            lines[(i, w)] = _wrapped_lines(cells[i], w)
        return lines[(i, w)]

    for floors in (floor, [4] * len(keys)):  # first keep words whole, then break them if need be
        while sum(cur) > budget:
            room = [i for i in range(len(keys)) if cur[i] > floors[i]]
            if not room:
                break
            i = min(room, key=lambda j: (cost(j, cur[j] - 1) - cost(j, cur[j]), -cur[j]))
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
