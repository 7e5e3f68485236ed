"""Procedural defects: renderer, prompt grammar, mask proposals, the fitting corpus and the
synthesis baselines (DESIGN 4.1)."""
from .baselines import perlin_texture, procedural
from .corpus import CorpusConfig, CorpusSample, iter_corpus, make_sample
from .masks import FAMILY_MASK_KIND, MASK_KINDS, dilate, feather, foreground_mask, propose_mask
from .prompts import family_of, normalise_prompt, prompt_for
from .renderer import FAMILIES, DefectParams, Rendered, render, sample_params

__all__ = ["FAMILIES", "DefectParams", "Rendered", "render", "sample_params", "prompt_for", "family_of",
           "normalise_prompt", "foreground_mask", "propose_mask", "dilate", "feather", "FAMILY_MASK_KIND",
           "MASK_KINDS", "CorpusConfig", "CorpusSample", "make_sample", "iter_corpus", "procedural",
           "perlin_texture"]
