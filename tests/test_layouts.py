"""data/layouts.py: every layout's happy path, each mismatch named with its file, and auto-detection."""
import shutil

import numpy as np
import pytest
from PIL import Image

from qarad.data.io import ImageError, read_mask
from qarad.data.layouts import (LAYOUTS, FolderSplit, detect_layout, list_categories, resolve_layout, scan)
from qarad.data.mvtec import DatasetError, Sample, scan_mvtec
from qarad.flags import LAYOUT_CHOICES
from qarad.testing import make_btad_tree, make_folder_tree, make_mvtec_tree, make_visa_tree


@pytest.fixture
def visa(tmp_path):
    return make_visa_tree(tmp_path / "visa", objects=("candle", "pcb1"))


@pytest.fixture
def btad(tmp_path):
    root = make_btad_tree(tmp_path / "btad", "01")  # .bmp images, .png masks, as BTAD's 01
    return make_btad_tree(root, "03", image_suffix=".bmp", mask_suffix=".bmp")


def _csv(root):
    return root / "split_csv" / "1cls.csv"


def test_flag_choices_are_the_layouts():
    assert LAYOUT_CHOICES == ("auto", *LAYOUTS)


# ---- MVTec AD: unchanged, through the one entry point -------------------------------------------
def test_mvtec_through_scan_is_scan_mvtec(mvtec_root):
    for split in ("train", "test"):
        expected = scan_mvtec(mvtec_root, "widget", split)
        assert scan(mvtec_root, "widget", split) == expected == scan(mvtec_root, "widget", split, "mvtec")
    assert detect_layout(mvtec_root) == "mvtec" and list_categories(mvtec_root) == ["widget"]


# ---- VisA ----------------------------------------------------------------------------------------
def test_visa_happy_path(visa):
    assert detect_layout(visa) == "visa" and list_categories(visa) == ["candle", "pcb1"]
    data = visa / "candle" / "Data"
    train = scan(visa, "candle", "train")
    assert train == [Sample(data / "Images" / "Normal" / f"{i:04d}.JPG", "good") for i in range(6)]
    test = scan(visa, "candle", "test")
    assert [(s.defect_type, s.image.name) for s in test] == [
        ("anomaly", "000.JPG"), ("anomaly", "001.JPG"), ("anomaly", "002.JPG"),
        ("good", "0006.JPG"), ("good", "0007.JPG"), ("good", "0008.JPG")]
    for s in test[:3]:
        assert s.mask == data / "Masks" / "Anomaly" / f"{s.image.stem}.png" and s.mask_encoding == "nonzero"
        assert read_mask(s.mask, encoding=s.mask_encoding).sum() == 12 * 12  # 255 and 1 masks alike


def test_visa_masks_with_any_nonzero_value_are_defect(tmp_path):
    mask = np.zeros((8, 8), np.uint8)
    mask[1:3, 1:3], mask[5:7, 5:7] = 1, 2  # two instances with their own values
    Image.fromarray(mask).save(tmp_path / "m.png")
    assert read_mask(tmp_path / "m.png", encoding="nonzero").sum() == 8
    with pytest.raises(ImageError, match="values other than 0/255"):
        read_mask(tmp_path / "m.png")  # the strict reading every other layout keeps
    Image.fromarray(np.stack([mask * 0, mask, mask * 0], -1)).save(tmp_path / "rgb.png")  # green only
    assert read_mask(tmp_path / "rgb.png", encoding="nonzero").sum() == 8


def test_visa_missing_column_names_the_csv_and_the_column(visa):
    lines = _csv(visa).read_text().splitlines()
    _csv(visa).write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")  # drop "mask"
    with pytest.raises(DatasetError, match="missing column") as err:
        scan(visa, "candle", "test")
    assert str(_csv(visa)) in str(err.value) and "mask" in str(err.value)


def test_visa_missing_csv_is_named_when_the_layout_is_chosen(tmp_path):
    make_mvtec_tree(tmp_path)
    with pytest.raises(DatasetError, match="VisA split file not found") as err:
        scan(tmp_path, "widget", "train", "visa")
    assert str(_csv(tmp_path)) in str(err.value)


def test_visa_mask_file_missing(visa):
    mask = visa / "candle" / "Data" / "Masks" / "Anomaly" / "001.png"
    mask.unlink()
    with pytest.raises(DatasetError, match="has no mask") as err:
        scan(visa, "candle", "test")
    assert str(mask) in str(err.value) and "line" in str(err.value)
    test = scan(visa, "candle", "test", allow_missing_masks=True)
    assert [s.mask is None for s in test if s.label] == [False, True, False]


