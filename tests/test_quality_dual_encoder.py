import json

import pytest
import torch
import torch.nn.functional as F

from qarad.checkpoint import CheckpointError
from qarad.quality.dual_encoder import DualEncoder, DualEncoderConfig, region_pool
from qarad.quality.fit import fit_dual_encoder
from qarad.synthesis.model import load_dual_encoder, save_dual_encoder

N_CLASSES = 4
SIZE = 64
CONFIG = DualEncoderConfig(embed_dim=32)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: see conftest.one_thread


def test_region_pool_gives_inside_and_contrast():
    feats = torch.zeros(1, 2, 8, 8)
    feats[0, :, 3:5, 3:5] = 5.0
    cells = torch.zeros(1, 8, 8)
    cells[0, 3:5, 3:5] = 1.0
    assert torch.allclose(region_pool(feats, cells), torch.tensor([[5.0, 5.0, 5.0, 5.0]]))
    pixels = F.interpolate(cells[:, None], scale_factor=8, mode="nearest")[:, 0]  # a 64x64 pixel mask
    assert torch.allclose(region_pool(feats, pixels), region_pool(feats, cells))
    full = region_pool(torch.randn(2, 3, 8, 8), torch.ones(2, 8, 8))  # no ring: zero contrast, no NaN
    assert torch.isfinite(full).all() and torch.equal(full[:, 3:], torch.zeros(2, 3))


def test_family_labels_stop_penalising_identical_prompts():
    model = DualEncoder(CONFIG)
    with torch.no_grad():
        model.logit_scale.fill_(torch.log(torch.tensor(100.0)))
    families = torch.tensor([0, 0, 1, 1])
    emb = F.one_hot(families, CONFIG.embed_dim).float()  # images and prompts perfectly aligned per family
    plain, grouped = model.contrastive_loss(emb, emb), model.contrastive_loss(emb, emb, families)
    assert plain > 0.6  # log 2: each image cannot tell its own copy of the prompt from the twin
    assert grouped < 1e-3


def _toy(seed: int, n: int):
    """Images with a rectangle painted in a class colour; prompts = per-class text vector + noise."""
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.9, 0.1], [0.1, 0.1, 0.9], [0.9, 0.9, 0.1]])
    classes = torch.arange(n) % N_CLASSES
    images = 0.45 + 0.1 * torch.randn(n, 3, SIZE, SIZE, generator=g)
    masks = torch.zeros(n, SIZE, SIZE, dtype=torch.bool)
    for i in range(n):
        y, x = torch.randint(0, SIZE - 24, (2,), generator=g).tolist()
        h, w = torch.randint(8, 24, (2,), generator=g).tolist()
        images[i, :, y:y + h, x:x + w] = colours[classes[i]][:, None, None]
        masks[i, y:y + h, x:x + w] = True
    return (images.clamp(0, 1) * 255).to(torch.uint8), masks, classes


@pytest.fixture(scope="module")
def toy_problem():
    g = torch.Generator().manual_seed(99)
    projection = torch.randn(152, 3, 1, 1, generator=g)  # a fixed stand-in for the frozen backbone

    def features_fn(images):
        return F.conv2d(F.avg_pool2d(images, 8), projection)  # (B, 152, S/8, S/8)

    prototypes = F.normalize(torch.randn(N_CLASSES, 384, generator=g), dim=-1)

    def prompts(classes):  # several wordings per family: prototype + noise
        return F.normalize(prototypes[classes] + 0.03 * torch.randn(len(classes), 384, generator=g), dim=-1)

    images, masks, classes = _toy(0, 96)
    losses = []
    model = fit_dual_encoder(features_fn, images, masks, prompts(classes), classes, steps=150, batch_size=32,
                             lr=3e-3, seed=0, on_step=losses.append, config=CONFIG)
    return model, features_fn, prototypes, losses


def test_contrastive_training_retrieves_the_right_prompt(toy_problem):
    model, features_fn, prototypes, losses = toy_problem
    assert len(losses) == 150 and losses[-1] < losses[0]
    images, masks, classes = _toy(1, 40)  # unseen samples
    with torch.no_grad():
        img = model.image_embed(features_fn(images.float() / 255), masks.float())
        sim = img @ model.text_embed(prototypes).T  # (40, classes)
    accuracy = (sim.argmax(1) == classes).float().mean()
    assert accuracy >= 0.9
    matched = sim[torch.arange(40), classes]
    mismatched = sim[F.one_hot(classes, N_CLASSES) == 0]
    assert matched.mean() > mismatched.mean() + 0.3
    with torch.no_grad():
        s = model.score(features_fn(images.float() / 255), masks.float(), prototypes[classes])
    assert s.shape == (40,) and (s.abs() <= 1).all() and torch.allclose(s, matched, atol=1e-5)


def test_fit_is_deterministic_for_a_seed(toy_problem):
    _, features_fn, prototypes, _ = toy_problem
    images, masks, classes = _toy(2, 16)
    text = prototypes[classes]
    a = fit_dual_encoder(features_fn, images, masks, text, classes, steps=5, batch_size=8, seed=3, config=CONFIG)
    b = fit_dual_encoder(features_fn, images, masks, text, classes, steps=5, batch_size=8, seed=3, config=CONFIG)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_fit_rejects_mismatched_inputs(toy_problem):
    _, features_fn, prototypes, _ = toy_problem
    images, masks, classes = _toy(2, 8)
    with pytest.raises(ValueError, match="equal length"):
        fit_dual_encoder(features_fn, images, masks[:4], prototypes[classes], classes, steps=1)
    with pytest.raises(ValueError, match="text embeddings"):
        fit_dual_encoder(features_fn, images, masks, torch.zeros(8, 10), classes, steps=1)


def test_save_load_round_trip_gives_identical_scores(toy_problem, tmp_path):
    model, features_fn, prototypes, _ = toy_problem
    save_dual_encoder(tmp_path, model, "qaw")
    loaded = load_dual_encoder(tmp_path, "qaw")
    images, masks, classes = _toy(3, 8)
    feats = features_fn(images.float() / 255)
    with torch.no_grad():
        assert torch.equal(model.score(feats, masks.float(), prototypes[classes]),
                           loaded.score(feats, masks.float(), prototypes[classes]))
    assert loaded.config == model.config

    cfg = json.loads((tmp_path / "qaw.json").read_text())
    cfg["dual_encoder"]["embed_dim"] = 64
    (tmp_path / "qaw.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="has shape"):
        load_dual_encoder(tmp_path, "qaw")
    cfg["method"] = "patchcore"
    (tmp_path / "qaw.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="not a dual encoder"):
        load_dual_encoder(tmp_path, "qaw")


def test_unknown_dual_encoder_config_key_is_refused_naming_the_file(toy_problem, tmp_path):
    model, *_ = toy_problem
    save_dual_encoder(tmp_path, model, "qaw")
    cfg = json.loads((tmp_path / "qaw.json").read_text())
    cfg["dual_encoder"]["bogus_key"] = 1
    (tmp_path / "qaw.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"qaw\.json: unknown DualEncoderConfig keys \['bogus_key'\]"):
        load_dual_encoder(tmp_path, "qaw")
