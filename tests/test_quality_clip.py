import json
import socket

import pytest
import torch

from qarad.quality.clip_scorer import CLIPScorer, region_crop_box


def _byte_alphabet() -> list[str]:
    """GPT-2/CLIP byte-level alphabet: the 256 printable stand-ins for the bytes 0..255."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in printable]
    return [chr(c) for c in printable] + [chr(256 + i) for i in range(len(extra))]


def write_tiny_clip(folder) -> None:
    """A randomly initialised CLIP with a byte-level BPE tokenizer (no merges), saved offline."""
    from transformers import CLIPConfig, CLIPModel, CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for suffix in ("", "</w>"):  # every byte, inside a word and at its end
        for ch in _byte_alphabet():
            vocab[ch + suffix] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.save_pretrained(folder)
    torch.manual_seed(0)
    text = dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                num_attention_heads=2, max_position_embeddings=24, bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    vision = dict(image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                  num_attention_heads=2)
    CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.5] * 3, "image_std": [0.25] * 3}))


@pytest.fixture(scope="module")
def clip_dir(tmp_path_factory):
    pytest.importorskip("transformers")
    folder = tmp_path_factory.mktemp("tiny_clip")
    write_tiny_clip(folder)
    return folder


@pytest.fixture
def offline(monkeypatch):
    """Hub offline, and any socket connection fails: loading must not touch the network."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def refuse(*args, **kwargs):
        raise OSError("network access attempted in an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)


def test_crop_box_is_square_with_context_and_inside_the_image():
    mask = torch.zeros(100, 200)
    mask[40:60, 150:190] = 1  # 20 x 40 region near the right edge
    y0, y1, x0, x1 = region_crop_box(mask)
    assert y1 - y0 == x1 - x0 == 60  # 1.5 x the longer side
    assert 0 <= y0 and y1 <= 100 and 0 <= x0 and x1 <= 200 and x0 <= 150 and x1 >= 190
    assert region_crop_box(torch.zeros(50, 70)) == (0, 50, 0, 70)  # no region: whole image
    tiny = torch.zeros(64, 64)
    tiny[10, 10] = 1
    assert region_crop_box(tiny)[1] - region_crop_box(tiny)[0] == 32  # at least MIN_CROP


def test_tiny_clip_loads_offline_and_scores_in_range(clip_dir, offline):
    scorer = CLIPScorer.from_directory(clip_dir)
    assert torch.allclose(scorer.mean, torch.full((1, 3, 1, 1), 0.5))  # read from preprocessor_config.json
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 64, 80, generator=g)
    masks = torch.zeros(3, 64, 80)
    masks[0, 10:30, 10:20] = 1
    masks[1, 40:64, 60:80] = 1
    prompts = ["a thin dark scratch", "a small round hole with a bright rim", "a stain"]  # mask 2 empty
    scores = scorer.score(images, masks, prompts)
    assert scores.shape == (3,) and torch.isfinite(scores).all() and (scores.abs() <= 1).all()
    assert torch.equal(scores, scorer.score(images, masks, prompts))  # deterministic
    as_bytes = (images * 255).round().to(torch.uint8)
    assert torch.allclose(scorer.score(as_bytes, masks, prompts), scores, atol=0.05)
    long_prompt = [" ".join(["scratch"] * 40)]  # longer than the 24 positions: truncated, not an error
    assert scorer.score(images[:1], masks[:1], long_prompt).shape == (1,)


def test_missing_directory_is_refused_before_any_hub_lookup(tmp_path, offline):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        CLIPScorer.from_directory(tmp_path / "nope")
