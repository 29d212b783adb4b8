"""The benchmark: render a batch of generated documents with minitext.

The documents' shape (how long, which templates, where the punctuation goes) is the same on
every run (random.Random(0), text generated here, no files or network); which word sits at
which place in the Zipf ranking comes from ``AUTORESEARCH_SEED`` (0 when unset: the same
words every time). The outer tool (``autoresearch measure --same checksum``) draws a secret
seed for every run and checks the checksum against the baseline code's on that seed, so a
faster library must compute the output: it cannot hold it in a table. The work per run
barely depends on the seed (the shape is fixed), so timings stay comparable. This script
only does the work and prints what it did, with a checksum of every byte it rendered:

    ---
    ops: <documents rendered (each document once per template it goes through)>
    checksum: <CRC-32 of all the output>
"""

from __future__ import annotations

import os
import random
import sys
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from minitext import render

DOCUMENTS = 250  # documents generated per run
TEMPLATES_PER_DOCUMENT = 3  # each document is rendered with this many templates, picked at random

SYLLABLES = ["ka", "lo", "mi", "ne", "ra", "to", "su", "vel", "dor", "an", "is", "qu", "ber",
             "ti", "on", "gra", "sel", "mar", "ho", "pe", "lin", "cas", "ur", "fen"]
UNICODE_WORDS = ["café", "naïve", "Ελλάδα", "東京", "日本語", "straße", "façade", "Ñandú",
                 "e\u0301te\u0301", "ｆｕｌｌ", "Москва", "한국어", "rock’n’roll", "l'été"]
PUNCTUATION = [",", ",", ".", ".", ";", ":", "!", "?", " -"]

TEMPLATES = [
    "# {{ title|upper }}\nby {{ author.name|title }} of {{ author.city }}\n\n"
    "{{ body|wrap:72 }}\n\ntags: {{ tags|join:\", \" }}\n"
    "words: {{ body|count }}, most used: {{ body|top:6 }}\n",
    "{{ title|title }}\n{{ body|justify:60|indent:4 }}\n\nmost used: {{ body|top:5 }}\n",
    "<{{ author.name|lower }}> {{ title|truncate:30 }}\n{{ body|justify:48 }}\n"
    "({{ body|count }} words, {{ tags|join:\"/\" }})\n",
    "{{ title }} - {{ subtitle|default:\"no subtitle\" }}\n{{ body|wrap:40 }}\n"
    "top: {{ body|top:3 }}\n",
    "From: {{ author.name }} <{{ author.email|strip }}>\nSubject: {{ title|truncate:50 }}\n\n"
    "{{ body|justify:66 }}\n\n-- \n{{ author.city|upper }} ({{ body|count }} words)\n",
    "[{{ id }}] {{ title|lower }}\n{{ summary|wrap:80|indent:2 }}\n{{ body|top:8 }}\n",
    "{{ title|upper|truncate:24 }}|{{ tags|join:\"|\" }}|{{ body|count }}\n"
    "{{ body|wrap:32 }}\n{{ summary|top:2 }}\n",
    "== {{ title }} ==\n{{ summary|justify:56 }}\n\n{{ body|justify:76|indent:1 }}\n"
    "keywords: {{ body|top:4 }}\n",
]  # fmt: skip


def vocabulary(rng: random.Random, size: int) -> list[str]:
    words: set[str] = set()
    while len(words) < size:
        if rng.random() < 0.03:
            word = rng.choice(UNICODE_WORDS) + rng.choice(SYLLABLES)
        else:
            word = "".join(rng.choice(SYLLABLES) for _ in range(rng.randint(1, 4)))
        if rng.random() < 0.05:
            word = word.capitalize()
        if rng.random() < 0.01:
            word += "'s"
        words.add(word)
    return sorted(words)


def sentence(rng: random.Random, words: list[str], weights: list[float], n: int) -> str:
    picked = rng.choices(words, cum_weights=weights, k=n)
    out = []
    for i, word in enumerate(picked):
        if rng.random() < 0.002:
            word = "https://example.org/" + "/".join(rng.choices(words, k=8))  # a long word
        out.append(word.capitalize() if i == 0 else word)
        if i < n - 1 and rng.random() < 0.08:
            out[-1] += rng.choice(PUNCTUATION)
    return " ".join(out) + rng.choice([".", ".", "!", "?"])


def documents(n: int, seed: int = 0) -> list[dict[str, object]]:
    rng = random.Random(0)
    words = vocabulary(rng, 4000)
    rng.shuffle(words)
    if seed:  # the seed picks the words, not the shape
        random.Random(seed).shuffle(words)
    weights, total = [], 0.0
    for rank in range(len(words)):  # Zipf: the k-th word is used about 1/k as often
        total += 1.0 / (rank + 1)
        weights.append(total)
    docs = []
    for i in range(n):
        paragraphs = [
            " ".join(
                sentence(rng, words, weights, rng.randint(6, 24)) for _ in range(rng.randint(2, 6))
            )
            for _ in range(rng.randint(1, 4))
        ]
        name = " ".join(rng.choices(words, k=2))
        doc: dict[str, object] = {
            "id": i,
            "title": sentence(rng, words, weights, rng.randint(2, 8)),
            "summary": sentence(rng, words, weights, rng.randint(10, 30)),
            "body": "\n\n".join(paragraphs),
            "tags": rng.choices(words, cum_weights=weights, k=rng.randint(1, 5)),
            "author": {
                "name": name,
                "city": rng.choice(words),
                "email": f"  {name.replace(' ', '.').lower()}@example.org ",
            },
        }
        if rng.random() < 0.5:
            doc["subtitle"] = sentence(rng, words, weights, 4)
        docs.append(doc)
    return docs


def main() -> None:
    docs = documents(DOCUMENTS, int(os.environ.get("AUTORESEARCH_SEED") or 0))
    rng = random.Random(1)
    checksum, size, ops = 0, 0, 0
    for doc in docs:
        for source in rng.sample(TEMPLATES, TEMPLATES_PER_DOCUMENT):
            data = render(source, doc).encode("utf-8")
            checksum = zlib.crc32(data, checksum)
            size += len(data)
            ops += 1
    print(f"rendered {len(docs)} documents, {TEMPLATES_PER_DOCUMENT} templates each: {size} bytes")
    print("---")
    print(f"ops: {ops}")
    print(f"checksum: {checksum}")


if __name__ == "__main__":
    main()
