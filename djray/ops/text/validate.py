"""Fallback reason codes and the validation every LLM output passes before it may replace a caption.

An output that fails keeps the row's normalised caption (``caption_source = fallback``) and records one of the codes
below in ``_text_fallback_reason``. Never rename a code: manifests count them.

Validation of one output, in order (first failure wins):

1. clean: normalise (`normalize`), take the first non-empty line, drop a leading preamble ("Here is the corrected
   caption:", "Caption:"), unwrap one pair of surrounding quotes, and unwrap the output when it is exactly
   ``<caption>…</caption>``;
2. ``truncated_output`` the engine stopped at max_new_tokens (the sentence is cut);
3. ``empty_output``    nothing left (no letter or digit);
4. ``role_tag``        chat-template / role markup (``<|im_start|>``, ``[INST]``, ``<<SYS>>``, ``<s>``, ``System:``…)
                        that the caption lacks;
5. ``echoed_prompt``   a delimiter tag (``<caption>``, ``</objects>`` …) or a run of `ECHO_NGRAM` words of the
                        instructions that the caption itself does not contain;
6. ``refusal``         refusal boilerplate ("I'm sorry", "As an AI", "I cannot", "I can't help" …) the caption lacks;
7. ``assistant_reply`` a conversational opener ("Sure", "Certainly", "Of course", "Here is a poem" …) the caption
                        lacks: the model answered the caption instead of correcting it;
8. ``too_long``        more words than max(3 × caption words + evidence words, 40) or more characters than
                        max(3 × caption chars + evidence chars, 300);
9. ``too_short``       fewer words than max(1, caption words // 5);
10. ``unrelated``      less than `MIN_RECALL` of (caption + evidence) survives (`recall`: character trigrams or
                        words up to letter order): the output is about something else (a successful prompt
                        injection, a hallucinated caption).

Other codes set by the op: ``no_evidence`` (rewrite/concat: the row had no class above ε, so it was handled like
``text_only``; the caption itself may still be a valid rewrite), ``empty_input`` (nothing left after normalisation;
the raw caption is kept), ``engine_error`` (the engine gave up on this one request, e.g. HTTP 400 for an over-long
prompt; systemic failures raise `EngineUnavailable` instead and fail the shard).
"""

from __future__ import annotations

import re

from djray.ops.text.engines import Truncated
from djray.ops.text.normalize import normalize
from djray.ops.text.prompts import ECHO_NGRAM, PromptTemplate, contains_delimiter, word_ngrams


class Fallback:
    """Stable codes for ``_text_fallback_reason``."""

    NO_EVIDENCE = "no_evidence"
    EMPTY_INPUT = "empty_input"
    ENGINE_ERROR = "engine_error"
    TRUNCATED_OUTPUT = "truncated_output"
    EMPTY_OUTPUT = "empty_output"
    ROLE_TAG = "role_tag"
    ECHOED_PROMPT = "echoed_prompt"
    REFUSAL = "refusal"
    ASSISTANT_REPLY = "assistant_reply"
    TOO_LONG = "too_long"
    TOO_SHORT = "too_short"
    UNRELATED = "unrelated"

    ALL = ("no_evidence", "empty_input", "engine_error", "truncated_output", "empty_output", "role_tag",
           "echoed_prompt", "refusal", "assistant_reply", "too_long", "too_short", "unrelated")


MIN_RECALL = 0.2
MAX_WORDS_FLOOR, MAX_CHARS_FLOOR, LENGTH_FACTOR = 40, 300, 3

_PREAMBLE_RE = re.compile(
    r"^(?:(?:sure|okay|ok|certainly|of course)[,.!]?\s*)?"
    r"(?:here(?:'s| is)\s+(?:the|your|a|my)\s+(?:\w+\s+){0,3}?caption|(?:the\s+)?(?:corrected|rewritten|revised|"
    r"improved|fixed|new|final)\s+caption(?:\s+is)?|caption|output|answer)\s*[:\-]\s*", re.I)
_QUOTES = {'"': '"', "'": "'", "\u201c": "\u201d", "\u2018": "\u2019", "`": "`", "\u00ab": "\u00bb"}
_ROLE_RE = re.compile(
    r"<\|[^|<>]{1,40}\|>|\[/?INST\]|<</?SYS>>|</?s>|<(?:start|end)_of_turn>|<\|?(?:system|user|assistant)\|?>"
    r"|^\s*(?:system|user|assistant|human|ai)\s*:|###\s*(?:instruction|response|system|input)", re.I)
