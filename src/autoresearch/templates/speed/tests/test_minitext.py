"""Unit tests of minitext: behaviour, and the same output under every tuning setting.

Run from the task's root: python -m unittest discover -s tests -q
"""

from __future__ import annotations

import contextlib
import random
import re
import sys
import unittest
import zlib
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench  # noqa: E402
import minitext  # noqa: E402
from minitext import (  # noqa: E402
    Template,
    TemplateError,
    compile_template,
    display_width,
    fill,
    render,
    tokenize,
    top_words,
    word_counts,
    wrap,
)

MODULES = [sys.modules[f"minitext.{name}"] for name in ("tokens", "layout", "template")]

# Non-default settings of the tuning constants; every one must give the default output.
SETTINGS = {
    "regex tokenizer": {"USE_REGEX": 1},
    "counting 3 words per step": {"COUNT_CHUNK_SIZE": 3},
    "counting 4096 words per step": {"COUNT_CHUNK_SIZE": 4096},
    "a width cache of 2 words (always evicting)": {"WIDTH_CACHE_SIZE": 2},
    "a large width cache": {"WIDTH_CACHE_SIZE": 16384},
    "the ASCII fast path": {"ASCII_FAST_PATH": 1},
    "a template cache of 1": {"TEMPLATE_CACHE_SIZE": 1},
    "a large template cache": {"TEMPLATE_CACHE_SIZE": 64},
    "every fast setting together": {
        "USE_REGEX": 1,
        "COUNT_CHUNK_SIZE": 4096,
        "WIDTH_CACHE_SIZE": 16384,
        "ASCII_FAST_PATH": 1,
        "TEMPLATE_CACHE_SIZE": 16,
    },
}

# CRC-32 of the first BENCH_DOCUMENTS documents of bench.py's workload, rendered as bench.py
# renders them (any correct version of minitext gives exactly this).
BENCH_DOCUMENTS = 40
BENCH_CHECKSUM = 1485415382


@contextlib.contextmanager
def constants(values: dict[str, int]) -> Iterator[None]:
    """Set tuning constants in whichever minitext module defines them; restore afterwards."""
    saved = []
    for name, value in values.items():
        owners = [m for m in MODULES if hasattr(m, name)] or MODULES[:1]
        for module in owners:
            saved.append((module, name, getattr(module, name, None), hasattr(module, name)))
            setattr(module, name, value)
    try:
        yield
    finally:
        for module, name, old, existed in reversed(saved):
            if existed:
                setattr(module, name, old)
            else:
                delattr(module, name)


def sample_text(seed: int, words: int = 400) -> str:
    """Mixed text: ASCII, accents, wide characters, combining marks, punctuation, long words."""
    rng = random.Random(seed)
    vocab = ["the", "a", "cat", "Sat", "on", "mat", "don't", "l'été", "東京", "日本語",
             "e\u0301te\u0301", "naïve", "Москва", "rock’n’roll", "x_y", "42", "3.14",
             "supercalifragilisticexpialidocious", "ｆｕｌｌｗｉｄｔｈ", "'quoted'", "end.",
             "well,", "(paren)", "a-b", "½"]  # fmt: skip
    out = []
    for _ in range(words):
        out.append(rng.choice(vocab))
        out.append(rng.choice([" ", " ", " ", "  ", "\t", "\n", "\n\n", " \n \n"]))
    return "".join(out)


def bench_checksum(documents: int) -> int:
    rng = random.Random(1)
    checksum = 0
    for doc in bench.documents(documents):
        for source in rng.sample(bench.TEMPLATES, bench.TEMPLATES_PER_DOCUMENT):
            checksum = zlib.crc32(render(source, doc).encode("utf-8"), checksum)
    return checksum


def everything() -> list[object]:
    """The outputs of every public function on the sample texts, to compare across settings."""
    out: list[object] = []
    for seed in range(3):
        text = sample_text(seed, 250)
        out.append(tokenize(text))
        out.append(sorted(word_counts(text).items()))
        out.append(top_words(text, 7))
        for width in (1, 2, 7, 40):
            out.append(wrap(text, width))
            out.append(fill(text, width))
            out.append(fill(text, width, justify=True))
        out.append([display_width(word) for word in text.split()])
        context = {"t": text, "n": seed, "tags": text.split()[:5], "d": {"x": "é"}}
        for source in SOURCES:
            out.append(render(source, context))
    return out