def test_visa_anomaly_row_without_mask_path(visa):
    text = _csv(visa).read_text().replace(",candle/Data/Masks/Anomaly/002.png", ",")
    _csv(visa).write_text(text)
    with pytest.raises(DatasetError, match="002.JPG: defect image has no mask"):
        scan(visa, "candle", "test")


def test_visa_unknown_object_lists_the_objects(visa):
    with pytest.raises(DatasetError, match="no rows for object 'capsules'") as err:
        scan(visa, "capsules", "train")
    assert str(_csv(visa)) in str(err.value) and "candle, pcb1" in str(err.value)


def test_visa_listed_image_not_found(visa):
    image = visa / "pcb1" / "Data" / "Images" / "Normal" / "0002.JPG"
    image.unlink()
    with pytest.raises(DatasetError, match="not found") as err:
        scan(visa, "pcb1", "train")
    assert str(image) in str(err.value) and str(_csv(visa)) in str(err.value)


def test_visa_image_in_both_splits_is_an_overlap(visa):
    with open(_csv(visa), "a") as f:
        f.write("candle,test,normal,candle/Data/Images/Normal/0000.JPG,\n")
    with pytest.raises(DatasetError, match="both the train and the test split"):
        scan(visa, "candle", "train")


@pytest.mark.parametrize("bad, message", [(("normal", "good"), "label must be"), (("train,", "val,"), "split must be"),
                                          (("test,anomaly", "train,anomaly"), "anomaly row in the train split")])
def test_visa_bad_rows_name_their_line(visa, bad, message):
    lines = _csv(visa).read_text().splitlines()
    row = next(i for i, line in enumerate(lines) if bad[0] in line and line.startswith("candle"))
    lines[row] = lines[row].replace(bad[0], bad[1], 1)
    _csv(visa).write_text("\n".join(lines) + "\n")
    with pytest.raises(DatasetError, match=message) as err:
        scan(visa, "candle", "train")
    assert f"{_csv(visa)} line {row + 1}" in str(err.value)


# ---- BTAD ----------------------------------------------------------------------------------------
def test_btad_happy_path_with_png_and_bmp_masks(btad):
    assert detect_layout(btad) == "btad" and list_categories(btad) == ["01", "03"]
    train = scan(btad, "01", "train")
    assert [s.image.name for s in train] == [f"{i:04d}.bmp" for i in range(6)] and not any(s.label for s in train)
    for category, suffix in (("01", ".png"), ("03", ".bmp")):
        test = scan(btad, category, "test")
        assert [(s.defect_type, s.image.name) for s in test] == [
            ("ko", "0000.bmp"), ("ko", "0001.bmp"), ("ko", "0002.bmp"),
            ("good", "0000.bmp"), ("good", "0001.bmp"), ("good", "0002.bmp")]
        for s in test[:3]:
            assert s.mask == btad / category / "ground_truth" / "ko" / f"{s.image.stem}{suffix}"
            assert read_mask(s.mask).sum() == 12 * 12


def test_btad_mask_missing_names_both_suffixes(btad):
    (btad / "01" / "ground_truth" / "ko" / "0001.png").unlink()
    with pytest.raises(DatasetError, match="has no mask") as err:
        scan(btad, "01", "test")
    gt = btad / "01" / "ground_truth" / "ko" / "0001"
    assert str(btad / "01" / "test" / "ko" / "0001.bmp") in str(err.value)
    assert f"{gt}.png or {gt}.bmp" in str(err.value)


def test_btad_two_masks_of_one_image(btad):
    gt = btad / "01" / "ground_truth" / "ko"
    shutil.copy(gt / "0000.png", gt / "0000.bmp")
    with pytest.raises(DatasetError, match="more than one mask"):
        scan(btad, "01", "test")


def test_btad_empty_and_missing_train_folders(btad):
    ok = btad / "01" / "train" / "ok"
    for p in ok.iterdir():
        p.unlink()
    with pytest.raises(DatasetError, match="no images found") as err:
        scan(btad, "01", "train")
    assert str(ok) in str(err.value)
    ok.rmdir()
    with pytest.raises(DatasetError, match="train/ok"):
        scan(btad, "01", "train", "btad")


