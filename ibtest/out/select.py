"""``-k EXPR``: select hypothesis members by name, as ``pytest -k`` selects tests.

An expression is words joined by ``and``, ``or``, ``not`` and parentheses; a word matches a member
whose label (``lp_norm[p=1.5]``) contains it, case-insensitively. ``-k "lp_norm and not inf"``
keeps every lp_norm member but ``p=inf``. Words may hold any character but spaces and
parentheses (``p=1.5`` is one word).
"""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

from ibtest.base.errors import UserError
from ibtest.judge.records import member_label
from ibtest.study.typed import Study

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
Match = Callable[[str], bool]


def _tokens(expr: str) -> list[str]:
    out, pos = [], 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if m is None:  # only trailing blanks are left
            break
        out.append(m.group(1))
        pos = m.end()
    return out


def _either(a: Match, b: Match) -> Match:
    return lambda label: a(label) or b(label)


def _both(a: Match, b: Match) -> Match:
    return lambda label: a(label) and b(label)


class _Parser:
    """Recursive descent over ``or`` < ``and`` < ``not`` < word / ( expr )."""

    def __init__(self, expr: str):
        self.expr, self.toks, self.i = expr, _tokens(expr), 0

    def fail(self, what: str) -> UserError:
        return UserError(f"-k {self.expr!r}: {what} (an expression is words with and, or, not, parentheses)")

    def peek(self) -> str | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> str:
        tok = self.peek()
        if tok is None:
            raise self.fail("the expression ends too early")
        self.i += 1
        return tok

    def parse(self) -> Match:
        if not self.toks:
            raise self.fail("empty expression")
        m = self.or_()
        if self.peek() is not None:
            raise self.fail(f"unexpected {self.peek()!r}")
        return m

    def or_(self) -> Match:
        return self.chain("or", self.and_, _either)

    def and_(self) -> Match:
        return self.chain("and", self.not_, _both)

    def chain(self, op: str, operand: Callable[[], Match], join: Callable[[Match, Match], Match]) -> Match:
        """``operand (op operand)*``, joined left to right."""
        left = operand()
        while self.peek() == op:
            self.take()
            left = join(left, operand())
        return left

    def not_(self) -> Match:
        if self.peek() == "not":
            self.take()
            inner = self.not_()
            return lambda s: not inner(s)
        tok = self.take()
        if tok == "(":
            inner = self.or_()
            if self.take() != ")":
                raise self.fail("a '(' is not closed")
            return inner
        if tok in (")", "and", "or"):
            raise self.fail(f"unexpected {tok!r}")
        word = tok.lower()
        return lambda s: word in s.lower()


def matcher(expr: str) -> Match:
    """A predicate over member labels for ``expr`` (UserError, exit 2, on a malformed one)."""
    return _Parser(expr).parse()


def select_members(study: Study, expr: str | None) -> Study:
    """``study`` with only the hypothesis members whose label ``expr`` selects (an entry left with
    no member is dropped); ``None`` selects everything. Selecting nothing is an error that lists
    the members there are."""
    if expr is None:
        return study
    keep = matcher(expr)
    uses = []
    for use in study.hypotheses:
        members = [p for p in use.members if keep(member_label(use.name, p))]
        if members:
            uses.append(dataclasses.replace(use, members=members))
    if not uses:
        every = [member_label(u.name, p) for u in study.hypotheses for p in u.members]
        raise UserError(f"-k {expr!r} selects no hypothesis member (members: {', '.join(every)})")
    return dataclasses.replace(study, hypotheses=uses)
