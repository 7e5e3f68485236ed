import math

import pytest
import torch

from qarad.synthesis.aras import (SamplerConfig, apply_cfg, blend, dilate, feather_alpha, filter_logits,
                                  mix_prompts, naive_resample, sample_masked, sample_masked_batch,
                                  token_mask_from_pixels)
from qarad.synthesis.prior import Prior, PriorConfig
from qarad.synthesis.tokenizer import TokenizerConfig, VQTokenizer

G = 6
TINY = PriorConfig(vocab_size=16, grid=G, d_model=32, n_layers=2, n_heads=4, text_dim=8, n_prompt_tokens=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def tiny_prior(seed: int = 0, grid: int = G) -> Prior:
    torch.manual_seed(seed)
    return Prior(PriorConfig(**{**TINY.__dict__, "grid": grid})).eval()


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---- masks -----------------------------------------------------------------------------------
def test_token_mask_from_pixels_hand_computed():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[9, 9] = True  # inside cell (1, 1)
    assert torch.nonzero(token_mask_from_pixels(mask)).tolist() == [[1, 1]]
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8, 8] = True  # dilated by 2: rows/cols 6..10 -> cells 0 and 1
    assert torch.nonzero(token_mask_from_pixels(mask, dilate_px=2)).tolist() == [[0, 0], [0, 1], [1, 0], [1, 1]]
    assert token_mask_from_pixels(torch.zeros(16, 24, dtype=torch.bool)).shape == (2, 3)
    with pytest.raises(ValueError, match="divisible"):
        token_mask_from_pixels(torch.zeros(20, 16, dtype=torch.bool))


def test_token_cells_cover_dilated_mask():
    for seed in range(5):
        mask = torch.rand(48, 40, generator=gen(seed)) < 0.01
        tokens = token_mask_from_pixels(mask, dilate_px=3)
        cover = tokens.repeat_interleave(8, 0).repeat_interleave(8, 1)
        assert not (dilate(mask, 3) & ~cover).any()


def test_feather_alpha_is_one_on_mask_and_zero_outside_dilation():
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[10:14, 12:20] = True
    alpha = feather_alpha(mask, dilate_px=4, feather_px=3)
    assert torch.all(alpha[mask] == 1)
    assert torch.all(alpha[~dilate(mask, 4)] == 0)
    assert torch.all(alpha[dilate(mask, 4)] > 0)
    assert alpha[13, 16] == 1 and alpha[17, 16] == 0.25 and alpha[18, 16] == 0  # 4 and 5 px below


# ---- logits ----------------------------------------------------------------------------------
def test_apply_cfg():
    cond, uncond = torch.randn(3, 16), torch.randn(3, 16)
    assert torch.equal(apply_cfg(cond, uncond, 1.0), cond)
    torch.testing.assert_close(apply_cfg(cond, uncond, 0.0), uncond)
    torch.testing.assert_close(apply_cfg(cond, uncond, 3.0), uncond + 3 * (cond - uncond))


def test_filter_logits_top_k_keeps_exactly_k():
    logits = torch.randn(4, 16)
    logits[0, :5] = 2.0  # ties across the cut
    for k in (1, 3, 7):
        out = filter_logits(logits, top_k=k)
        assert torch.isfinite(out).sum(dim=1).tolist() == [k] * 4
        kept = torch.where(torch.isfinite(out), logits, -math.inf)
        assert torch.equal(kept.max(dim=1).values, logits.max(dim=1).values)
    assert torch.equal(filter_logits(logits), logits)


