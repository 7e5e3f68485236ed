"""The learned foreground keeps proposed defect masks on the part, not on a plain backdrop."""
import numpy as np
import pytest

from qarad.defects.proposal import propose_defect_mask
from qarad.data.foreground import Foreground, texture_energy
from qarad.testing import part_on_backdrop, texture

PROMPTS = ("a thin dark scratch", "a small round hole", "a large dark stain", "a broken area",
           "a pale discoloured patch", "a frayed edge")


def _inside_share(images, parts, foregrounds, seed=0):
    """Share of proposals lying wholly on the part."""
    rng, inside = np.random.default_rng(seed), []
    for k in range(60):
        i = k % len(images)
        mask = propose_defect_mask(rng, images[i], PROMPTS[k % len(PROMPTS)], foreground=foregrounds[i])
        inside.append(bool(mask.any() and not (mask & ~parts[i]).any()))
    return float(np.mean(inside))


@pytest.mark.parametrize("backdrop", ["dark", "light", "same"])
def test_proposals_land_on_the_part(backdrop):
    rng = np.random.default_rng(1)
    data = [part_on_backdrop(rng, (96, 128), backdrop) for _ in range(10)]
    images, parts = [d[0] for d in data], [d[1] for d in data]
    learned = Foreground().fit(images[:6])  # learned on some normal images, used on others too
    assert learned.separable_
    assert _inside_share(images, parts, [learned.mask(im) for im in images]) >= 0.95
    # the same proposals over the whole frame mostly miss the part: the measure can fail
    assert _inside_share(images, parts, [np.ones(p.shape, bool) for p in parts]) < 0.5


def test_mask_hugs_the_outline():
    rng = np.random.default_rng(2)
    data = [part_on_backdrop(rng, (96, 128), "light") for _ in range(6)]
    learned = Foreground().fit(d[0] for d in data)
    for image, part in data:
        mask = learned.mask(image)
        assert mask.shape == part.shape
        assert (mask & part).sum() >= 0.9 * part.sum()  # most of the part
        assert (mask & ~part).sum() <= 0.1 * mask.sum()  # little of the backdrop


def test_textures_and_line_art_are_all_foreground():
    rng = np.random.default_rng(3)
    tiles = [texture(rng, (64, 80)).astype(np.float32) / 255 for _ in range(5)]
    learned = Foreground().fit(tiles)
    assert not learned.separable_ and learned.mask(tiles[0]).all()
    art = []  # flat two-tone line art (a circuit board): flat, but no plain backdrop around a part
    for _ in range(5):
        board = np.zeros((64, 80), np.float32)
        for _ in range(6):
            y, x = rng.integers(0, 60), rng.integers(0, 70)
            board[y:y + 4, x:] = 1.0
        art.append(np.repeat(board[..., None], 3, axis=2))
    assert not Foreground().fit(art).separable_


def test_energy_of_a_flat_image_is_the_floor_and_unfitted_is_refused():
    flat = np.full((40, 50, 3), 0.3, np.float32)
    energy = texture_energy(flat)
    assert energy.shape == (40, 50) and np.ptp(energy) == 0
    with pytest.raises(RuntimeError, match="not fitted"):
        Foreground().mask(flat)
    with pytest.raises(ValueError, match="no normal images"):
        Foreground().fit([])
