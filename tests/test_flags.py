"""Config fields as CLI flags: the synth parser, SamplerConfig and a worker's argv are one definition."""
import dataclasses

import pytest

from qarad import flags
from qarad.cli import main_parser
from qarad.synthesis.sampler_config import SamplerConfig

BASE = ["synth", "model", "--images", "a.png", "--prompts", "a stain", "--out", "out"]
OTHER = SamplerConfig(cfg_scale=2.5, temperature=0.0, top_k=7, top_p=0.9, strength=0.6, composite="residual",
                      refine=False)


def test_every_flag_field_of_the_sampler_is_a_synth_flag_and_round_trips_through_a_worker_argv():
    parser = main_parser()
    assert flags.from_args(SamplerConfig, parser.parse_args(BASE)) == SamplerConfig()
    assert flags.from_args(SamplerConfig, parser.parse_args(BASE + flags.to_argv(OTHER))) == OTHER
    flagged = {f.name for f in dataclasses.fields(SamplerConfig) if flags.FLAG in f.metadata}
    assert {f.name for f in dataclasses.fields(SamplerConfig)} - flagged == {"dilate_px", "feather_px"}
    assert flags.to_argv(SamplerConfig()).count("--no-refine") == 0 and "--no-refine" in flags.to_argv(OTHER)


def test_a_bool_flag_must_default_to_true():
    @dataclasses.dataclass(frozen=True)
    class Bad:
        shown: bool = flags.flag(False)

    import argparse

    with pytest.raises(TypeError, match="default to True"):
        flags.add_flags(argparse.ArgumentParser(), Bad)


def test_prompt_b_mix_and_strength_parse():
    args = main_parser().parse_args(BASE + ["--prompt-b", "a round hole", "--mix", "0.25", "--strength", "0.5"])
    assert (args.prompt_b, args.mix) == ("a round hole", 0.25)
    assert flags.from_args(SamplerConfig, args).strength == 0.5
    plain = main_parser().parse_args(BASE)
    assert plain.prompt_b is None and plain.mix is None  # no interpolation unless asked for
    with pytest.raises(SystemExit):
        main_parser().parse_args(BASE + ["--mix", "half"])


def test_the_cli_and_the_policy_bound_the_working_size_alike():
    from qarad.data.resolution import MAX_SIZE
    from qarad.flags import MAX_WORKING_SIZE

    assert MAX_SIZE == MAX_WORKING_SIZE