_TAG_RE = re.compile(r"</?\s*(?:caption|objects)\s*>|[\u2039<]/?(?:caption|objects)[\u203a>]", re.I)
_REFUSAL_RE = re.compile(
    r"\b(?:i'?m sorry|i am sorry|i apologi[sz]e|as an ai\b|as a language model|i cannot\b|i can'?t (?:help|assist|"
    r"comply|do|provide|fulfil)|i'?m (?:not able|unable) to|i am (?:not able|unable) to|i won'?t\b)", re.I)
_ASSISTANT_RE = re.compile(
    r"^(?:sure\b|certainly\b|of course\b|absolutely\b|okay\b|ok\b|as requested\b|here(?:'s| is| are)\b|"
    r"i (?:have|'ve)\b|i will\b|i'll\b)", re.I)
_WORD_RE = re.compile(r"\w+", re.UNICODE)
_WRAPPED_RE = re.compile(r"^\s*<caption>\s*(.*?)\s*</caption>\s*$", re.I | re.S)


def clean_output(text: str | None) -> str:
    """The caption candidate in a raw model output (see module doc, step 1)."""
    if not text:
        return ""
    m = _WRAPPED_RE.match(text)
    if m:
        text = m.group(1)
    lines = [ln for ln in (normalize(x) for x in text.splitlines()) if ln]
    while lines:
        stripped = _PREAMBLE_RE.sub("", lines[0], count=1)
        if stripped != lines[0] and not stripped:  # a preamble on its own line
            lines.pop(0)
            continue
        lines[0] = stripped
        break
    if not lines:
        return ""
    out = lines[0].strip()
    if len(out) >= 2 and _QUOTES.get(out[0]) == out[-1]:
        out = out[1:-1].strip()
    return out


def _trigrams(text: str) -> set[str]:
    """Character trigrams of the casefolded words, each word padded with spaces (words joined by two spaces, so the
    windows across a gap are only 'last letter + gap' / 'gap + first letter')."""
    s = " " + "  ".join(_WORD_RE.findall(text.casefold())) + " "
    return {s[i:i + 3] for i in range(len(s) - 2)}


def _signatures(text: str) -> set[str]:
    return {"".join(sorted(w)) for w in _WORD_RE.findall(text.casefold())}


def recall(source: str, output: str) -> float:
    """How much of the source survives in the output: the larger of the fraction of its word-padded character
    trigrams and the fraction of its words' letter multisets ("teh" ≡ "the": transposition typos) found in the
    output. 1.0 for an empty source. Linear time: it runs on every output."""
    src = _trigrams(source)
    if not src:
        return 1.0
    sig = _signatures(source)
    return max(len(src & _trigrams(output)) / len(src), len(sig & _signatures(output)) / len(sig))


def validate_output(raw: str | None, caption: str, evidence: list[str], template: PromptTemplate,
                    truncated: bool | None = None) -> tuple[str | None, str | None]:
    """(clean caption, None) when `raw` may replace `caption` (the text the model was given), else (None, reason).

    `truncated` defaults to ``isinstance(raw, Truncated)``.
    """
    if truncated is None:
        truncated = isinstance(raw, Truncated)
    if truncated:
        return None, Fallback.TRUNCATED_OUTPUT
    out = clean_output(raw)
    if not any(ch.isalnum() for ch in out):
        return None, Fallback.EMPTY_OUTPUT
    low_in = caption.casefold()
    m = _ROLE_RE.search(out)
    if m and m.group(0).casefold() not in low_in:
        return None, Fallback.ROLE_TAG
    echoed = (word_ngrams(out, ECHO_NGRAM) - word_ngrams(caption, ECHO_NGRAM)) & template.instruction_ngrams
    if echoed or _TAG_RE.search(out) or contains_delimiter(out):
        return None, Fallback.ECHOED_PROMPT
    m = _REFUSAL_RE.search(out)
    if m and m.group(0).casefold() not in low_in:
        return None, Fallback.REFUSAL
    m = _ASSISTANT_RE.match(out)
    if m and not low_in.startswith(m.group(0).casefold()):
        return None, Fallback.ASSISTANT_REPLY
    ev = " ".join(evidence)
    n_in, n_ev, n_out = len(_WORD_RE.findall(caption)), len(_WORD_RE.findall(ev)), len(_WORD_RE.findall(out))
    if (n_out > max(LENGTH_FACTOR * n_in + n_ev, MAX_WORDS_FLOOR)
            or len(out) > max(LENGTH_FACTOR * len(caption) + len(ev), MAX_CHARS_FLOOR)):
        return None, Fallback.TOO_LONG
    if n_out < max(1, n_in // 5):
        return None, Fallback.TOO_SHORT
    if recall(caption + " " + ev, out) < MIN_RECALL:
        return None, Fallback.UNRELATED
    return out, None
