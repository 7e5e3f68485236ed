"""The ARAS sampler's settings (aras.py samples with them), torch-free: `qarad synth` builds its
flags from these fields (flags.py) without importing torch, and passes them on to its workers;
`check_mix` checks its prompt interpolation (--prompt-b, --mix), which is not a field: it names a prompt."""
from __future__ import annotations

from dataclasses import dataclass

from ..flags import check_float, check_int, flag, non_negative_int

COMPOSITES = ("replace", "residual", "grain")


@dataclass(frozen=True)
class SamplerConfig:
    # Defaults chosen by language control (benchmarks/synthesis.py, magnetic tile, 180 prompts):
    # a code's entropy is mostly material texture, so at temperature 1 the prompt decides little
    # of each draw; cooler draws with more guidance keep the prompted type (top-1 0.41 at T 1 /
    # CFG 3, 0.46 at T 0.7 / CFG 6, 0.48 at T 0.5 / CFG 4, 0.47 at T 0.3 / CFG 2, 0.38 unguided).
    # Cooler still (T 0.3, greedy) gained 0.02 on another model and costs diversity.
    cfg_scale: float = flag(4.0, "classifier-free guidance (1 = off; default 4)")  # 0 = unconditional
    temperature: float = flag(0.5, "sampling temperature (0 = greedy; default 0.5: cooler draws keep the "
                                   "prompted type)")  # <= 0 means greedy (argmax)
    top_k: int = flag(0, parse=non_negative_int)  # 0 = off
    top_p: float = flag(1.0)  # 1 = off
    strength: float = flag(1.0, "0..1 blend strength of the new defect (default 1)")  # multiplies the blending alpha
    dilate_px: int = 4
    feather_px: int = 3
    # "replace": paste the decoded window (the paper's decode-and-blend). "residual": add
    # decode(new codes) - decode(old codes) to the source pixels, keeping the real texture where the
    # prior kept the material. Replace is the default: on the demo's grass a detector trained on
    # replace samples scored AUPRO 0.70 vs 0.40 with residual ones (same model and settings).
    # "grain": the decode's low frequencies with the real material's grain (composite.py): the
    # source's, or a donor patch's where the defect removes material, its gain set by the family.
    composite: str = flag("replace", "replace: paste the decoded window; residual: add only the decoded change to "
                          "the real pixels (keeps texture, subtler defects); grain: the decode's low frequencies "
                          "with the real material's grain (default replace)", COMPOSITES)
    # pass decoded windows through the model's refiner (replace and grain composites, models that have one)
    refine: bool = flag(True, "paste decoded codes as they are, without the model's refiner")

    def __post_init__(self):
        # every number finite: a nan temperature or guidance scale turns every logit into nan
        check_float("--cfg-scale", self.cfg_scale)
        check_float("--temperature", self.temperature, 0.0)  # 0 = greedy; below it is meaningless
        check_int("--top-k", self.top_k, 0)
        check_float("--top-p", self.top_p, 0.0, 1.0, low_open=True)  # 0 would filter out every code
        check_int("dilate_px", self.dilate_px, 0)
        check_int("feather_px", self.feather_px, 0)
        if not isinstance(self.refine, bool):
            raise ValueError(f"refine must be true or false, got {self.refine!r}")
        if self.composite not in COMPOSITES:
            raise ValueError(f"composite must be one of {', '.join(COMPOSITES)}, got {self.composite!r}")
        if not 0.0 <= self.strength <= 1.0:  # also refuses nan
            raise ValueError(f"--strength must be in [0, 1] (0 leaves the image as it is), got {self.strength:g}")


def check_mix(prompt_b: str | None, mix: float | None) -> None:
    """Prompt interpolation (`qarad synth --prompt-b TEXT --mix F`) is given whole or not at all:
    each sample is drawn with the embedding (1 - mix) * its prompt + mix * prompt_b, renormalised."""
    if mix is not None and prompt_b is None:
        raise ValueError(f"--mix {mix:g} needs --prompt-b TEXT: the mix interpolates from each prompt towards it")
    if prompt_b is not None and mix is None:
        raise ValueError("--prompt-b needs --mix F in [0, 1] (0: the prompt alone, 1: --prompt-b alone)")
    if mix is not None and not 0.0 <= mix <= 1.0:  # also refuses nan
        raise ValueError(f"--mix must be in [0, 1] (0: the prompt alone, 1: --prompt-b alone), got {mix:g}")
