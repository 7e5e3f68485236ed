import pytest
import torch

from qarad.synthesis.prior import Prior, PriorConfig, attention_mask, loss, masked_positions

G = 6
TINY = PriorConfig(vocab_size=16, grid=G, d_model=32, n_layers=2, n_heads=4, text_dim=8, n_prompt_tokens=2)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def tiny_prior(seed: int = 0) -> Prior:
    torch.manual_seed(seed)
    return Prior(TINY).eval()


def grid_mask(*cells) -> torch.Tensor:
    m = torch.zeros(G, G, dtype=torch.bool)
    for r, c in cells:
        m[r, c] = True
    return m


def block_mask(r0, r1, c0, c1) -> torch.Tensor:
    m = torch.zeros(G, G, dtype=torch.bool)
    m[r0:r1, c0:c1] = True
    return m


MASKS = {
    "block": block_mask(1, 4, 2, 5),
    "non_contiguous": grid_mask((0, 5), (2, 1), (2, 4), (5, 0), (5, 5)),
    "single": grid_mask((3, 3)),
    "last_cell": grid_mask((5, 5)),
    "full": torch.ones(G, G, dtype=torch.bool),
    "random": torch.rand(G, G, generator=torch.Generator().manual_seed(3)) < 0.4,
}


def test_masked_positions_raster_order_and_padding():
    mask = torch.stack([grid_mask((2, 1), (0, 3)), grid_mask((1, 1))]).view(2, -1)
    positions, valid = masked_positions(mask)
    assert positions[0].tolist() == [3, 13]
    assert positions[1, 0] == 7
    assert valid.tolist() == [[True, True], [True, False]]


def test_attention_mask_prefix_bidirectional_stream_causal():
    m = attention_mask(prefix=3, total=6)
    assert m[:3, :3].all() and not m[:3, 3:].any()  # prefix never sees the generated stream
    assert m[3:, :3].all()
    assert torch.equal(m[3:, 3:], torch.ones(3, 3, dtype=torch.bool).tril())


def test_forward_shapes_and_targets_with_padding():
    prior = tiny_prior()
    codes = torch.randint(16, (3, G, G), generator=torch.Generator().manual_seed(0))
    mask = torch.stack([MASKS["block"], MASKS["single"], MASKS["non_contiguous"]])
    out = prior(codes, mask, torch.randn(3, 8))
    assert out.logits.shape == (3, 9, 16)
    assert out.valid.sum(dim=1).tolist() == [9, 1, 5]
    for b in range(3):
        n = int(out.valid[b].sum())
        assert torch.equal(out.target[b, :n], codes[b][mask[b]])  # raster order == boolean indexing order


@pytest.mark.parametrize("name", sorted(MASKS))
@pytest.mark.parametrize("prompt", ["text", "none", "dropped"])
def test_cached_decoding_matches_teacher_forced_forward(name, prompt):
    prior = tiny_prior()
    gen = torch.Generator().manual_seed(1)
    B = 2
    codes = torch.randint(16, (B, G, G), generator=gen)
    mask = MASKS[name].expand(B, G, G)
    text = None if prompt == "none" else torch.randn(B, 8, generator=gen)
    drop = torch.tensor([True, False]) if prompt == "dropped" else None
    with torch.no_grad():
        ref = prior(codes, mask, text, drop)
        logits, cache = prior.prefill(codes, mask, text, drop)
        positions = ref.positions[0]
        steps = [logits]
        for j in range(1, positions.numel()):
            prev = ref.target[:, j - 1]
            logits, cache = prior.decode_step(prev, positions[j - 1], positions[j], cache)
            steps.append(logits)
    assert cache.length == cache.capacity == prior.prefix_len + positions.numel()
    torch.testing.assert_close(torch.stack(steps, dim=1), ref.logits, atol=1e-5, rtol=0)


def test_batch_with_different_mask_counts_matches_per_sample_cached_runs():
    prior = tiny_prior(1)
    codes = torch.randint(16, (3, G, G), generator=torch.Generator().manual_seed(2))
    mask = torch.stack([MASKS["random"], MASKS["single"], MASKS["non_contiguous"]])
    text = torch.randn(3, 8)
    with torch.no_grad():
        ref = prior(codes, mask, text)
        for b in range(3):
            logits, cache = prior.prefill(codes[b:b + 1], mask[b:b + 1], text[b:b + 1])
            pos = ref.positions[b]
            torch.testing.assert_close(logits[0], ref.logits[b, 0], atol=1e-5, rtol=0)
            for j in range(1, int(ref.valid[b].sum())):
                logits, cache = prior.decode_step(ref.target[b, j - 1:j], pos[j - 1], pos[j], cache)
                torch.testing.assert_close(logits[0], ref.logits[b, j], atol=1e-5, rtol=0)