SOURCES = [
    "{{ t|wrap:30 }}",
    "{{ t|justify:44|indent:2 }}\n{{ t|count }} words",
    "top: {{ t|top:5 }} / {{ tags|join:\", \" }} / {{ d.x|upper }}",
    "{{ n }}: {{ missing|default:\"-\" }} {{ t|truncate:20 }} {{ t|title|wrap:9 }}",
    "{{ t|lower|top:3 }}|{{ t|upper|count }}|{{ t|strip|justify:17 }}",
]


class TestWrap(unittest.TestCase):
    def test_wrap_fills_lines_greedily_up_to_the_width(self) -> None:
        lines = wrap("the quick brown fox jumps over the lazy dog", 10)
        self.assertEqual(lines, ["the quick", "brown fox", "jumps over", "the lazy", "dog"])

    def test_wrap_keeps_a_line_that_is_exactly_the_width(self) -> None:
        self.assertEqual(wrap("aaaa bbbb", 9), ["aaaa bbbb"])
        self.assertEqual(wrap("aaaa bbbb", 8), ["aaaa", "bbbb"])

    def test_wrap_never_exceeds_the_width_and_keeps_every_word_in_order(self) -> None:
        text = " ".join(w for w in sample_text(7).split() if display_width(w) <= 12)
        for width in (12, 20, 33, 80):
            lines = wrap(text, width)
            self.assertTrue(all(display_width(line) <= width for line in lines), width)
            self.assertEqual(" ".join(lines).split(), text.split())

    def test_wrap_collapses_runs_of_whitespace_tabs_and_newlines(self) -> None:
        self.assertEqual(wrap("  a\t\tb \n\n c  ", 20), ["a b c"])

    def test_wrap_of_empty_or_blank_text_gives_no_lines(self) -> None:
        self.assertEqual(wrap("", 10), [])
        self.assertEqual(wrap(" \n\t ", 10), [])

    def test_a_word_longer_than_the_width_starts_a_line_and_is_broken(self) -> None:
        self.assertEqual(wrap("ab abcdefghi cd", 4), ["ab", "abcd", "efgh", "i cd"])
        self.assertEqual(wrap("ab abcdefghij cd", 4), ["ab", "abcd", "efgh", "ij", "cd"])

    def test_width_one_puts_every_character_of_a_long_word_on_its_own_line(self) -> None:
        self.assertEqual(wrap("abc d", 1), ["a", "b", "c", "d"])

    def test_a_width_below_one_is_an_error(self) -> None:
        with self.assertRaises(ValueError):
            wrap("a b", 0)

    def test_wide_east_asian_characters_take_two_columns(self) -> None:
        self.assertEqual(display_width("東京"), 4)
        self.assertEqual(display_width("ｆｕｌｌ"), 8)
        self.assertEqual(wrap("東京 東京 東京", 9), ["東京 東京", "東京"])
        self.assertEqual(wrap("日本語日本語", 4), ["日本", "語日", "本語"])

    def test_combining_marks_take_no_columns(self) -> None:
        self.assertEqual(display_width("e\u0301te\u0301"), 3)
        self.assertEqual(display_width("café"), 4)
        word = "e\u0301e\u0301e\u0301"
        self.assertEqual(wrap(f"{word} ab", 5), [word, "ab"])
        self.assertEqual(wrap(f"{word} ab", 6), [f"{word} ab"])

    def test_display_width_of_plain_ascii_is_its_length(self) -> None:
        for text in ("", "a", "hello,", "x_y-z!", "\x01\x7f"):
            self.assertEqual(display_width(text), len(text))


class TestFill(unittest.TestCase):
    def test_fill_keeps_paragraphs_apart_by_one_blank_line(self) -> None:
        self.assertEqual(fill("a b c\n\n\n  \nd e", 3), "a b\nc\n\nd e")

    def test_fill_joins_the_lines_of_a_paragraph(self) -> None:
        self.assertEqual(fill("one two\nthree four", 9), "one two\nthree\nfour")

    def test_fill_of_empty_text_is_empty(self) -> None:
        self.assertEqual(fill("", 10), "")
        self.assertEqual(fill("\n\n \n", 10, justify=True), "")

    def test_justify_widens_the_leftmost_gaps_first(self) -> None:
        self.assertEqual(fill("aa b cc ddd e", 8, justify=True), "aa  b cc\nddd e")
        self.assertEqual(fill("a b c d e f g", 6, justify=True), "a  b c\nd  e f\ng")

    def test_justified_lines_are_exactly_the_width_except_each_paragraphs_last(self) -> None:
        text = sample_text(3).replace("supercalifragilisticexpialidocious", "long")
        for width in (20, 41):
            for para in fill(text, width, justify=True).split("\n\n"):
                lines = para.split("\n")
                for line in lines[:-1]:
                    if " " in line:
                        self.assertEqual(display_width(line), width, line)
                self.assertNotIn("  ", lines[-1])

    def test_justify_leaves_single_word_lines_alone(self) -> None:
        self.assertEqual(fill("abcdef gh", 6, justify=True), "abcdef\ngh")

    def test_justify_counts_wide_characters_as_two_columns(self) -> None:
        self.assertEqual(fill("東京 a b c", 7, justify=True), "東京  a\nb c")