def test_filter_logits_top_p_smallest_set_reaching_mass():
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    logits = probs.log()
    kept = lambda p: torch.isfinite(filter_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert kept(0.4) == [False, True, False, False]
    assert kept(0.79) == [False, True, False, True]
    assert kept(0.85) == [False, True, True, True]
    assert kept(0.999) == [True, True, True, True]
    assert kept(1.0) == [True] * 4
    both = filter_logits(logits, top_k=1, top_p=0.99)
    assert torch.isfinite(both).sum() == 1


def test_mix_prompts_interpolates_on_the_unit_sphere():
    a, b = unit(torch.randn(8)), unit(torch.randn(8))
    assert torch.equal(mix_prompts(a, b, 0.0), a) and torch.equal(mix_prompts(a, b, 1.0), b)  # bit for bit
    assert abs(float(mix_prompts(a, b, 0.3).norm()) - 1) < 1e-6


# ---- sampling --------------------------------------------------------------------------------
def random_case(seed: int):
    g = gen(seed)
    codes = torch.randint(16, (G, G), generator=g)
    mask = torch.rand(G, G, generator=g) < 0.35
    mask[seed % G, (seed * 2) % G] = True
    return codes, mask, unit(torch.randn(8, generator=g))


def count_calls(monkeypatch, prior):
    calls = {"prefill": [], "decode_step": 0}
    prefill, decode_step = prior.prefill, prior.decode_step

    def counted_prefill(codes, *args):
        calls["prefill"].append(codes.shape[0])
        return prefill(codes, *args)

    def counted_decode(*args):
        calls["decode_step"] += 1
        return decode_step(*args)

    monkeypatch.setattr(prior, "prefill", counted_prefill)
    monkeypatch.setattr(prior, "decode_step", counted_decode)
    return calls


@pytest.mark.parametrize("seed", range(4))
def test_sample_masked_hard_gate_and_step_count(seed, monkeypatch):
    prior = tiny_prior()
    codes, mask, text = random_case(seed)
    calls = count_calls(monkeypatch, prior)
    result = sample_masked(prior, codes, mask, text, SamplerConfig(top_k=8, top_p=0.9), gen(seed))
    M = int(mask.sum())
    assert torch.equal(result.codes[~mask], codes[~mask])
    assert result.codes.shape == codes.shape and result.codes.dtype == torch.long
    assert result.steps == M
    # one prefill chunk for all frozen codes (it also yields code 0), then M - 1 decode calls
    assert calls["prefill"] == [2] and calls["decode_step"] == M - 1  # [cond, null] batch for CFG


def test_batch_of_windows_shares_one_mask(monkeypatch):
    prior = tiny_prior()
    codes, mask, text = random_case(1)
    windows = torch.stack([codes, (codes + 3) % 16, codes])
    calls = count_calls(monkeypatch, prior)
    result = sample_masked_batch(prior, windows, mask, text, SamplerConfig(), gen(0))
    assert result.codes.shape == (3, G, G) and result.steps == int(mask.sum())
    assert torch.equal(result.codes[:, ~mask], windows[:, ~mask])
    assert calls["prefill"] == [6] and calls["decode_step"] == int(mask.sum()) - 1
    assert not torch.equal(result.codes[0], result.codes[2])  # same window, independent draws
    greedy = SamplerConfig(temperature=0.0)  # greedy rows equal the single-window sampler
    batch = sample_masked_batch(prior, windows, mask, text, greedy, gen(0)).codes
    for b in range(3):
        assert torch.equal(batch[b], sample_masked(prior, windows[b], mask, text, greedy, gen(0)).codes)


def test_cfg_scale_one_and_unconditional_use_a_single_row(monkeypatch):
    prior = tiny_prior()
    codes, mask, text = random_case(0)
    calls = count_calls(monkeypatch, prior)
    sample_masked(prior, codes, mask, text, SamplerConfig(cfg_scale=1.0), gen(0))
    sample_masked(prior, codes, mask, None, SamplerConfig(), gen(0))
    assert calls["prefill"] == [1, 1]


def test_empty_mask_returns_input_without_model_calls(monkeypatch):
    prior = tiny_prior()
    codes, _, text = random_case(0)
    calls = count_calls(monkeypatch, prior)
    result = sample_masked(prior, codes, torch.zeros(G, G, dtype=torch.bool), text, SamplerConfig(), gen(0))
    assert torch.equal(result.codes, codes) and result.steps == 0 and calls["prefill"] == []


def test_same_seed_same_codes_different_seed_different_codes():
    prior = tiny_prior()
    codes, _, text = random_case(1)
    mask = torch.ones(G, G, dtype=torch.bool)
    mask[0, 0] = False
    cfg = SamplerConfig(temperature=1.5)
    a = sample_masked(prior, codes, mask, text, cfg, gen(7)).codes
    b = sample_masked(prior, codes, mask, text, cfg, gen(7)).codes
    c = sample_masked(prior, codes, mask, text, cfg, gen(8)).codes
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_greedy_prompt_interpolation_endpoints():
    prior = tiny_prior()
    codes, mask, text = random_case(2)
    text_b = unit(torch.randn(8, generator=gen(99)))
    greedy = SamplerConfig(temperature=0.0)
    plain_b = sample_masked(prior, codes, mask, text_b, greedy, gen(0)).codes
    mixed = sample_masked(prior, codes, mask, text, greedy, gen(0), text_b=text_b, mix=1.0).codes
    assert torch.equal(mixed, plain_b)
    with pytest.raises(ValueError, match="text_b"):
        sample_masked(prior, codes, mask, None, greedy, gen(0), text_b=text_b)


def test_sampling_restores_training_mode_and_keeps_no_graph():
    prior = tiny_prior().train()
    codes, mask, text = random_case(3)
    result = sample_masked(prior, codes, mask, text, SamplerConfig(), gen(0))
    assert prior.training and not result.codes.requires_grad


def test_naive_resample_resamples_every_token():
    prior = tiny_prior(grid=4)
    codes = torch.randint(16, (4, 4), generator=gen(0))
    text = unit(torch.randn(8, generator=gen(1)))
    a = naive_resample(prior, codes, text, SamplerConfig(), gen(3))
    b = naive_resample(prior, codes, text, SamplerConfig(), gen(3))
    assert a.steps == 16 and a.codes.shape == (4, 4)
    assert torch.equal(a.codes, b.codes)
    # greedy: the slow path and the cached sampler (whole grid masked) agree code for code
    greedy = SamplerConfig(temperature=0.0)
    full = torch.ones(4, 4, dtype=torch.bool)
    torch.testing.assert_close(naive_resample(prior, codes, text, greedy, gen(0)).codes,
                               sample_masked(prior, codes, full, text, greedy, gen(0)).codes)


# ---- blending --------------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(5))
def test_blend_is_bit_identical_outside_dilated_mask(seed):
    g = gen(seed)
    original, generated = torch.rand(3, 40, 48, generator=g), torch.rand(3, 40, 48, generator=g)
    mask = torch.rand(40, 48, generator=g) < 0.02
    cfg = SamplerConfig(dilate_px=1 + seed % 4, feather_px=seed % 5, strength=0.5 + 0.1 * seed)
    result = blend(original, generated, mask, cfg)
    outside = ~dilate(mask, cfg.dilate_px)
    assert torch.equal(result.image[:, outside], original[:, outside])
    assert not (result.changed & outside).any()
    assert torch.equal(result.changed, (result.image != original).any(dim=0))
    assert result.changed[mask].all()


def test_blend_strength_zero_and_one():
    original, generated = torch.rand(3, 32, 32), torch.rand(3, 32, 32)
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[8:20, 10:16] = True
    none = blend(original, generated, mask, SamplerConfig(strength=0.0))
    assert torch.equal(none.image, original) and not none.changed.any()
    full = blend(original, generated, mask, SamplerConfig(strength=1.0))
    assert torch.equal(full.image[:, mask], generated[:, mask])


def test_end_to_end_tiny_pipeline_keeps_outside_pixels():
    torch.manual_seed(0)
    tok = VQTokenizer(TokenizerConfig(codebook_size=16, code_dim=8, channels=(8, 16, 16))).eval()
    prior = tiny_prior(grid=4)
    image = torch.rand(3, 32, 32, generator=gen(0))
    mask = torch.zeros(32, 32, dtype=torch.bool)
    mask[12:18, 5:9] = True
    cfg = SamplerConfig()
    tokens = token_mask_from_pixels(mask, dilate_px=cfg.dilate_px)
    with torch.no_grad():
        codes = tok.encode(image[None]).codes[0]
        sample = sample_masked(prior, codes, tokens, unit(torch.randn(8)), cfg, gen(0))
        generated = tok.decode_codes(sample.codes[None])[0]
    result = blend(image, generated, mask, cfg)
    outside = ~dilate(mask, cfg.dilate_px)
    assert sample.steps == int(tokens.sum())
    assert torch.equal(result.image[:, outside], image[:, outside])


def _tiny_pipeline(tmp_path):
    from conftest import make_tiny_aras
    from qarad.synthesis.pipeline import ARAS

    return ARAS.load(make_tiny_aras(tmp_path / "model", window=32))


def test_residual_composite_changes_nothing_where_the_codes_are_kept(tmp_path):
    import numpy as np

    from qarad.synthesis.window import window_cut

    model = _tiny_pipeline(tmp_path)
    image = np.random.default_rng(0).random((48, 40, 3), dtype=np.float32)
    mask = np.zeros((48, 40), bool)
    mask[10:20, 12:22] = True
    cut = window_cut(image, mask, model.policy, model.rule)
    codes = model.tokenizer.encode(cut.window[None], cut.window[None]).codes[0]
    cover, text = torch.zeros(model.window, model.window), torch.zeros(384)
    kept = model._generated(cut, codes, codes, SamplerConfig(composite="residual"), cover, text)
    assert torch.equal(kept, cut.crop.clamp(0, 1))  # the real texture, not the tokenizer's blurry copy
    replaced = model._generated(cut, codes, codes, SamplerConfig(composite="replace"), cover, text)
    assert not torch.allclose(replaced, cut.crop, atol=1e-3)


def test_residual_composite_adds_exactly_the_decoded_change(tmp_path):
    import numpy as np
    import torch.nn.functional as F

    from qarad.synthesis.window import window_cut

    model = _tiny_pipeline(tmp_path)
    image = np.full((32, 32, 3), 0.5, np.float32)
    mask = np.zeros((32, 32), bool)
    mask[8:16, 8:16] = True
    cut = window_cut(image, mask, model.policy, model.rule)
    old = model.tokenizer.encode(cut.window[None], cut.window[None]).codes[0]
    new = (old + 1) % model.tokenizer.config.codebook_size
    with torch.no_grad():
        d = model.tokenizer.decode_codes(torch.stack([new, old]), cut.window[None].expand(2, -1, -1, -1))
    delta = F.interpolate(d[:1] - d[1:], size=cut.crop.shape[-2:], mode="bilinear", align_corners=False)[0]
    out = model._generated(cut, old, new, SamplerConfig(composite="residual"), torch.zeros(32, 32), torch.zeros(384))
    assert torch.allclose(out, (cut.crop + delta).clamp(0, 1), atol=1e-6)


@pytest.mark.parametrize("conditioned", [True, False])
def test_synthesize_keeps_outside_pixels_with_either_tokenizer(tmp_path, conditioned):
    """Source-conditioned (opt-in) and unconditioned (the default) tokenizers both write a change,
    and only inside the dilated mask."""
    from conftest import assert_synthesizes_locally, make_tiny_aras
    from qarad.synthesis.pipeline import ARAS

    model = ARAS.load(make_tiny_aras(tmp_path / "model", window=32, refiner=False, source_conditioned=conditioned))
    assert model.tokenizer.config.source_conditioned is conditioned
    assert assert_synthesizes_locally(model, (40, 56), (14, 20, 22, 30), seed=1).mask.any()


def test_unknown_composite_is_refused():
    with pytest.raises(ValueError, match="composite"):
        SamplerConfig(composite="paste")


def test_a_prior_that_does_not_match_the_tokenizer_is_refused(tmp_path):
    from dataclasses import asdict

    from conftest import make_tiny_aras
    from qarad import checkpoint
    from qarad.synthesis.pipeline import ARAS

    folder = make_tiny_aras(tmp_path / "model", window=32)
    other = PriorConfig(**{**checkpoint.load_config(folder / "prior"), "vocab_size": 32})
    checkpoint.save(folder / "prior", Prior(other).state_dict(), asdict(other))
    with pytest.raises(checkpoint.CheckpointError, match="prior.json: vocabulary 32 does not match"):
        ARAS.load(folder)


# ---- continuous control on whole images: prompt interpolation and strength --------------------
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    from conftest import make_tiny_aras
    from qarad.synthesis.pipeline import ARAS

    model = ARAS.load(make_tiny_aras(tmp_path_factory.mktemp("control") / "model", window=32))
    with torch.no_grad():  # random weights barely hear the prompt; make it decide the codes and the refiner
        model.prior.prompt_proj.weight.mul_(30.0)
        for name, p in model.refiner.named_parameters():
            if ".film." in name:
                p.normal_(0, 0.3, generator=gen(1))
    return model


def _image_and_mask():
    import numpy as np

    image = np.random.default_rng(3).random((48, 40, 3), dtype=np.float32)
    mask = np.zeros((48, 40), bool)
    mask[12:24, 10:22] = True
    return image, mask


@pytest.mark.parametrize("seed", [0, 5])
def test_mix_endpoints_are_the_single_prompts_with_the_same_seed(tiny_model, seed):
    import numpy as np

    image, mask = _image_and_mask()
    a, b = "a thin dark scratch", "a large bright stain"
    alone_a = tiny_model.synthesize(image, mask, a, seed)  # default sampler: temperature 0.5, CFG 4, refiner
    alone_b = tiny_model.synthesize(image, mask, b, seed)
    at_0 = tiny_model.synthesize(image, mask, a, seed, prompt_b=b, mix=0.0)
    at_1 = tiny_model.synthesize(image, mask, a, seed, prompt_b=b, mix=1.0)
    assert np.array_equal(at_0.image, alone_a.image) and np.array_equal(at_0.mask, alone_a.mask)
    assert np.array_equal(at_1.image, alone_b.image) and np.array_equal(at_1.mask, alone_b.mask)
    assert not np.array_equal(alone_a.image, alone_b.image)  # the prompt matters to this model


def test_strength_zero_leaves_the_image_unchanged_and_strength_scales_the_change(tiny_model):
    import numpy as np

    image, mask = _image_and_mask()
    none = tiny_model.synthesize(image, mask, "a thin dark scratch", 1, SamplerConfig(strength=0.0))
    assert np.array_equal(none.image, image) and not none.mask.any()
    change = {s: np.abs(tiny_model.synthesize(image, mask, "a thin dark scratch", 1, SamplerConfig(strength=s)).image
                        - image)[mask].mean() for s in (0.25, 0.5, 1.0)}
    assert 0 < change[0.25] < change[0.5] < change[1.0]  # same seed, same codes: only the blend weakens


def test_synthesize_refuses_a_mix_out_of_range_or_without_prompt_b(tiny_model):
    image, mask = _image_and_mask()
    with pytest.raises(ValueError, match="needs prompt_b"):
        tiny_model.synthesize(image, mask, "a scratch", 0, mix=0.5)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        tiny_model.synthesize(image, mask, "a scratch", 0, prompt_b="a hole", mix=1.5)


def test_strength_outside_zero_one_is_refused():
    with pytest.raises(ValueError, match="strength"):
        SamplerConfig(strength=1.2)
