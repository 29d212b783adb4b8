"""Tunable constants in Python source: discovery with ``ast`` and byte-exact rewriting.

A tunable constant is a module-level assignment to an UPPER_CASE name whose value is an
int, float, bool or str literal, or a simple arithmetic expression of number literals
(``2**19``, ``40 * 524288``, ``-3e-4``)::

    LR = 0.04            # found (float)
    DEPTH: int = 8       # found (int; the annotation is kept)
    BATCH = 2**19        # found (int, written back as 2**k while it stays a power of two)
    WINDOW = "SSSL"      # found (str; tuned only when choices are given)
    A, B = 1, 2          # not found: tuple targets
    SHAPE = (8, 8)       # not found: tuple values
    NAME = f"run{LR}"    # not found: f-strings
    N = DEPTH * 2        # not found: refers to a name

Assignments inside functions, classes, ``if`` blocks and loops are not module-level
and are never found; a name assigned more than once at module level (including ``+=``)
is ambiguous and skipped. A rewrite replaces only the characters of the value
expression, so comments, annotations and formatting survive byte for byte.
"""

from __future__ import annotations

import ast
import math
import operator
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

Value = int | float | bool | str

_NAME = re.compile(r"^_?[A-Z][A-Z0-9_]*$")
_POW2_SOURCE = re.compile(r"^2(\s*\*\*\s*)\d+$")
_BINOPS: dict[type[ast.operator], Callable[[float, float], float]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}


@dataclass(frozen=True)
class Constant:
    """One tunable constant: where its value expression sits in the file, and its value."""

    path: str
    name: str
    value: Value
    source: str  # the value expression exactly as written, e.g. "2**19"
    start: int  # character offsets of ``source`` in the file's text
    end: int
    line: int  # 1-based line of the assignment

    @property
    def kind(self) -> str:
        """``bool``, ``int``, ``float`` or ``str`` (bool first: True is an int in Python)."""
        return type(self.value).__name__


def discover(path: str, text: str) -> list[Constant]:
    """The tunable constants of one Python file, in file order; [] when it does not parse."""
    try:
        tree = ast.parse(text)
    except (SyntaxError, ValueError):
        return []
    counts = _assignment_counts(tree.body)
    offsets = _LineOffsets(text)
    found = []
    for node in tree.body:
        target, value_node = _simple_assignment(node)
        if target is None or value_node is None or counts.get(target, 0) != 1:
            continue
        value = literal_value(value_node)
        if value is None:
            continue
        start, end = offsets.span(value_node)
        found.append(Constant(path, target, value, text[start:end], start, end, node.lineno))
    return found


def literal_value(node: ast.expr) -> Value | None:
    """The value of a literal or a number-only arithmetic expression; None for anything else."""
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool | str):
            return value
        if isinstance(value, int | float) and math.isfinite(value):
            return value
        return None
    number = _number(node)
    if number is None or isinstance(number, bool) or not math.isfinite(number):
        return None
    return number


def _number(node: ast.expr) -> int | float | None:
    if isinstance(node, ast.Constant):
        value = node.value
        return value if isinstance(value, int | float) and not isinstance(value, bool) else None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub | ast.UAdd):
        inner = _number(node.operand)
        if inner is None:
            return None
        return -inner if isinstance(node.op, ast.USub) else inner
    if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        left, right = _number(node.left), _number(node.right)
        if left is None or right is None:
            return None
        if isinstance(node.op, ast.Pow) and abs(right) > 64:
            return None  # keep evaluation cheap: no 10**100000
        try:
            result = _BINOPS[type(node.op)](left, right)
        except (ArithmeticError, ValueError):
            return None
        return result if isinstance(result, int | float) else None
    return None


def _simple_assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    """``NAME = value`` or ``NAME: T = value`` with an UPPER_CASE name, else (None, None)."""
    if isinstance(node, ast.Assign) and len(node.targets) == 1:
        target = node.targets[0]
        if isinstance(target, ast.Name) and _NAME.match(target.id):
            return target.id, node.value
    if (
        isinstance(node, ast.AnnAssign)
        and node.value is not None
        and isinstance(node.target, ast.Name)
        and _NAME.match(node.target.id)
    ):
        return node.target.id, node.value
    return None, None


