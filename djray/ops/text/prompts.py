"""Prompt construction for the LLM text modes: the versioned template file and hostile-caption neutralisation.

A caption is DATA. It reaches the model only

* normalised (`normalize`: no control or bidi characters, no newlines: a caption cannot open a new "line" of
  instructions), truncated to `MAX_INPUT_CHARS` at a word boundary,
* neutralised (`neutralize`): Unicode NFKC first (fullwidth ``＜/caption＞``, small ``﹤``, fullwidth letters and
  brackets fold to ASCII); every single angle-bracket look-alike (``<`` ``‹`` ``〈`` ``⟨`` ``❮`` ``❬`` ``⧼`` ``˂``
  ``ᐸ`` ``❰`` and their closers) becomes ``‹`` / ``›`` (so no chat-template special token such as ``<|im_start|>``,
  ``<s>`` or ``<start_of_turn>`` can appear: tokenizers parse special tokens inside message text); then every
  tag-like sequence naming one of the prompt's own delimiters (``caption``, ``objects``) with any bracket look-alike,
  single or double (``«`` ``《`` ``⟪`` ``≪`` …), is removed, repeatedly, so nested ``</cap</caption>tion>`` cannot
  reassemble one; bracketed control tags such as ``[INST]`` / ``[/INST]`` / ``[SYSTEM_PROMPT]`` (Mistral control
  tokens) become ``(INST)`` …. The rendered user message therefore holds exactly one opening and one closing caption
  delimiter, in any spelling a model might read as one (tests check this with hostile captions). Not covered:
  homoglyph letters of another script (Cyrillic ``с`` in ``‹/сaption›``), which NFKC does not fold,
* inside ``<caption>…</caption>`` in the user message, after the instructions and before a closing reminder.

The system message and everything in the user message outside the delimiters depend only on the template and on
the row's evidence, never on the caption (tests check this byte for byte with hostile captions). Evidence labels
(from a label file) get the same neutralisation and sit inside ``<objects>…</objects>``.

Template file (YAML): ``version`` (string), ``system``, ``correction`` (P_M), ``evidence`` (P_O, with exactly one
``{objects}``), optional ``reminder``. Its version and sha256 go into the manifest.
"""

from __future__ import annotations

import hashlib
import os
import re
import unicodedata
from dataclasses import dataclass, field
from importlib import resources

import yaml

from djray.ops.text.normalize import normalize

PACKAGED_TEMPLATE = "caption_rewrite_v1.yaml"
MAX_INPUT_CHARS = 1000  # a caption longer than this is cut at a word boundary before it reaches the model
MAX_LABEL_CHARS = 80
MAX_LABELS = 16
CAPTION_OPEN, CAPTION_CLOSE = "<caption>", "</caption>"
OBJECTS_OPEN, OBJECTS_CLOSE = "<objects>", "</objects>"
OBJECTS_SLOT = "{objects}"
_TEMPLATE_KEYS = {"version", "system", "correction", "evidence", "reminder"}
_CONTROL_TAG_RE = re.compile(r"\[(/?[A-Z][A-Z_]{1,30})\]")
# Single angle-bracket look-alikes left after NFKC (which folds ＜＞ ﹤﹥ 〈〉 into < > 〈 〉): all become ‹ ›.
_LOOKALIKE_OPEN = "<\u2039\u3008\u27e8\u276e\u276c\u29fc\u02c2\u1438\u2770"
_LOOKALIKE_CLOSE = ">\u203a\u3009\u27e9\u276f\u276d\u29fd\u02c3\u1433\u2771"
_TO_GUILLEMET = str.maketrans({**dict.fromkeys(_LOOKALIKE_OPEN, "\u2039"), **dict.fromkeys(_LOOKALIKE_CLOSE, "\u203a")})
# Double ones are ordinary quotation marks (« » in French): kept, but never around a delimiter name.
_OPEN = "\u2039\u00ab\u300a\u27ea\u226a"
_CLOSE = "\u203a\u00bb\u300b\u27eb\u226b"
_GAP = f"[^\\w{_OPEN}{_CLOSE}]*"  # spaces, slashes, punctuation, invisible characters between bracket and name


def _name(word: str) -> str:
    return "[^\\w\\s]*".join(re.escape(ch) for ch in word)  # c.a.p.t.i.o.n, cap\u2063tion


_NAMES = "(?:" + "|".join(_name(w) for w in ("caption", "objects")) + ")"
_DELIMITER_RE = re.compile(f"[{_OPEN}]{_GAP}{_NAMES}{_GAP}[{_CLOSE}]?|/{_GAP}{_NAMES}{_GAP}[{_CLOSE}]",
                           re.IGNORECASE)
_WORD_RE = re.compile(r"\w+", re.UNICODE)
ECHO_NGRAM = 6  # an output sharing a run of this many words with the instructions (and not the caption) echoes them


@dataclass(frozen=True)
class PromptTemplate:
    version: str
    system: str
    correction: str  # P_M
    evidence: str  # P_O, contains {objects}
    reminder: str
    path: str
    sha256: str
    instruction_ngrams: frozenset = field(default_factory=frozenset, repr=False)

    def describe(self) -> dict[str, str]:
        return {"prompt_version": self.version, "prompt_sha256": self.sha256, "prompt_path": self.path}


