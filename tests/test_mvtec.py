import shutil

import numpy as np
import pytest
from conftest import defect_box, make_mvtec_tree

from qarad.data.io import read_image, read_mask
from qarad.data.mvtec import DatasetError, Sample, scan_folder, scan_mvtec, subsample


def test_fake_tree_images_and_masks_agree(mvtec_root):
    cat = mvtec_root / "widget"
    img = read_image(cat / "test" / "scratch" / "000.png")  # defect image 1 (round robin)
    mask = read_mask(cat / "ground_truth" / "scratch" / "000_mask.png", shape=img.shape[:2])
    y0, y1, x0, x1 = defect_box(1, (48, 64))
    assert img.shape == (48, 64, 3) and mask.sum() == (y1 - y0) * (x1 - x0)
    assert np.all(img[mask] == 1.0) and np.all(img[~mask] < 1.0)  # the bright square is the mask


def test_scan_train(mvtec_root):
    train = scan_mvtec(mvtec_root, "widget", "train")
    good = mvtec_root / "widget" / "train" / "good"
    assert train == [Sample(good / f"{i:03d}.png", "good") for i in range(6)]
    assert all(s.label == 0 and s.mask is None for s in train)


def test_scan_test_labels_masks_and_order(mvtec_root):
    cat = mvtec_root / "widget"
    test = scan_mvtec(mvtec_root, "widget", "test")
    # type folders sorted by name, then file names sorted; defects 0, 2 -> crack, defect 1 -> scratch
    assert [(s.defect_type, s.image.name) for s in test] == [
        ("crack", "000.png"), ("crack", "001.png"),
        ("good", "000.png"), ("good", "001.png"), ("good", "002.png"),
        ("scratch", "000.png")]
    assert [s.label for s in test] == [1, 1, 0, 0, 0, 1]
    for s in test:
        assert s.image == cat / "test" / s.defect_type / s.image.name
        if s.label:
            assert s.mask == cat / "ground_truth" / s.defect_type / f"{s.image.stem}_mask.png"
            assert s.mask.is_file()
        else:
            assert s.mask is None


def test_scan_ignores_hidden_and_non_image_files_and_accepts_other_suffixes(mvtec_root):
    good = mvtec_root / "widget" / "test" / "good"
    (good / ".DS_Store").write_bytes(b"junk")
    (good / "._000.png").write_bytes(b"junk")
    (good / "readme.txt").write_text("x")
    shutil.copy(good / "000.png", good / "100.JPG")  # the suffix is matched case-insensitively
    names = [s.image.name for s in scan_mvtec(mvtec_root, "widget", "test") if s.defect_type == "good"]
    assert names == ["000.png", "001.png", "002.png", "100.JPG"]


def test_scan_two_categories_side_by_side(tmp_path):
    root = make_mvtec_tree(tmp_path, "a", n_train=2, n_good=1, n_defect=1)
    assert make_mvtec_tree(tmp_path, "b", n_train=3, n_good=1, n_defect=2) == root
    assert len(scan_mvtec(root, "a", "train")) == 2 and len(scan_mvtec(root, "b", "train")) == 3
    assert [s.defect_type for s in scan_mvtec(root, "b", "test")] == ["crack", "good", "scratch"]


def test_missing_category(mvtec_root):
    with pytest.raises(DatasetError, match="gadget: category folder not found"):
        scan_mvtec(mvtec_root, "gadget", "train")


def test_missing_split_folder(mvtec_root):
    shutil.rmtree(mvtec_root / "widget" / "test")
    with pytest.raises(DatasetError, match=r"missing 'test' folder"):
        scan_mvtec(mvtec_root, "widget", "test")


def test_missing_train_good(mvtec_root):
    shutil.rmtree(mvtec_root / "widget" / "train" / "good")
    (mvtec_root / "widget" / "train" / "normal").mkdir()
    with pytest.raises(DatasetError, match=r"train/good'? folder") as e:
        scan_mvtec(mvtec_root, "widget", "train")
    assert str(mvtec_root / "widget" / "train" / "good") in str(e.value)


def test_empty_train_good(mvtec_root):
    good = mvtec_root / "widget" / "train" / "good"
    for p in good.iterdir():
        p.unlink()
    (good / "notes.txt").write_text("no images here")
    with pytest.raises(DatasetError, match="no images found") as e:
        scan_mvtec(mvtec_root, "widget", "train")
    assert str(good) in str(e.value)


def test_empty_test_split(mvtec_root):
    shutil.rmtree(mvtec_root / "widget" / "test")
    (mvtec_root / "widget" / "test").mkdir()
    with pytest.raises(DatasetError, match="no test images"):
        scan_mvtec(mvtec_root, "widget", "test")


def test_bad_split_name(mvtec_root):
    with pytest.raises(ValueError, match="split must be"):
        scan_mvtec(mvtec_root, "widget", "val")


def test_defect_image_without_mask(mvtec_root):
    cat = mvtec_root / "widget"
    (cat / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DatasetError) as e:
        scan_mvtec(mvtec_root, "widget", "test")
    assert str(cat / "test" / "crack" / "001.png") in str(e.value)  # names the image
    assert str(cat / "ground_truth" / "crack" / "001_mask.png") in str(e.value)  # and the expected mask
    test = scan_mvtec(mvtec_root, "widget", "test", allow_missing_masks=True)
    by_name = {(s.defect_type, s.image.name): s for s in test}
    assert len(test) == 6
    assert by_name["crack", "001.png"].mask is None and by_name["crack", "001.png"].label == 1
    assert by_name["crack", "000.png"].mask is not None


def test_empty_mask_is_legal(mvtec_root):
    from PIL import Image
    mask_path = mvtec_root / "widget" / "ground_truth" / "scratch" / "000_mask.png"
    Image.fromarray(np.zeros((48, 64), np.uint8)).save(mask_path)
    (sample,) = [s for s in scan_mvtec(mvtec_root, "widget", "test") if s.defect_type == "scratch"]
    assert sample.mask == mask_path and sample.label == 1
    assert not read_mask(sample.mask, shape=(48, 64)).any()


def test_scan_folder(tmp_path):
    make_mvtec_tree(tmp_path, n_train=3)
    folder = tmp_path / "widget" / "train" / "good"
    (folder / "x.txt").write_text("x")
    (folder / "sub").mkdir()
    (folder / "sub" / "999.png").write_bytes((folder / "000.png").read_bytes())  # not recursive
    assert scan_folder(folder) == [folder / "000.png", folder / "001.png", folder / "002.png"]
    with pytest.raises(DatasetError, match="folder not found"):
        scan_folder(tmp_path / "nowhere")
    with pytest.raises(DatasetError, match="no images found"):
        scan_folder(tmp_path / "widget" / "ground_truth")  # only sub-folders


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_subsample_follows_random_state_choice(seed):
    items = [f"s{i:02d}" for i in range(20)]
    picked = subsample(items, 7, seed=seed)
    expected = [items[i] for i in sorted(np.random.RandomState(seed).choice(20, 7, replace=False))]
    assert picked == expected
    assert subsample(items, 7, seed=seed) == picked  # reproducible
    assert len(set(picked)) == 7


def test_subsample_seed_matters_and_no_limit_copies():
    items = list(range(50))
    assert subsample(items, 10, seed=0) != subsample(items, 10, seed=1)
    for limit in (None, 50, 80):
        out = subsample(items, limit)
        assert out == items and out is not items
