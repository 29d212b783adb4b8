"""minitext: word wrapping and justifying, word counts, and a small template renderer.

    >>> from minitext import render
    >>> render("{{ name|upper }}: {{ text|wrap:12 }}", {"name": "note", "text": "a b c"})
    'NOTE: a b c'

The tuning constants (module-level UPPER_CASE names in ``tokens``, ``layout`` and
``template``) change how fast the work is done, never what comes out.
"""

from minitext.layout import display_width, fill, wrap
from minitext.template import Template, TemplateError, compile_template, render
from minitext.tokens import tokenize, top_words, word_counts

__all__ = [
    "Template",
    "TemplateError",
    "compile_template",
    "display_width",
    "fill",
    "render",
    "tokenize",
    "top_words",
    "word_counts",
    "wrap",
]