def test_context_below_and_right_of_mask_informs_first_token():
    prior = tiny_prior()
    codes = torch.randint(16, (1, G, G), generator=torch.Generator().manual_seed(4))
    mask = block_mask(1, 3, 1, 3)[None]  # masked block in the upper left
    changed = codes.clone()
    changed[0, 5, 5] = (codes[0, 5, 5] + 1) % 16  # frozen token below and right of every masked one
    text = torch.randn(1, 8)
    with torch.no_grad():
        a, _ = prior.prefill(codes, mask, text)
        b, _ = prior.prefill(changed, mask, text)
        tf_a, tf_b = prior(codes, mask, text).logits[:, 0], prior(changed, mask, text).logits[:, 0]
    assert (a - b).abs().max() > 1e-4
    assert (tf_a - tf_b).abs().max() > 1e-4
    # masked codes themselves are blanked: changing one does not move the first step
    hidden = codes.clone()
    hidden[0, 1, 1] = (codes[0, 1, 1] + 1) % 16
    with torch.no_grad():
        c, _ = prior.prefill(hidden, mask, text)
    torch.testing.assert_close(a, c, atol=1e-6, rtol=0)


def test_null_prompt_equals_dropped_prompt():
    prior = tiny_prior()
    codes = torch.randint(16, (2, G, G))
    mask = MASKS["block"].expand(2, G, G)
    with torch.no_grad():
        a = prior(codes, mask, None).logits
        b = prior(codes, mask, torch.randn(2, 8), torch.tensor([True, True])).logits
    torch.testing.assert_close(a, b, atol=1e-6, rtol=0)
    assert prior.null_prompt(3).shape == (3, TINY.n_prompt_tokens, TINY.d_model)


def test_prefill_and_decode_guard_their_preconditions():
    prior = tiny_prior()
    codes = torch.randint(16, (2, G, G))
    with pytest.raises(ValueError, match="same, non-zero"):
        prior.prefill(codes, torch.stack([MASKS["single"], MASKS["block"]]))
    with pytest.raises(ValueError, match="same, non-zero"):
        prior.prefill(codes, torch.zeros(2, G, G, dtype=torch.bool))
    with pytest.raises(ValueError, match="shape"):
        prior(codes[:, :4, :4], MASKS["single"][:4, :4].expand(2, 4, 4))
    _, cache = prior.prefill(codes[:1], MASKS["single"][None])
    with pytest.raises(ValueError, match="full"):
        prior.decode_step(codes[:1, 0, 0], 0, 1, cache)


def test_no_masked_tokens_gives_empty_output_and_zero_loss():
    out = tiny_prior()(torch.randint(16, (2, G, G)), torch.zeros(2, G, G, dtype=torch.bool))
    assert out.logits.shape == (2, 0, 16)
    assert float(loss(out)) == 0.0


def test_loss_ignores_padding():
    prior = tiny_prior()
    codes = torch.randint(16, (2, G, G))
    out = prior(codes, torch.stack([MASKS["block"], MASKS["single"]]), torch.randn(2, 8))
    out.logits = out.logits.detach().clone()
    before = loss(out)
    out.logits[1, 1:] += 100 * torch.randn_like(out.logits[1, 1:])  # padding of sample 1 only
    torch.testing.assert_close(loss(out), before)


def test_overfit_constant_code_under_prompt():
    torch.manual_seed(0)
    prior = Prior(TINY).train()
    opt = torch.optim.AdamW(prior.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    text = torch.nn.functional.normalize(torch.randn(1, 8, generator=gen), dim=1).expand(4, 8)
    losses = []
    for _ in range(50):
        codes = torch.randint(16, (4, G, G), generator=gen)
        mask = torch.rand(4, G, G, generator=gen) < 0.3
        codes = torch.where(mask, 7, codes)  # the prompt's "defect" is always code 7
        value = loss(prior(codes, mask, text))
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert losses[0] > 2.0  # ~log(16) at initialisation
    assert sum(losses[-5:]) / 5 < 0.3
