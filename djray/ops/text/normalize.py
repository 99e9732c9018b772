"""The cheap deterministic caption normaliser that runs before every text mode but `none` (no LLM, no model).

    normalize("The the  dog&amp;cat\\x00 on teh beach ") == "The dog&cat on teh beach"

Steps, in this order (it always runs on the raw caption, once; it is idempotent except on doubly escaped entities):

1. HTML entities are unescaped **once** (``&amp;amp;`` → ``&amp;``: a caption that really says ``&amp;`` keeps it).
2. Unicode NFC.
3. Control characters (category Cc: NUL, BEL, ESC, DEL, C1 controls; tabs and newlines too) become spaces; invisible
   format characters that only serve spoofing or layout are removed: bidi embeddings/overrides/isolates
   (U+202A–U+202E, U+2066–U+2069), LRM/RLM/ALM, zero-width space U+200B, word joiner U+2060, BOM U+FEFF, soft hyphen
   U+00AD. ZWJ/ZWNJ (U+200D/U+200C) stay: emoji sequences and Persian/Indic scripts need them.
4. Whitespace (any Unicode space, NBSP and line separators included) collapses to one ASCII space.
5. An immediately repeated word collapses, case-insensitively: "the the" → "the", "The the" → "The",
   "dog dog." → "dog.". Not collapsed: a word followed by punctuation ("no, no"), and a pair where both words are
   capitalised ("Bora Bora", "Walla Walla", "Duran Duran": names).
6. Trimmed.

Misspellings are not touched here: that needs a model (`text_only` / `rewrite` with an engine).
"""

from __future__ import annotations

import html
import re
import unicodedata

# Format characters removed outright (invisible; used for spoofing, e.g. RTL overrides that reorder what a reader sees).
_REMOVE = dict.fromkeys(
    [0x00AD, 0x061C, 0x200B, 0x200E, 0x200F, 0x2060, 0xFEFF, *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
)


_CC_RE = re.compile("[\x00-\x1f\x7f-\x9f]")  # exactly Unicode category Cc
# A word, non-word characters, the same word again (case-insensitive): the cheap test before the exact pass.
_MAYBE_REPEAT_RE = re.compile(r"\b(\w+)\W+\1\b", re.IGNORECASE)


def _strip_controls(text: str) -> str:
    return _CC_RE.sub(" ", text.translate(_REMOVE))


def _core(word: str) -> tuple[str, str, str]:
    """(leading punctuation, core, trailing punctuation) of a whitespace-delimited token."""
    i, j = 0, len(word)
    while i < j and not word[i].isalnum():
        i += 1
    while j > i and not word[j - 1].isalnum():
        j -= 1
    return word[:i], word[i:j], word[j:]


def collapse_repeats(words: list[str]) -> list[str]:
    """Collapse immediately repeated words (see module doc, step 5)."""
    out: list[str] = []
    for w in words:
        if out:
            prev = out[-1]
            lead_p, core_p, trail_p = _core(prev)
            lead_w, core_w, trail_w = _core(w)
            if (core_p and not trail_p and not lead_w and core_p.casefold() == core_w.casefold()
                    and any(c.isalpha() for c in core_p)
                    and not (core_p[0].isupper() and core_w[0].isupper())):
                out[-1] = prev + trail_w
                continue
        out.append(w)
    return out


def normalize(text: str | None) -> str | None:
    """Normalise one caption (None stays None). Pure and deterministic."""
    if text is None:
        return None
    text = html.unescape(text)
    text = unicodedata.normalize("NFC", text)
    words = _strip_controls(text).split()
    if _MAYBE_REPEAT_RE.search(" ".join(words)):
        words = collapse_repeats(words)
    return " ".join(words)