class TestTokens(unittest.TestCase):
    def test_tokenize_splits_on_punctuation_spaces_and_underscores(self) -> None:
        self.assertEqual(
            tokenize("Hello, world! It's 42_000 l'été rock’n’roll (x)"),
            ["Hello", "world", "It's", "42", "000", "l'été", "rock’n’roll", "x"],
        )

    def test_apostrophes_only_join_letters_on_both_sides(self) -> None:
        self.assertEqual(tokenize("'quoted' don''t dogs' o'"), ["quoted", "don", "t", "dogs", "o"])

    def test_tokenize_keeps_letters_of_every_script(self) -> None:
        words = ["Москва", "東京", "한국어", "naïve"]
        self.assertEqual(tokenize("Москва, 東京 한국어; naïve"), words)

    def test_tokenize_of_empty_or_punctuation_only_text_is_empty(self) -> None:
        self.assertEqual(tokenize(""), [])
        self.assertEqual(tokenize(" ,.;- '_ "), [])

    def test_tokenize_matches_a_reference_definition_on_random_text(self) -> None:
        reference = re.compile(r"[^\W_]+(?:['\u2019][^\W_]+)*")
        for seed in range(5):
            text = sample_text(seed, 300)
            self.assertEqual(tokenize(text), reference.findall(text))

    def test_word_counts_are_case_insensitive(self) -> None:
        self.assertEqual(dict(word_counts("The the THE cat. Cat!")), {"the": 3, "cat": 2})

    def test_word_counts_add_up_to_the_number_of_tokens(self) -> None:
        text = sample_text(11)
        self.assertEqual(sum(word_counts(text).values()), len(tokenize(text)))

    def test_top_words_breaks_ties_alphabetically(self) -> None:
        self.assertEqual(top_words("b a c b a", 2), [("a", 2), ("b", 2)])
        self.assertEqual(top_words("b a c b a", 10), [("a", 2), ("b", 2), ("c", 1)])

    def test_top_words_of_zero_or_empty_text_is_empty(self) -> None:
        self.assertEqual(top_words("a b", 0), [])
        self.assertEqual(top_words("", 3), [])


