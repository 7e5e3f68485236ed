import torch

from qarad.text import TEXT_DIM, TextEncoder


def test_minilm_embeds_offline_and_ranks_meaning():
    enc = TextEncoder()
    e = enc.encode(["a thin dark scratch", "a long narrow scratch mark", "a round hole", "a thin dark scratch"])
    assert e.shape == (4, TEXT_DIM)
    assert torch.allclose(e.norm(dim=1), torch.ones(4), atol=1e-5)
    assert torch.equal(e[0], e[3])  # cached and deterministic
    assert e[0] @ e[1] > e[0] @ e[2]  # a scratch is closer to a scratch than to a hole
