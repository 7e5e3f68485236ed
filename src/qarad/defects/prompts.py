"""Prompt grammar for rendered defects, the reverse keyword lookup, and user-prompt validation.

`prompt_for` turns DefectParams into a varied noun phrase ("a long thin bright scratch running
diagonally"). Every phrase names its family with a keyword that `family_of` maps back, and no
phrase uses another family's keyword, so family_of(prompt_for(p)) == p.family always holds.
"""
from __future__ import annotations

import json
import re
import unicodedata
import zlib

import numpy as np

from .params import DefectParams
from .vocab import BASELINE_FAMILY, STROKE_FAMILIES

MAX_PROMPT_CHARS = 300
ALLOWED_WHITESPACE = "\t\n\r"  # control characters that are whitespace: collapsed, not rejected

# Keyword -> family. Plural "-s"/"-es" is matched automatically; other inflections are listed.
KEYWORDS: dict[str, tuple[str, ...]] = {
    "scratch": ("scratch", "scratched", "scrape", "scraped", "scuff", "scuffed", "scuff mark", "kratzer"),
    "crack": ("crack", "cracked", "fissure", "crazing", "riss", "risse"),
    "hole": ("hole", "pit", "pitted", "pinhole", "puncture", "perforation", "loch", "löcher"),
    "stain": ("stain", "stained", "smudge", "blot", "contamination", "contaminated", "residue", "fleck", "flecken"),
    "dent": ("dent", "dented", "bump", "dimple", "depression", "bulge", "delle", "beule"),
    "break": ("break", "broken", "breakage", "missing material", "missing piece", "chip", "chipped", "chipped-off",
              "broken-off", "bruch"),
    "discoloration": ("discoloration", "discolouration", "discolored", "discoloured", "colour shift", "color shift",
                      "faded", "fading", "bleached", "verfärbung"),
    "fray": ("fray", "frayed", "fraying", "loose fibre", "loose fiber", "loose thread", "fibre", "fiber"),
    "print_line": ("print line", "printed line", "line defect", "line segment", "missing line", "extra line",
                   "spurious line", "line gap", "track", "bridge", "bridging", "spur", "short circuit", "open circuit"),
    BASELINE_FAMILY: ("foreign texture",),
}
_KEYWORD_FAMILY = {kw: fam for fam, kws in KEYWORDS.items() for kw in kws}
# Longest keywords first so that "missing line segment" wins over "line segment" at one position.
_KEYWORD_RE = re.compile(
    r"\b(" + "|".join(re.escape(k) for k in sorted(_KEYWORD_FAMILY, key=len, reverse=True)) + r")(?:e?s)?\b",
    re.IGNORECASE)

_SIZE = {"small": ("small", "tiny", "little"), "medium": ("medium-sized", "moderate", "mid-sized"),
         "large": ("large", "big", "extensive")}
_LENGTH = {"small": ("short", "small"), "medium": ("medium-length", "moderate"), "large": ("long", "extended", "lengthy")}
_CONTRAST = {"faint": ("faint", "subtle", "barely visible", "low-contrast"),
             "strong": ("strong", "pronounced", "clearly visible", "high-contrast", "distinct")}
_POLARITY = {"dark": ("dark", "darker", "blackish"), "bright": ("bright", "light", "pale", "shiny")}
_TONE_WITH_COLOUR = {"dark": ("dark", "deep"), "bright": ("light", "pale")}  # "dark rusty", not "blackish rusty"
_SHAPE = {"thin": ("thin", "fine", "hairline"), "wide": ("wide", "broad", "thick"), "round": ("round", "circular"),
          "elongated": ("elongated", "oval", "oblong"), "irregular": ("irregular", "ragged", "uneven"),
          "branching": ("branching", "forked", "branched")}
_COLOUR = {"rust": ("rust-coloured", "rusty", "reddish-brown"), "brown": ("brown", "brownish"),
           "yellow": ("yellow", "yellowish"), "blue": ("blue", "bluish"), "green": ("green", "greenish"),
           "red": ("red", "reddish")}
_ORIENTATION = {"horizontal": ("running horizontally", "oriented horizontally", "running left to right"),
                "vertical": ("running vertically", "oriented vertically", "running top to bottom"),
                "diagonal": ("running diagonally", "at a diagonal", "oriented diagonally")}
_NOUN = {
    "scratch": ("scratch", "scrape", "scuff mark"),
    "crack": ("crack", "fissure"),
    "hole": ("hole", "pit", "puncture"),
    "stain": ("stain", "smudge", "contamination spot", "blot"),
    ("dent", "dark"): ("dent", "dimple", "depression"),
    ("dent", "bright"): ("bump", "bulge", "raised bump"),
    "break": ("break", "missing piece", "chipped-off area", "broken area", "area of missing material"),
    "discoloration": ("discoloration", "discoloured area", "discoloured patch", "colour shift"),
    "fray": ("frayed edge", "fray", "patch of loose fibres", "fraying"),
    ("print_line", "gap"): ("missing line segment", "gap in the printed line", "line gap", "interrupted track"),
    ("print_line", "bridge"): ("extra line segment", "bridge between tracks", "spurious extra line", "short-circuit bridge"),
}
_DETAIL = {
    "scratch": ("", ""),
    "crack": ("with several branches", "branching out", ""),
    ("hole", "dark"): ("with a bright rim", "with a raised bright lip", "with a shadowed inner wall"),
    ("hole", "bright"): ("with a dark rim", "showing light through it"),
    ("stain", "dark"): ("with a darker edge ring", "with soft edges", "with a tide-mark edge"),
    ("stain", "bright"): ("with a pale edge ring", "with soft edges"),
    "dent": ("catching the light on one side", "with soft shading", "seen as a light-dark gradient", ""),
    "break": ("with a sharp broken edge", "with jagged edges", "exposing the background"),
    "discoloration": ("with soft, gradual edges", "blending into the surface", ""),
    "fray": ("with many loose fibres", "with stray fibres sticking out", "along the edge"),
    ("print_line", "gap"): ("with clean straight edges", "cutting the track", ""),
    ("print_line", "bridge"): ("with square ends", "with a pad at each end", ""),
}
# Families whose noun already says which way the brightness goes (a dent is dark shading, a bump bright).
_NO_POLARITY_WORD = ("dent",)


