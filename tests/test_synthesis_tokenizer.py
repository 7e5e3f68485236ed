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


COND = TokenizerConfig(codebook_size=16, code_dim=8, channels=(8, 16, 16), source_conditioned=True)


def test_source_conditioned_tokenizer_needs_a_matching_source():
    tok = VQTokenizer(COND)
    x = images()
    with pytest.raises(ValueError, match="source-conditioned: pass the normal source"):
        tok.encode(x)
    with pytest.raises(ValueError, match="must have the images' shape"):
        tok.encode(x, x[:1])
    codes = tok.encode(x, x).codes
    with pytest.raises(ValueError, match="source-conditioned"):
        tok.decode_codes(codes)
    with pytest.raises(ValueError, match=r"must have the images' shape \(2, 3, 32, 48\)"):
        tok.decode_codes(codes, images(h=16))


def test_unconditioned_tokenizer_ignores_a_source():
    tok = tiny_tokenizer().eval()
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(tok(x, torch.zeros_like(x)).recon, tok(x).recon)


def test_fresh_source_conditioned_decoder_draws_the_source_and_learns_a_change():
    """It starts as the identity on the source whatever the codes (zero head), and a few steps on
    one defect teach it to draw the change: gradients reach the source pyramid too."""
    torch.manual_seed(0)
    tok = VQTokenizer(COND)
    source = images(b=1, h=32, w=32)
    defect = source.clone()
    defect[:, :, 8:20, 10:16] = 0.05  # a dark blot
    with torch.no_grad():
        out = tok(defect, source).recon
    assert (out - source).abs().max() < 2e-3  # SOURCE_EPS clamps 0 / 1 in the logit
    opt = torch.optim.Adam(tok.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        out = tok(defect, source)
        loss = (out.recon - defect).abs().mean() + out.vq_loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float((out.recon - defect).abs().mean()))
    assert losses[-1] < 0.5 * losses[0]
    assert any(float(p.abs().sum()) > 0 for p in tok.decoder.source.proj.parameters())


def test_edit_keeps_the_source_codes_outside_the_edited_tokens():
    """What synthesis decodes: the images' codes under the mask, the source's own codes elsewhere."""
    torch.manual_seed(0)
    tok = VQTokenizer(COND).eval()
    source, x = images(b=2, h=32, w=32, seed=1), images(b=2, h=32, w=32, seed=2)
    edit = torch.zeros(2, 4, 4, dtype=torch.bool)
    edit[0, 1:3, 1:3] = True
    with torch.no_grad():
        mixed, whole = tok(x, source, edit), tok(x, source)
        assert torch.equal(tok(x, source, torch.ones_like(edit)).recon, whole.recon)
        own, kept = tok.encode(x, source).codes, tok.encode(source, source).codes
        assert torch.equal(mixed.codes, torch.where(edit, own, kept))
        z = torch.where(edit[:, None], tok.codes_to_latents(own), tok.codes_to_latents(kept))
        torch.testing.assert_close(mixed.recon, tok.decode(z, source))


# --- EMA codebook (TokenizerConfig.ema_decay) ---------------------------------------------------
EMA = TokenizerConfig(codebook_size=16, code_dim=8, channels=(8, 16, 16), ema_decay=0.9)


def test_without_ema_the_codebook_is_trained_by_its_loss_and_has_no_ema_state():
    tok = tiny_tokenizer()
    assert not any(k.startswith("ema_") for k in tok.state_dict())  # tokenizers saved before EMA existed fit
    q = tok.encode(images())
    z_q = tok.codes_to_latents(q.codes)
    torch.testing.assert_close(q.loss, F.mse_loss(z_q, q.z_e) + TINY.beta * F.mse_loss(q.z_e, z_q), rtol=0, atol=0)
    q.loss.backward()
    assert tok.codebook.weight.grad is not None and float(tok.codebook.weight.grad.abs().sum()) > 0
    with pytest.raises(ValueError, match="needs an EMA codebook"):
        tok.ema_update(q.z_e, q.codes)


def test_ema_codebook_takes_no_gradient_only_the_commitment_loss():
    torch.manual_seed(0)
    tok = VQTokenizer(EMA)
    out = tok(images())
    z_q = tok.codes_to_latents(out.codes)
    torch.testing.assert_close(out.vq_loss, EMA.beta * F.mse_loss(out.z_e, z_q), rtol=0, atol=0)
    ((out.recon - images()).abs().mean() + out.vq_loss).backward()
    assert tok.codebook.weight.grad is None and not tok.codebook.weight.requires_grad
    assert all(p.grad is not None for p in tok.encoder.parameters())  # the commitment still trains the encoder


