"""A small template renderer: ``{{ name }}`` substitution with filters.

    {{ title|upper }}            a value, upper-cased
    {{ author.name }}            a nested value (mappings, by key)
    {{ body|justify:60|indent:2 }}  filters apply left to right
    {{ tags|join:", " }}         a quoted argument keeps its spaces
    {{ subtitle|default:none }}  a missing key is an error unless the first filter is default

Filters: upper, lower, title, strip, wrap:N, justify:N, indent:N, truncate:N, join:SEP,
count (words), top:N (the N most frequent words), default:TEXT.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from minitext.layout import fill
from minitext.tokens import tokenize, top_words

TEMPLATE_CACHE_SIZE = 0  # compiled templates remembered by source text (0: compile every time)

_compiled: dict[str, Template] = {}  # source -> compiled template, oldest first


class TemplateError(ValueError):
    """A template that does not parse, or a value it needs that the context lacks."""


def _indent(value: Any, n: int) -> str:
    pad = " " * n
    return "\n".join(pad + line if line else line for line in str(value).split("\n"))


def _truncate(value: Any, n: int) -> str:
    text = str(value)
    return text if len(text) <= n else text[: n - 1] + "\u2026"


def _top(value: Any, n: int) -> str:
    return ", ".join(f"{word} ({count})" for word, count in top_words(str(value), n))


# name -> (function, kind of argument: "" none, "int" or "str")
FILTERS: dict[str, tuple[Callable[..., Any], str]] = {
    "upper": (lambda v: str(v).upper(), ""),
    "lower": (lambda v: str(v).lower(), ""),
    "title": (lambda v: str(v).title(), ""),
    "strip": (lambda v: str(v).strip(), ""),
    "wrap": (lambda v, n: fill(str(v), n), "int"),
    "justify": (lambda v, n: fill(str(v), n, justify=True), "int"),
    "indent": (_indent, "int"),
    "truncate": (_truncate, "int"),
    "join": (lambda v, sep: sep.join(str(x) for x in v), "str"),
    "count": (lambda v: len(tokenize(str(v))), ""),
    "top": (_top, "int"),
    "default": (lambda v, text: v, "str"),
}


class _Tag:
    """One ``{{ ... }}``: the dotted name and the filters with their arguments."""

    def __init__(self, name: str, filters: list[tuple[str, Any]], line: int) -> None:
        self.name, self.path, self.filters, self.line = name, name.split("."), filters, line

    def value(self, context: Mapping[str, Any]) -> str:
        value: Any = context
        try:
            for key in self.path:
                value = value[key]
        except (KeyError, TypeError, IndexError):
            if not self.filters or self.filters[0][0] != "default":
                raise TemplateError(f"line {self.line}: missing key {self.name!r}") from None
            value = self.filters[0][1]
        for name, arg in self.filters:
            function = FILTERS[name][0]
            value = function(value) if FILTERS[name][1] == "" else function(value, arg)
        return str(value)


def _split_pipes(text: str, line: int) -> list[str]:
    """``text`` split on ``|`` outside double quotes."""
    parts, current, quoted = [], "", False
    for ch in text:
        if ch == '"':
            quoted = not quoted
        if ch == "|" and not quoted:
            parts.append(current)
            current = ""
        else:
            current += ch
    if quoted:
        raise TemplateError(f"line {line}: unclosed quote in {{{{ {text} }}}}")
    parts.append(current)
    return parts


def _parse_filter(text: str, line: int) -> tuple[str, Any]:
    name, colon, arg = text.strip().partition(":")
    name, arg = name.strip(), arg.strip()
    if name not in FILTERS:
        raise TemplateError(f"line {line}: unknown filter {name!r}")
    kind = FILTERS[name][1]
    if not kind:
        if colon:
            raise TemplateError(f"line {line}: filter {name!r} takes no argument")
        return name, None
    if not colon:
        raise TemplateError(f"line {line}: filter {name!r} needs an argument ({name}:...)")
    if len(arg) >= 2 and arg[0] == arg[-1] == '"':
        arg = arg[1:-1]
    if kind == "str":
        return name, arg
    if not arg.isdigit() or int(arg) < 1:
        raise TemplateError(f"line {line}: filter {name!r} needs a whole number >= 1, got {arg!r}")
    return name, int(arg)


def _parse_tag(body: str, line: int) -> _Tag:
    name, *filters = _split_pipes(body, line)
    name = name.strip()
    if not name or any(not part.isidentifier() for part in name.split(".")):
        raise TemplateError(f"line {line}: bad name {name!r} in {{{{{body}}}}}")
    return _Tag(name, [_parse_filter(f, line) for f in filters], line)


class Template:
    """A parsed template; ``render`` fills it from a mapping."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.parts: list[str | _Tag] = []
        pos = 0
        while True:
            start = source.find("{{", pos)
            if start < 0:
                break
            end = source.find("}}", start + 2)
            line = source.count("\n", 0, start) + 1
            if end < 0:
                raise TemplateError(f"line {line}: unclosed {{{{ (no matching }}}})")
            if start > pos:
                self.parts.append(source[pos:start])
            self.parts.append(_parse_tag(source[start + 2 : end], line))
            pos = end + 2
        if pos < len(source):
            self.parts.append(source[pos:])

    def render(self, context: Mapping[str, Any]) -> str:
        out = ""
        for part in self.parts:
            out += part if isinstance(part, str) else part.value(context)
        return out


def compile_template(source: str) -> Template:
    """The parsed template for ``source`` (remembered while TEMPLATE_CACHE_SIZE allows)."""
    if TEMPLATE_CACHE_SIZE <= 0:
        return Template(source)
    template = _compiled.get(source)
    if template is None:
        template = Template(source)
        while len(_compiled) >= TEMPLATE_CACHE_SIZE:  # full: forget the oldest
            del _compiled[next(iter(_compiled))]
        _compiled[source] = template
    return template


def render(source: str, context: Mapping[str, Any]) -> str:
    """``source`` rendered with the values of ``context``."""
    return compile_template(source).render(context)