def _pick(rng: np.random.Generator, options) -> str:
    return options[int(rng.integers(len(options)))]


def _keyed(table: dict, family: str, key: str):
    return table.get((family, key), table.get(family))


def _article(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def prompt_for(params: "DefectParams", rng: np.random.Generator | None = None) -> str:
    """A natural noun phrase describing `params`.

    Deterministic for given params (the phrasing is drawn from a generator seeded by their
    content, so renders with different numbers get different wordings); pass `rng` for more.
    """
    fam = params.family
    if fam == BASELINE_FAMILY:
        return "a foreign texture patch"
    if rng is None:
        digest = zlib.crc32(json.dumps(params.to_dict(), sort_keys=True, default=str).encode())
        rng = np.random.default_rng(digest)
    words = []
    if rng.random() < 0.7:
        words.append(_pick(rng, _CONTRAST[params.contrast]))
    if rng.random() < 0.8:
        words.append(_pick(rng, (_LENGTH if fam in STROKE_FAMILIES else _SIZE)[params.size]))
    if params.shape in _SHAPE and rng.random() < 0.8:
        words.append(_pick(rng, _SHAPE[params.shape]))
    if params.colour is not None:
        if rng.random() < 0.4 and fam not in _NO_POLARITY_WORD:
            words.append(_pick(rng, _TONE_WITH_COLOUR[params.polarity]))
        words.append(_pick(rng, _COLOUR[params.colour]))
    elif fam not in _NO_POLARITY_WORD and rng.random() < 0.85:
        words.append(_pick(rng, _POLARITY[params.polarity]))
    key = params.shape if fam == "print_line" else params.polarity
    noun = _pick(rng, _keyed(_NOUN, fam, key))
    words.append(noun)
    phrase = " ".join(dict.fromkeys(words))  # drop accidental repeats ("small small")
    detail = _pick(rng, _keyed(_DETAIL, fam, key))
    if "fibres" in noun and "fibres" in detail:  # "a patch of loose fibres with many loose fibres"
        detail = ""
    if fam == "scratch" and (params.count or 1) > 1:
        detail = _pick(rng, (f"with {params.count} parallel strands", "with several parallel strands"))
    if fam == "crack" and detail == "with several branches" and params.count:
        detail = f"with {params.count} branches"
    if detail and rng.random() < 0.6:
        phrase += " " + detail
    if params.orientation in _ORIENTATION and rng.random() < 0.85:
        phrase += " " + _pick(rng, _ORIENTATION[params.orientation])
    return _article(phrase)


def family_of(prompt: str) -> str | None:
    """The family named first in `prompt` (by keyword or synonym), or None."""
    match = _KEYWORD_RE.search(unicodedata.normalize("NFC", prompt))
    return None if match is None else _KEYWORD_FAMILY[match.group(1).lower()]


def normalise_prompt(text: str) -> str:
    """Validate a user prompt: NFC, no control characters, whitespace collapsed, 1..300 chars."""
    if not isinstance(text, str):
        raise TypeError(f"prompt must be a string, got {type(text).__name__}")
    text = unicodedata.normalize("NFC", text)
    for i, ch in enumerate(text):
        if unicodedata.category(ch) in ("Cc", "Cs") and ch not in ALLOWED_WHITESPACE:
            raise ValueError(f"prompt contains control character U+{ord(ch):04X} at position {i}")
    text = " ".join(text.split())
    if not text:
        raise ValueError("prompt is empty")
    if len(text) > MAX_PROMPT_CHARS:
        raise ValueError(f"prompt is {len(text)} characters long; the limit is {MAX_PROMPT_CHARS}")
    return text


def _says(prompt: str, options) -> bool:
    text = f" {' '.join(re.findall(r'[a-z-]+', prompt.lower()))} "
    return any(f" {word} " in text for word in options)


def stated_attributes(params: "DefectParams", prompt: str) -> dict[str, str]:
    """The attributes `prompt` (made from `params` by `prompt_for`) puts in words, with their value:
    "polarity" (dark / bright), "size" (small / large; medium is not a direction), "elongation"
    (round / elongated: blob-like families only, a stroke's thin/wide is its width) and "orientation"
    (horizontal / vertical / diagonal). An attribute the phrase left out is absent."""
    out = {}
    words = {**_POLARITY, **{k: v + _TONE_WITH_COLOUR[k] for k, v in _POLARITY.items()}}
    if params.family not in _NO_POLARITY_WORD and _says(prompt, words[params.polarity]):
        out["polarity"] = params.polarity
    sizes = _LENGTH if params.family in STROKE_FAMILIES else _SIZE
    if params.size in ("small", "large") and _says(prompt, sizes[params.size]):
        out["size"] = params.size
    if params.shape in ("round", "elongated") and _says(prompt, _SHAPE[params.shape]):
        out["elongation"] = params.shape
    if params.orientation in _ORIENTATION and _says(prompt, _ORIENTATION[params.orientation]):
        out["orientation"] = params.orientation
    return out
