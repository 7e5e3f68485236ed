import pytest
import torch
import torch.nn.functional as F

from qarad.synthesis.tokenizer import TokenizerConfig, VQTokenizer

TINY = TokenizerConfig(codebook_size=16, code_dim=8, channels=(8, 16, 16), res_blocks=1)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def tiny_tokenizer(seed: int = 0) -> VQTokenizer:
    torch.manual_seed(seed)
    return VQTokenizer(TINY)


def images(b=2, h=32, w=48, seed=0):
    return torch.rand(b, 3, h, w, generator=torch.Generator().manual_seed(seed))


def test_shapes_and_factor_8():
    tok = tiny_tokenizer()
    x = images()
    q = tok.encode(x)
    assert TINY.factor == 8
    assert q.codes.shape == (2, 4, 6) and q.codes.dtype == torch.long
    assert q.z_q.shape == q.z_e.shape == (2, 8, 4, 6)
    assert q.loss.dim() == 0 and torch.isfinite(q.loss)
    assert 1.0 <= float(q.perplexity) <= TINY.codebook_size + 1e-4
    out = tok(x)
    assert out.recon.shape == x.shape
    assert out.recon.min() >= 0 and out.recon.max() <= 1
    assert torch.equal(out.codes, q.codes)


def test_rejects_size_not_divisible_by_8():
    with pytest.raises(ValueError, match="divisible by 8"):
        tiny_tokenizer().encode(torch.rand(1, 3, 30, 32))


def test_codes_are_nearest_by_cosine_and_unit_length():
    tok = tiny_tokenizer()
    q = tok.encode(images())
    assert torch.allclose(q.z_q.norm(dim=1), torch.ones(2, 4, 6), atol=1e-5)
    sims = torch.einsum("bdhw,kd->bkhw", q.z_e, tok.normalized_codebook())
    assert torch.equal(sims.argmax(dim=1), q.codes)


def test_straight_through_gradient_reaches_encoder():
    tok = tiny_tokenizer()
    out = tok(images())
    out.recon.mean().backward()  # no vq_loss: the only path to the encoder is the straight-through z_q
    grads = [p.grad for p in tok.encoder.parameters()]
    assert all(g is not None for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_decode_codes_matches_decode_of_z_q():
    tok = tiny_tokenizer().eval()
    x = images()
    with torch.no_grad():
        q = tok.encode(x)
        a, b = tok.decode_codes(q.codes), tok.decode(q.z_q)
    assert a.shape == x.shape
    assert torch.allclose(a, b, atol=1e-5)


def test_restart_dead_codes_reseeds_only_unused_entries():
    tok = tiny_tokenizer()
    q = tok.encode(images())
    usage = tok.code_usage(q.codes)
    assert int(usage.sum()) == q.codes.numel()
    before = tok.codebook.weight.detach().clone()
    n = tok.restart_dead_codes(q.z_e, usage, generator=torch.Generator().manual_seed(0))
    dead = usage < 1
    assert n == int(dead.sum()) > 0
    after = tok.codebook.weight.detach()
    assert torch.equal(after[~dead], before[~dead])
    samples = q.z_e.permute(0, 2, 3, 1).reshape(-1, TINY.code_dim)
    # every restarted code is (the unit version of) one of the encoder outputs
    dist = (after[dead][:, None] - F.normalize(samples, dim=1)[None]).norm(dim=-1)  # (dead, N)
    assert float(dist.min(dim=1).values.max().detach()) < 1e-5
    assert tok.restart_dead_codes(q.z_e, torch.ones(TINY.codebook_size, dtype=torch.long)) == 0
    with torch.no_grad():
        torch.testing.assert_close(tok.encode_continuous(images()), q.z_e)


def test_vq_training_step_reduces_loss():
    tok = tiny_tokenizer()
    x = images(b=2, h=16, w=16)
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(15):
        out = tok(x)
        total = (out.recon - x).abs().mean() + out.vq_loss
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(total.item())
    assert losses[-1] < losses[0]


def test_default_size_is_about_2_to_3_million_parameters():
    n = sum(p.numel() for p in VQTokenizer(TokenizerConfig()).parameters())
    assert 2.0e6 <= n <= 3.0e6