def test_ema_update_follows_the_hand_computed_averages():
    torch.manual_seed(0)
    tok = VQTokenizer(EMA)
    q = tok.encode(images())
    start = tok.normalized_codebook().detach().clone()
    assert torch.equal(tok.ema_cluster_size, torch.ones(16)) and torch.equal(tok.ema_embed_sum, start)
    flat, codes = q.z_e.detach().permute(0, 2, 3, 1).reshape(-1, 8), q.codes.reshape(-1)
    counts = torch.bincount(codes, minlength=16).float()
    sums = torch.zeros(16, 8).index_add_(0, codes, flat)
    tok.ema_update(q.z_e, q.codes)
    size = 0.9 * torch.ones(16) + 0.1 * counts
    embed = 0.9 * start + 0.1 * sums
    torch.testing.assert_close(tok.ema_cluster_size, size)
    torch.testing.assert_close(tok.ema_embed_sum, embed)
    n = size.sum()
    torch.testing.assert_close(tok.codebook.weight, embed / ((size + 1e-5) / (n + 16 * 1e-5) * n)[:, None])
    # an unused code keeps its direction; a used one turns towards the mean of its outputs
    used = counts > 0
    torch.testing.assert_close(tok.normalized_codebook()[~used], start[~used])
    mean = F.normalize(sums[used], dim=1)
    assert torch.all((tok.normalized_codebook()[used] * mean).sum(1) > (start[used] * mean).sum(1))


def test_repeated_ema_updates_converge_to_the_mean_of_the_assigned_outputs():
    torch.manual_seed(0)
    tok = VQTokenizer(EMA)
    z_e = F.normalize(torch.randn(2, 8, 4, 6, generator=torch.Generator().manual_seed(1)), dim=1)
    codes = torch.arange(48).view(2, 4, 6) % 3  # codes 0, 1, 2: 16 outputs each
    for _ in range(300):
        tok.ema_update(z_e, codes)
    flat = z_e.permute(0, 2, 3, 1).reshape(-1, 8)
    means = torch.stack([flat[codes.reshape(-1) == k].mean(0) for k in range(3)])
    torch.testing.assert_close(tok.codebook.weight[:3], means, atol=1e-4, rtol=1e-3)


def test_ema_update_sums_the_statistics_of_every_process():
    """Two processes holding the same half-batch, summed by `all_sum`, move the codebook as one
    process holding both halves."""
    torch.manual_seed(0)
    one, two = VQTokenizer(EMA), VQTokenizer(EMA)
    two.load_state_dict(one.state_dict())
    q = one.encode(images())
    one.ema_update(torch.cat([q.z_e, q.z_e]), torch.cat([q.codes, q.codes]))
    two.ema_update(q.z_e, q.codes, all_sum=lambda t: 2 * t)
    for k, v in one.state_dict().items():
        torch.testing.assert_close(two.state_dict()[k], v, msg=k)


def test_restarted_codes_start_their_ema_over_from_the_new_vector():
    torch.manual_seed(0)
    tok = VQTokenizer(EMA)
    q = tok.encode(images())
    tok.ema_update(q.z_e, q.codes)
    usage = tok.code_usage(q.codes)
    dead = usage < 1
    size, embed = tok.ema_cluster_size.clone(), tok.ema_embed_sum.clone()
    assert tok.restart_dead_codes(q.z_e, usage, generator=torch.Generator().manual_seed(0)) == int(dead.sum()) > 0
    assert torch.equal(tok.ema_embed_sum[dead], tok.codebook.weight[dead])  # the (unit) restarted vectors
    assert torch.all(tok.ema_cluster_size[dead] == 1.0)
    assert torch.equal(tok.ema_cluster_size[~dead], size[~dead]) and torch.equal(tok.ema_embed_sum[~dead], embed[~dead])
    # the next update starts from them: a restarted code nobody picks keeps its new vector's direction
    restarted = tok.codebook.weight[dead].clone()
    tok.ema_update(q.z_e, torch.full_like(q.codes, int(torch.nonzero(~dead)[0])))
    torch.testing.assert_close(tok.normalized_codebook()[dead], restarted)


def test_ema_decay_must_be_below_one():
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        TokenizerConfig(ema_decay=1.0)