# ---- plain folders -------------------------------------------------------------------------------
def test_folder_held_out_normals_never_train(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=10)
    split = FolderSplit("good", "bad", "masks", seed=3)
    train, test = scan(root, "parts", "train", folder=split), scan(root, "parts", "test", folder=split)
    normals = sorted((root / "good").iterdir())
    held = [s.image for s in test if not s.label]
    assert len(held) == 2 and not set(held) & {s.image for s in train}  # 20 %, disjoint
    assert sorted(held + [s.image for s in train]) == normals
    assert [s.image for s in scan(root, "parts", "test", folder=split) if not s.label] == held  # seeded
    other = {s.image for s in scan(root, "parts", "test", folder=FolderSplit("good", "bad", "masks", seed=4))}
    assert other != set(s.image for s in test)
    assert [(s.defect_type, s.mask.name) for s in test if s.label] == [
        ("abnormal", "d000_mask.png"), ("abnormal", "d001_mask.png"), ("abnormal", "d002_mask.png")]
    assert resolve_layout(root, "auto", folder=split) == "folder" and list_categories(root, folder=split) == ["folder"]


def test_folder_with_a_normal_test_dir_trains_on_every_normal(tmp_path):
    root = make_folder_tree(tmp_path, n_normal=5, n_normal_test=2)
    split = FolderSplit("good", "bad", "masks", normal_test_dir="good_test")
    assert len(scan(root, "p", "train", folder=split)) == 5
    assert [s.image.parent.name for s in scan(root, "p", "test", folder=split)] == ["good_test"] * 2 + ["bad"] * 3


@pytest.mark.parametrize("split, message", [
    (FolderSplit("good", "bad", "masks", normal_test_dir="good"), "in both the train split"),
    (FolderSplit("good", "good"), "in both the train split"),
    (FolderSplit("good", "bad", "masks", test_split_ratio=0.95), "leaves none to train on"),
    (FolderSplit("good", mask_dir="masks"), "--mask-dir needs --abnormal-dir"),
    (FolderSplit("nowhere"), "folder not found"),
])
def test_folder_mismatches(tmp_path, split, message):
    root = make_folder_tree(tmp_path, n_normal=10)
    with pytest.raises(DatasetError, match=message):
        scan(root, "p", "train", folder=split)


def test_folder_empty_folder_and_missing_mask_are_named(tmp_path):
    root = make_folder_tree(tmp_path)
    (root / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images found") as err:
        scan(root, "p", "test", folder=FolderSplit("good", "empty"))
    assert str(root / "empty") in str(err.value) and "--abnormal-dir" in str(err.value)
    (root / "masks" / "d001_mask.png").unlink()
    with pytest.raises(DatasetError, match="d001.png: defect image has no mask"):
        scan(root, "p", "test", folder=FolderSplit("good", "bad", "masks"))
    with pytest.raises(DatasetError, match="has no mask"):  # abnormal images without a --mask-dir
        scan(root, "p", "test", folder=FolderSplit("good", "bad"))
    test = scan(root, "p", "test", folder=FolderSplit("good", "bad"), allow_missing_masks=True)
    assert [s.mask for s in test if s.label] == [None] * 3


# ---- choosing the layout -------------------------------------------------------------------------
def test_detection_defaults_to_mvtec_and_refuses_ambiguity(tmp_path, visa):
    assert detect_layout(tmp_path / "nowhere") == "mvtec"  # its scanner then names what is missing
    make_mvtec_tree(visa)  # a VisA root that also holds an MVTec category
    with pytest.raises(DatasetError, match="more than one dataset layout"):
        detect_layout(visa)
    assert scan(visa, "widget", "train", "mvtec")  # choosing one settles it


def test_layout_and_folder_flags_must_agree(tmp_path):
    with pytest.raises(DatasetError, match="belong to --layout folder"):
        resolve_layout(tmp_path, "btad", folder=FolderSplit("good"))
    with pytest.raises(DatasetError, match="needs --normal-dir"):
        resolve_layout(tmp_path, "folder")
    with pytest.raises(ValueError, match="layout must be"):
        resolve_layout(tmp_path, "kitti")


def test_list_categories_with_none_found(tmp_path):
    (tmp_path / "docs").mkdir()
    with pytest.raises(DatasetError, match="no categories found"):
        list_categories(tmp_path, "btad")
    with pytest.raises(DatasetError, match="dataset root not found"):
        list_categories(tmp_path / "nowhere", "mvtec")
