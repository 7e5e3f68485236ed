import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qarad.defects.prompts import KEYWORDS, MAX_PROMPT_CHARS, family_of, normalise_prompt, prompt_for
from qarad.defects.renderer import DefectParams, sample_params
from qarad.defects.vocab import (COLOURS, CONTRASTS, FAMILIES, FAMILY_SHAPES, ORIENTATIONS, POLARITIES, SIZES)


def test_sampled_prompts_name_their_family():
    rng = np.random.default_rng(0)
    for _ in range(600):
        params = sample_params(rng)
        prompt = prompt_for(params)
        assert family_of(prompt) == params.family, prompt
        assert any(kw in prompt for kw in KEYWORDS[params.family]), prompt


def test_prompts_are_deterministic_and_varied():
    params = sample_params(np.random.default_rng(3), "scratch")
    assert prompt_for(params) == prompt_for(params)
    rng = np.random.default_rng(0)
    prompts = {prompt_for(sample_params(rng, "hole")) for _ in range(50)}
    assert len(prompts) > 25


def test_prompts_reflect_the_labels():
    params = DefectParams("scratch", "large", "thin", "diagonal", "bright", "strong", angle=45.0, count=1)
    prompts = [prompt_for(params, np.random.default_rng(i)) for i in range(40)]
    assert all("scratch" in p or "scrape" in p or "scuff" in p for p in prompts)
    assert any("diagonal" in p for p in prompts)
    assert any(w in p for p in prompts for w in ("long", "extended", "lengthy"))
    stain = DefectParams("stain", "small", "round", "none", "dark", "faint", colour="rust")
    assert all(any(w in p for w in ("rust", "reddish-brown")) for p in
               (prompt_for(stain, np.random.default_rng(i)) for i in range(20)))
    bump = DefectParams("dent", "medium", "round", "none", "bright", "strong")
    assert all(("bump" in p or "bulge" in p) for p in (prompt_for(bump, np.random.default_rng(i)) for i in range(20)))


def test_article_agrees():
    rng = np.random.default_rng(0)
    for _ in range(200):
        prompt = prompt_for(sample_params(rng))
        first = prompt.split()[1]
        assert prompt.startswith("an " if first[0] in "aeiou" else "a "), prompt


params_strategy = st.builds(
    lambda fam, size, shape_i, orient, pol, con, colour, seed: DefectParams(
        family=fam, size=size, shape=FAMILY_SHAPES[fam][shape_i % len(FAMILY_SHAPES[fam])], orientation=orient,
        polarity=pol, contrast=con, colour=colour, count=seed % 5 + 1, amplitude=float(seed)),
    st.sampled_from(FAMILIES), st.sampled_from(SIZES), st.integers(0, 5), st.sampled_from(ORIENTATIONS),
    st.sampled_from(POLARITIES), st.sampled_from(CONTRASTS), st.sampled_from([None, *COLOURS]),
    st.integers(0, 10_000))


@settings(max_examples=200)
@given(params_strategy)
def test_grammar_always_gives_a_valid_prompt(params):
    prompt = prompt_for(params)
    assert 0 < len(prompt) <= MAX_PROMPT_CHARS
    assert normalise_prompt(prompt) == prompt  # grammar output passes user validation unchanged
    assert family_of(prompt) == params.family


@pytest.mark.parametrize("text, family", [
    ("a thin dark scratch", "scratch"),
    ("Scratches all over", "scratch"),
    ("Kratzer, länglich", "scratch"),
    ("a hairline CRACK", "crack"),
    ("small pits", "hole"),
    ("a rusty stain near a scratch", "stain"),
    ("oil contamination", "stain"),
    ("a shallow dent", "dent"),
    ("raised bumps", "dent"),
    ("chipped-off corner", "break"),
    ("missing material at the rim", "break"),
    ("yellowish discolouration", "discoloration"),
    ("frayed fabric border", "fray"),
    ("a short circuit between two tracks", "print_line"),
    ("missing line segment", "print_line"),
    ("a foreign texture patch", "foreign_texture"),
    ("perfectly fine part", None),
    ("spurious", None),  # "spur" must match whole words only
])
def test_family_of(text, family):
    assert family_of(text) == family


def test_normalise_prompt_accepts_and_cleans():
    assert normalise_prompt("  a   thin\tdark\nscratch  ") == "a thin dark scratch"
    assert normalise_prompt("Kratzer, länglich") == "Kratzer, länglich"
    assert normalise_prompt("Kratzer, la\u0308nglich") == "Kratzer, länglich"  # NFC
    assert normalise_prompt("傷 が ある") == "傷 が ある"
    assert normalise_prompt("x" * MAX_PROMPT_CHARS) == "x" * MAX_PROMPT_CHARS


@pytest.mark.parametrize("text, message", [
    ("", "prompt is empty"),
    ("   \t\n ", "prompt is empty"),
    ("x" * 10_000, "limit is 300"),
    ("a scratch\x00", "U\\+0000"),
    ("a \x1b[31mred\x1b[0m scratch", "U\\+001B"),
    ("bell\x07", "U\\+0007"),
    ("del\x7f", "U\\+007F"),
])
def test_normalise_prompt_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        normalise_prompt(text)


def test_normalise_prompt_rejects_non_strings():
    with pytest.raises(TypeError):
        normalise_prompt(None)