def _assignment_counts(body: Iterable[ast.stmt]) -> dict[str, int]:
    """How often each name is bound at module level, ``if``/``try``/``with``/loop bodies included."""
    counts: dict[str, int] = {}
    for node in body:
        for name in _bound_names(node):
            counts[name] = counts.get(name, 0) + 1
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue  # their own scopes
        for field_name in ("body", "orelse", "finalbody", "handlers"):
            inner = getattr(node, field_name, None)
            if isinstance(inner, list):
                stmts = [
                    s for h in inner for s in (h.body if isinstance(h, ast.ExceptHandler) else [h])
                ]
                for name, count in _assignment_counts(stmts).items():
                    counts[name] = counts.get(name, 0) + count
    return counts


def _bound_names(node: ast.stmt) -> list[str]:
    targets: list[ast.expr] = []
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, ast.AnnAssign | ast.AugAssign | ast.For | ast.AsyncFor):
        targets = [node.target]
    names = [n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)]
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        names.append(node.name)
    if isinstance(node, ast.Import | ast.ImportFrom):
        names.extend((a.asname or a.name).split(".")[0] for a in node.names)
    return names


class _LineOffsets:
    """Turns ast positions (line, UTF-8 byte column) into character offsets of the text."""

    def __init__(self, text: str) -> None:
        # Only "\n" ends a line for the parser ("\r\n" included); str.splitlines would also
        # split at form feeds and other separators that Python source may hold.
        self.lines = text.split("\n")
        self.lines = [line + "\n" for line in self.lines[:-1]] + [self.lines[-1]]
        self.starts = [0]
        for line in self.lines:
            self.starts.append(self.starts[-1] + len(line))

    def offset(self, lineno: int, byte_col: int) -> int:
        line = self.lines[lineno - 1] if lineno - 1 < len(self.lines) else ""
        column = len(line.encode("utf-8")[:byte_col].decode("utf-8", errors="ignore"))
        return self.starts[lineno - 1] + column

    def span(self, node: ast.expr) -> tuple[int, int]:
        end_line = node.end_lineno if node.end_lineno is not None else node.lineno
        end_col = node.end_col_offset if node.end_col_offset is not None else node.col_offset
        return self.offset(node.lineno, node.col_offset), self.offset(end_line, end_col)


# --- writing values back ---------------------------------------------------------------------


def render(value: Value, like: Constant) -> str:
    """Python source for ``value``, in the style of ``like``'s current source."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return _render_int(value, like.source)
    if isinstance(value, float):
        return format_float(value)
    quote = '"' if like.source.lstrip("rRuU").startswith('"') else "'"
    escaped = value.replace("\\", "\\\\").replace(quote, "\\" + quote).replace("\n", "\\n")
    return f"{quote}{escaped}{quote}"


def _render_int(value: int, source: str) -> str:
    match = _POW2_SOURCE.match(source.strip())
    if match and value > 0 and value & (value - 1) == 0:
        return f"2{match.group(1)}{value.bit_length() - 1}"
    if "_" in source and abs(value) >= 1000:
        return f"{value:_}"
    return str(value)


def format_float(value: float) -> str:
    """The shortest float literal: ``0.04``, ``3e-4``, ``1200.0``."""
    text = repr(float(value))
    if "e" in text:
        mantissa, exponent = text.split("e")
        text = f"{mantissa.removesuffix('.0')}e{int(exponent)}"
    return text


def round_float(value: float, digits: int = 3) -> float:
    """``value`` rounded to ``digits`` significant digits (0 stays 0)."""
    if value == 0 or not math.isfinite(value):
        return value
    return round(value, digits - 1 - math.floor(math.log10(abs(value))))


def rewrite(text: str, changes: Mapping[Constant, Value]) -> str:
    """``text`` with each constant's value expression replaced; nothing else moves."""
    out, position = [], 0
    for const in sorted(changes, key=lambda c: c.start):
        out.append(text[position : const.start])
        out.append(render(changes[const], const))
        position = const.end
    out.append(text[position:])
    return "".join(out)


def statement_lines(text: str, const: Constant) -> tuple[int, int]:
    """Character offsets of the full lines holding ``const``'s value (for a search block)."""
    start = text.rfind("\n", 0, const.start) + 1
    end = text.find("\n", const.end)
    return start, (len(text) if end < 0 else end + 1)


__all__ = [
    "Constant",
    "Value",
    "discover",
    "format_float",
    "literal_value",
    "render",
    "rewrite",
    "round_float",
    "statement_lines",
]