def packaged_template_path() -> str:
    return str(resources.files("djray").joinpath("data", "prompts", PACKAGED_TEMPLATE))


def load_template(path: str | None = None) -> PromptTemplate:
    """Read and check a template file (None → the packaged one). Raises ValueError / OSError with the reason."""
    path = os.path.expanduser(path) if path else packaged_template_path()
    if not os.path.isfile(path):
        raise ValueError(f"file not found: {path}")
    with open(path, "rb") as f:
        raw = f.read()
    try:
        doc = yaml.safe_load(raw.decode("utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ValueError(f"{path} is not a UTF-8 YAML file: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"{path} must be a YAML mapping with keys {sorted(_TEMPLATE_KEYS)}")
    unknown = set(doc) - _TEMPLATE_KEYS
    if unknown:
        raise ValueError(f"{path}: unknown keys {sorted(unknown)} (allowed: {sorted(_TEMPLATE_KEYS)})")
    texts = {}
    for key in ("version", "system", "correction", "evidence"):
        v = doc.get(key)
        if v is None or not str(v).strip():
            raise ValueError(f"{path}: missing or empty '{key}'")
        texts[key] = str(v).strip()
    texts["reminder"] = str(doc.get("reminder") or "").strip()
    if texts["evidence"].count(OBJECTS_SLOT) != 1:
        raise ValueError(f"{path}: 'evidence' must contain {OBJECTS_SLOT} exactly once")
    for key in ("system", "correction", "evidence", "reminder"):
        if OBJECTS_SLOT in texts[key] and key != "evidence":
            raise ValueError(f"{path}: {OBJECTS_SLOT} may only appear in 'evidence'")
    ngrams = frozenset().union(*(word_ngrams(texts[k].replace(OBJECTS_SLOT, " "), ECHO_NGRAM)
                                 for k in ("system", "correction", "evidence", "reminder")))
    return PromptTemplate(version=texts["version"], system=texts["system"], correction=texts["correction"],
                          evidence=texts["evidence"], reminder=texts["reminder"], path=path,
                          sha256=hashlib.sha256(raw).hexdigest(), instruction_ngrams=ngrams)


def word_ngrams(text: str, n: int) -> set[tuple[str, ...]]:
    words = _WORD_RE.findall(text.casefold())
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def _fold(text: str) -> str:
    """NFKC, then every single angle-bracket look-alike as ‹ / ›."""
    return unicodedata.normalize("NFKC", text).translate(_TO_GUILLEMET)


def neutralize(text: str) -> str:
    """Make untrusted text safe to place between delimiters: NFKC, no angle brackets (look-alikes included), no
    tag-like sequence naming a delimiter of the prompt, no bracketed control tags."""
    text = _fold(text)
    while True:
        cut = _DELIMITER_RE.sub("", text)  # nested tags reassemble, and go in the next round
        if cut == text:
            break
        text = cut
    text = " ".join(text.split())
    return _CONTROL_TAG_RE.sub(r"(\1)", text)


def contains_delimiter(text: str) -> bool:
    """True when `text` holds a tag-like sequence naming one of the prompt's delimiters, in any spelling
    `neutralize` removes (used to reject model outputs that echo them)."""
    return bool(_DELIMITER_RE.search(_fold(text)))


def truncate(text: str, limit: int = MAX_INPUT_CHARS) -> str:
    """Cut at the last space at or before `limit` characters (hard cut when one word is longer)."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    return text[:cut if cut > limit // 2 else limit].rstrip()


def prepare_caption(caption: str) -> str:
    """The caption text as it appears between the delimiters (input: the normalised caption)."""
    return neutralize(truncate(normalize(caption) or ""))


def prepare_labels(labels: list[str] | None) -> list[str]:
    """Evidence labels: normalised, neutralised, bounded, de-duplicated (case-insensitive), order kept."""
    out, seen = [], set()
    for label in labels or []:
        t = neutralize(truncate(normalize(label) or "", MAX_LABEL_CHARS)).replace(";", ",")
        if t and t.casefold() not in seen:
            seen.add(t.casefold())
            out.append(t)
        if len(out) == MAX_LABELS:
            break
    return out


def instruction_text(template: PromptTemplate, labels: list[str]) -> str:
    """The instructions of the user message: P_M, plus P_O when the row has evidence (`labels` already prepared)."""
    if not labels:
        return template.correction
    objects = OBJECTS_OPEN + "; ".join(labels) + OBJECTS_CLOSE
    return template.correction + "\n" + template.evidence.replace(OBJECTS_SLOT, objects)


def build_messages(template: PromptTemplate, caption: str, evidence: list[str] | None = None) -> list[dict[str, str]]:
    """Chat messages for one row: [system, user]. `caption` is the normalised caption; `evidence` raw labels or None."""
    return messages_for(template, prepare_caption(caption), prepare_labels(evidence))


def messages_for(template: PromptTemplate, inner: str, labels: list[str]) -> list[dict[str, str]]:
    """Chat messages from an already prepared caption (`prepare_caption`) and labels (`prepare_labels`)."""
    user = instruction_text(template, labels) + "\n\n" + CAPTION_OPEN + inner + CAPTION_CLOSE
    if template.reminder:
        user += "\n\n" + template.reminder
    return [{"role": "system", "content": template.system}, {"role": "user", "content": user}]
