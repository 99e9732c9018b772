"""The deterministic caption normaliser (runs before every text mode but none)."""

from __future__ import annotations

import pytest

from djray.ops.text.normalize import normalize


@pytest.mark.parametrize("raw, expected", [
    ("a dog on the beach", "a dog on the beach"),
    ("  a   dog\ton the\nbeach  ", "a dog on the beach"),
    ("the the dog", "the dog"),
    ("The the dog", "The dog"),
    ("the THE the cat", "the cat"),
    ("a dog dog.", "a dog."),
    ("(the the cat)", "(the cat)"),
    ("no, no, no", "no, no, no"),  # punctuation between: deliberate
    ("Bora Bora beach", "Bora Bora beach"),  # both capitalised: a name
    ("1 1 2", "1 1 2"),  # numbers are not words
    ("fish &amp; chips", "fish & chips"),
    ("&amp;amp; once", "&amp; once"),  # unescaped once only
    ("caf&eacute; &lt;b&gt;", "café <b>"),
    ("cafe\u0301", "café"),  # NFC
    ("a\x00b\x07c\x1bd\x7fe", "a b c d e"),  # controls become spaces
    ("\u202eevil\u202c text\u2066x\u2069", "evil textx"),  # bidi controls removed
    ("zero\u200bwidth\ufeff bom\u00ad", "zerowidth bom"),
    ("emoji \U0001F468\u200d\U0001F469 ok", "emoji \U0001F468\u200d\U0001F469 ok"),  # ZWJ kept
    ("nbsp\u00a0and\u2028line\u3000sep", "nbsp and line sep"),
    ("", ""),
    (" \t\n ", ""),
    ("שלום שלום world", "שלום world"),  # RTL script: repeat collapsed (no case)
])
def test_normalize_cases(raw, expected):
    assert normalize(raw) == expected


def test_none_stays_none():
    assert normalize(None) is None


@pytest.mark.parametrize("raw", ["The the  dog&amp;cat\x00 on teh beach ", "a\u202eb c c", "x y z"])
def test_idempotent_without_double_escapes(raw):
    once = normalize(raw)
    assert normalize(once) == once
