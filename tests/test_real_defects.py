"""Real defect shots (data/real_defects.py): a reproducible choice of at most K per type, its JSON,
the test images it leaves out, and errors that name the file or the problem."""
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import make_mvtec_tree
from qarad.checkpoint import CheckpointError
from qarad.data.mvtec import DatasetError, scan_mvtec
from qarad.data.real_defects import RealDefects, parse_descriptions, select_real_defects, words
from qarad.testing import make_defect_folder


@pytest.fixture
def tree(tmp_path):
    return make_mvtec_tree(tmp_path / "mvtec", n_defect=10, size=(48, 48))  # 5 crack, 5 scratch


def test_the_choice_is_reproducible_by_seed_and_capped_at_k(tree):
    source = tree / "widget"
    a = select_real_defects([source], shots=2, seed=0)
    assert a == select_real_defects([source], shots=2, seed=0)
    assert a.types == ("crack", "scratch")
    assert [len(a.of_type(t)) for t in a.types] == [2, 2]
    others = {tuple(d.image for d in select_real_defects([source], 2, seed=s).defects) for s in range(1, 6)}
    assert len(others | {tuple(d.image for d in a.defects)}) > 1, "the seed should change the choice"
    every = select_real_defects([source], shots=99, seed=0)
    assert [len(every.of_type(t)) for t in every.types] == [5, 5]  # only as many as there are
    assert all(d.prompt == d.defect_type for d in a.defects)


def test_a_type_is_drawn_on_its_own(tree, tmp_path):
    """Adding a type does not change which images another type gets."""
    source = tree / "widget"
    before = select_real_defects([source], 2, seed=3).of_type("crack")
    make_defect_folder(tmp_path / "blowhole", n=3)
    after = select_real_defects([source, tmp_path / "blowhole"], 2, seed=3)
    assert after.of_type("crack") == before and len(after.of_type("blowhole")) == 2


def test_empty_masks_are_never_chosen(tree):
    gt = tree / "widget" / "ground_truth" / "crack"
    empty = sorted(gt.glob("*_mask.png"))[:3]
    for m in empty:
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(m)
    for seed in range(5):
        picked = select_real_defects([tree / "widget"], shots=2, seed=seed).of_type("crack")
        assert len(picked) == 2 and not {d.mask for d in picked} & {str(m.resolve()) for m in empty}


def test_json_round_trip_and_unknown_keys_refused(tree):
    real = select_real_defects([tree / "widget"], 1, descriptions={"crack": "a  thin dark crack"})
    assert RealDefects.from_dict(real.to_dict(), "x") == real
    assert real.prompts == {"crack": "a thin dark crack", "scratch": "scratch"}  # prompts are normalised
    bad = real.to_dict() | {"extra": 1}
    with pytest.raises(CheckpointError, match="aras.json"):
        RealDefects.from_dict(bad, "aras.json")
    record = real.to_dict()
    record["defects"][0]["colour"] = "red"
    with pytest.raises(CheckpointError, match="unknown RealDefect keys"):
        RealDefects.from_dict(record, "aras.json")


@pytest.mark.parametrize("key, value", [("shots", None), ("shots", "5"), ("seed", 1.5), ("seed", True),
                                        ("sources", "widget"), ("sources", [3])])
def test_hand_edited_real_defects_of_the_wrong_type_are_refused_by_name(tree, key, value):
    record = select_real_defects([tree / "widget"], 1).to_dict() | {key: value}
    with pytest.raises(CheckpointError, match=f"aras.json: real defects' '{key}'"):
        RealDefects.from_dict(record, "aras.json")


def test_a_folder_of_one_type(tmp_path):
    real = select_real_defects([make_defect_folder(tmp_path / "MT_Blowhole", n=4)], shots=3, seed=1)
    assert real.types == ("MT_Blowhole",) and len(real.defects) == 3
    assert real.prompts["MT_Blowhole"] == "mt blowhole" == words("MT_Blowhole")
    assert real.type_of("MT Blowhole") == real.type_of("mt_blowhole") == "MT_Blowhole"
    assert real.resolve("MT_Blowhole") == "mt blowhole" and real.resolve("a crack") == "a crack"


def test_the_split_leaves_out_the_shots_by_path_and_by_content(tree, tmp_path):
    real = select_real_defects([tree / "widget"], 1, seed=0)
    test = scan_mvtec(tree, "widget", "test")
    kept, excluded = real.split(test)
    assert sorted(str(s.image.resolve()) for s in excluded) == sorted(d.image for d in real.defects)
    assert len(kept) + len(excluded) == len(test)
    # the same dataset copied elsewhere: the shots are still recognised, by their bytes
    shutil.copytree(tree, tmp_path / "copy")
    kept, excluded = real.split(scan_mvtec(tmp_path / "copy", "widget", "test"))
    assert len(excluded) == len(real.defects)


def test_bad_input_names_the_problem(tree, tmp_path):
    with pytest.raises(ValueError, match="--shots must be at least 1, got 0"):
        select_real_defects([tree / "widget"], shots=0)
    with pytest.raises(ValueError, match=r"--defect-prompt blowhole: no such defect type .* crack, scratch"):
        select_real_defects([tree / "widget"], 1, descriptions={"blowhole": "a hole"})
    with pytest.raises(ValueError, match="expected TYPE=DESCRIPTION"):
        parse_descriptions(["blowhole"])
    mask = tree / "widget" / "ground_truth" / "scratch" / "001_mask.png"
    mask.unlink()
    image = tree / "widget" / "test" / "scratch" / "001.png"
    with pytest.raises(DatasetError, match=f"{image}: real defect image has no mask .*001_mask.png"):
        select_real_defects([tree / "widget"], 1)
    folder = make_defect_folder(tmp_path / "pit", n=2)
    (folder / "masks" / "001.png").unlink()
    with pytest.raises(DatasetError, match=f"{folder / '001.png'}: defect image has no mask"):
        select_real_defects([folder], 1)
    with pytest.raises(DatasetError, match="real defects folder not found"):
        select_real_defects([tmp_path / "nowhere"], 1)
