"""Printing strings that came from a file: no terminal control sequence gets through.

A certificate, a results store or a report is data from someone else's hands. Any string in it
(a claim, a label, a hypothesis name, an error text) could hold an ANSI escape sequence
(``ESC [ 8 m`` hides what follows, ``ESC [ 2 K`` erases a line), a carriage return that
overwrites what was printed, or a newline that forges a line of its own ("refutation
CONFIRMED"). :func:`clean` makes such a string inert: every C0 control character (U+0000 to
U+001F, newline and tab included), DEL (U+007F), every C1 control (U+0080 to U+009F) and the
Unicode bidirectional overrides (U+202A to U+202E, U+2066 to U+2069) is replaced by a visible
escape (``\\x1b``, ``\\n``, ``\\u202e``), so one field prints as exactly one line and a reader
can see that something was there. :func:`clean_tree` applies it to every string (keys included)
of a JSON-like tree.
"""
from __future__ import annotations

import re
from typing import Any

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")
_CONTROL_KEEP_NL = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match) -> str:
    ch = m.group(0)
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean(text: Any, *, keep_newlines: bool = False) -> str:
    """``text`` (made a str) with every control character shown as a visible escape.

    ``keep_newlines=True`` keeps ``\\n`` as a line break: only for text the tool itself laid out
    in lines (a multi-line error message) whose file-borne parts were cleaned already or are
    harmless there.
    """
    s = text if isinstance(text, str) else str(text)
    return (_CONTROL_KEEP_NL if keep_newlines else _CONTROL).sub(_escape, s)


def clean_tree(obj: Any, multiline: frozenset[str] | set[str] = frozenset()) -> Any:
    """A copy of a JSON-like tree (dicts, lists, scalars) with every string :func:`clean`-ed.

    Strings stored under a key in ``multiline`` (free-text paragraphs such as a study's
    ``description``) keep their line breaks; every other control character is still escaped.
    """
    if isinstance(obj, str):
        return clean(obj)
    if isinstance(obj, dict):
        return {clean(k) if isinstance(k, str) else k:
                clean(v, keep_newlines=True) if k in multiline and isinstance(v, str) else clean_tree(v, multiline)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean_tree(v, multiline) for v in obj]
    return obj


# ------------------------------------------------------------------------------------------
# a terminal that cannot show Unicode (PYTHONIOENCODING=ascii, LANG=C on an old system)
# ------------------------------------------------------------------------------------------
#: ASCII spellings of the symbols ibtest prints (tables, verdicts, figures' captions)
ASCII_SPELLING = {
    "θ": "theta", "Θ": "Theta", "✓": "ok", "✗": "NO", "→": "->", "←": "<-", "⇒": "=>", "≤": "<=", "≥": ">=",
    "≠": "!=", "≈": "~", "∞": "inf", "‖": "|", "·": "*", "×": "x", "−": "-", "–": "-", "—": "--", "…": "...",
    "∇": "grad ", "∈": " in ", "Δ": "Delta", "δ": "delta", "γ": "gamma", "α": "alpha", "β": "beta",
    "ε": "eps", "λ": "lambda", "σ": "sigma", "η": "eta", "μ": "mu", "π": "pi", "ρ": "rho", "τ": "tau",
    "φ": "phi", "ψ": "psi", "ω": "omega", "²": "^2", "³": "^3", "₀": "0", "₁": "1", "₂": "2", "ᵀ": "^T",
    "√": "sqrt", "∑": "sum", "Σ": "Sum", "∘": "o", "⊗": "(x)", "∪": "U", "∩": "&", "‘": "'", "’": "'",
    "“": '"', "”": '"', "•": "*", "°": "deg", "±": "+/-",
}
ASCII_ERRORS = "ibtest-ascii"


def _ascii_fallback(exc: UnicodeError) -> tuple[str, int]:
    """Codec error handler: the ASCII spelling of a symbol (θ -> theta, ✓ -> ok), an accented
    letter without its accent (é -> e), anything else as a visible escape (\\u2603)."""
    import unicodedata

    if not isinstance(exc, UnicodeEncodeError):
        raise exc
    out = []
    for ch in exc.object[exc.start : exc.end]:
        if ch in ASCII_SPELLING:
            out.append(ASCII_SPELLING[ch])
            continue
        plain = unicodedata.normalize("NFKD", ch).encode("ascii", "ignore").decode("ascii")
        out.append(plain if plain else (f"\\u{ord(ch):04x}" if ord(ch) < 0x10000 else f"\\U{ord(ch):08x}"))
    return "".join(out), exc.end


def _register() -> None:
    import codecs

    try:
        codecs.lookup_error(ASCII_ERRORS)
    except LookupError:
        codecs.register_error(ASCII_ERRORS, _ascii_fallback)


_register()


def fit_stream(stream: Any) -> None:
    """Let ``stream`` (stdout, stderr) print every symbol ibtest uses: when its encoding cannot
    hold them (``PYTHONIOENCODING=ascii``), unencodable characters get their ASCII spelling
    instead of ending the command with a UnicodeEncodeError."""
    encoding = getattr(stream, "encoding", None) or "ascii"
    try:
        "θ✓✗→≤‖·−".encode(encoding)
        return
    except (UnicodeEncodeError, LookupError):
        pass
    reconfigure = getattr(stream, "reconfigure", None)
    if reconfigure is not None:
        try:
            reconfigure(errors=ASCII_ERRORS)
        except (ValueError, OSError, TypeError):  # a stream that cannot change (already closed)
            pass