class TestTemplate(unittest.TestCase):
    def test_names_are_substituted_and_text_is_kept(self) -> None:
        self.assertEqual(render("Hi {{ name }}, {{name}}!", {"name": "Ann"}), "Hi Ann, Ann!")

    def test_dotted_names_look_into_nested_mappings(self) -> None:
        self.assertEqual(render("{{ a.b.c }}", {"a": {"b": {"c": "deep"}}}), "deep")

    def test_non_string_values_are_rendered_with_str(self) -> None:
        self.assertEqual(render("{{ n }}/{{ x }}", {"n": 3, "x": 1.5}), "3/1.5")

    def test_text_without_tags_and_lone_braces_come_out_unchanged(self) -> None:
        for source in ("", "plain", "a { b } c }} d", "{x}"):
            self.assertEqual(render(source, {}), source)

    def test_case_filters(self) -> None:
        ctx = {"s": "  hello wORLD  "}
        self.assertEqual(render("{{ s|upper }}", ctx), "  HELLO WORLD  ")
        self.assertEqual(render("{{ s|lower }}", ctx), "  hello world  ")
        self.assertEqual(render("{{ s|strip|title }}", ctx), "Hello World")

    def test_filters_apply_left_to_right(self) -> None:
        ctx = {"s": "abcdef"}
        self.assertEqual(render("{{ s|truncate:4|upper }}", ctx), "ABC…")
        self.assertEqual(render("{{ s|upper|truncate:10 }}", ctx), "ABCDEF")

    def test_wrap_justify_and_indent_filters(self) -> None:
        ctx = {"t": "aa b cc ddd e"}
        self.assertEqual(render("{{ t|wrap:8 }}", ctx), "aa b cc\nddd e")
        self.assertEqual(render("{{ t|justify:8|indent:2 }}", ctx), "  aa  b cc\n  ddd e")
        self.assertEqual(render("{{ t|indent:1 }}", {"t": "a\n\nb"}), " a\n\n b")

    def test_join_takes_a_quoted_separator_that_may_hold_spaces_or_a_pipe(self) -> None:
        ctx = {"tags": ["x", "y", 3]}
        self.assertEqual(render('{{ tags|join:", " }}', ctx), "x, y, 3")
        self.assertEqual(render('{{ tags|join:"|" }}', ctx), "x|y|3")
        self.assertEqual(render("{{ tags|join:- }}", ctx), "x-y-3")

    def test_count_and_top_filters(self) -> None:
        ctx = {"t": "the cat and the hat and THE bat"}
        self.assertEqual(render("{{ t|count }}", ctx), "8")
        self.assertEqual(render("{{ t|top:2 }}", ctx), "the (3), and (2)")

    def test_default_fills_in_a_missing_key_only(self) -> None:
        self.assertEqual(render('{{ a|default:"none yet" }}', {}), "none yet")
        self.assertEqual(render('{{ a|default:"none yet" }}', {"a": "here"}), "here")
        self.assertEqual(render("{{ a.b|default:x|upper }}", {"a": {}}), "X")

    def test_a_missing_key_is_an_error_naming_the_key_and_line(self) -> None:
        with self.assertRaisesRegex(TemplateError, r"line 2: missing key 'who\.name'"):
            render("hi\n{{ who.name }}", {"who": {}})
        with self.assertRaises(TemplateError):
            render("{{ s|upper|default:x }}", {})  # default works only as the first filter

    def test_malformed_templates_are_errors(self) -> None:
        for source in ("{{ a", "{{ a|nope }}", "{{ a|wrap }}", "{{ a|wrap:x }}", "{{ a|wrap:0 }}",
                       "{{ a|upper:1 }}", "{{ }}", "{{ a b }}", '{{ a|join:"x }}'):  # fmt: skip
            with self.subTest(source=source), self.assertRaises(TemplateError):
                render(source, {"a": "text"})

    def test_template_errors_are_value_errors(self) -> None:
        self.assertTrue(issubclass(TemplateError, ValueError))

    def test_a_compiled_template_renders_many_contexts(self) -> None:
        template = Template("<{{ x }}>")
        self.assertEqual([template.render({"x": i}) for i in range(3)], ["<0>", "<1>", "<2>"])
        self.assertEqual(compile_template("{{ x }}!").render({"x": "y"}), "y!")

    def test_different_templates_never_share_a_compiled_form(self) -> None:
        for size in (0, 1, 2, 64):
            with constants({"TEMPLATE_CACHE_SIZE": size}):
                out = [render(s, {"x": "v"}) for s in ["a{{ x }}", "b{{ x }}", "a{{ x }}"] * 3]
                self.assertEqual(out, ["av", "bv", "av"] * 3, size)

    def test_the_package_exports_its_public_functions(self) -> None:
        for name in minitext.__all__:
            self.assertTrue(hasattr(minitext, name), name)


class TestSameOutputForEverySetting(unittest.TestCase):
    """The tuning constants change speed only: every setting gives the default output."""

    @classmethod
    def setUpClass(cls) -> None:
        cls.expected = everything()

    def check(self, name: str) -> None:
        with constants(SETTINGS[name]):
            got = everything()
        for i, (want, have) in enumerate(zip(self.expected, got, strict=True)):
            self.assertEqual(have, want, f"output #{i} differs under {name}")

    def test_same_output_with_the_regex_tokenizer(self) -> None:
        self.check("regex tokenizer")

    def test_same_output_counting_several_words_per_step(self) -> None:
        self.check("counting 3 words per step")
        self.check("counting 4096 words per step")

    def test_same_output_with_a_tiny_and_a_large_width_cache(self) -> None:
        self.check("a width cache of 2 words (always evicting)")
        self.check("a large width cache")

    def test_same_output_with_the_ascii_fast_path(self) -> None:
        self.check("the ASCII fast path")

    def test_same_output_with_a_tiny_and_a_large_template_cache(self) -> None:
        self.check("a template cache of 1")
        self.check("a large template cache")

    def test_same_output_with_every_fast_setting_together(self) -> None:
        self.check("every fast setting together")

    def test_the_benchmark_workload_renders_to_its_known_checksum(self) -> None:
        self.assertEqual(bench_checksum(BENCH_DOCUMENTS), BENCH_CHECKSUM)
        with constants(SETTINGS["every fast setting together"]):
            self.assertEqual(bench_checksum(BENCH_DOCUMENTS), BENCH_CHECKSUM)


if __name__ == "__main__":
    unittest.main()
