import json
import pickle
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from qarad.checkpoint import MAX_CONFIG_BYTES, CheckpointError, build_config, load_config, load_tensors, save


@dataclass(frozen=True)
class TinyConfig:
    dim: int
    layers: tuple[int, ...] = (1, 2)
    name: str = "tiny"

    def __post_init__(self):
        if self.dim <= 0:
            raise ValueError("dim must be positive")


TENSORS = {"memory": torch.arange(12, dtype=torch.float32).reshape(4, 3), "sources": torch.tensor([3, 1, 4, 1])}
SHAPES = {"memory": (None, 3), "sources": (4,)}


def test_round_trip(tmp_path):
    stem = tmp_path / "run" / "model"
    save(stem, TENSORS, {"dim": 3, "layers": [4, 5], "name": "x"})
    assert sorted(p.name for p in stem.parent.iterdir()) == ["model.json", "model.safetensors"]
    tensors = load_tensors(stem, SHAPES)
    assert set(tensors) == set(TENSORS)
    for k in TENSORS:
        assert tensors[k].dtype == TENSORS[k].dtype and torch.equal(tensors[k], TENSORS[k])
    values = load_config(stem)
    assert values == {"dim": 3, "layers": [4, 5], "name": "x"}
    cfg = build_config(TinyConfig, values, stem)
    assert cfg == TinyConfig(3, (4, 5), "x")  # JSON lists come back as tuples


def test_save_detaches_and_copies_non_contiguous(tmp_path):
    w = torch.randn(3, 5, requires_grad=True)
    save(tmp_path / "m", {"wt": w.t()}, {})
    assert torch.equal(load_tensors(tmp_path / "m", {"wt": (5, 3)})["wt"], w.detach().t())


class _Trap:
    """Unpickling this runs Path.touch(marker): proof that something unpickled the file."""

    def __init__(self, marker):
        self.marker = Path(marker)

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_pickle_renamed_to_safetensors_is_refused_and_never_unpickled(tmp_path):
    proof = tmp_path / "the_trap_works"
    pickle.loads(pickle.dumps(_Trap(proof)))
    assert proof.exists()  # the trap does fire when unpickled

    marker = tmp_path / "unpickled"
    stem = tmp_path / "evil"
    torch.save({"memory": TENSORS["memory"], "payload": _Trap(marker)}, stem.with_suffix(".safetensors"))
    stem.with_suffix(".json").write_text("{}")
    with pytest.raises(CheckpointError) as e:
        load_tensors(stem, SHAPES)
    assert str(stem.with_suffix(".safetensors")) in str(e.value)
    assert "not a valid safetensors file" in str(e.value) and "never loaded" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}      ",
                                     b"\xff" * 64])
def test_garbage_weights_are_refused(tmp_path, content):
    (tmp_path / "w.safetensors").write_bytes(content)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_tensors(tmp_path / "w", SHAPES)


def test_truncated_safetensors_is_refused(tmp_path):
    save(tmp_path / "m", TENSORS, {})
    data = (tmp_path / "m.safetensors").read_bytes()
    (tmp_path / "m.safetensors").write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        load_tensors(tmp_path / "m", SHAPES)


def test_missing_files(tmp_path):
    with pytest.raises(CheckpointError, match="weights file not found"):
        load_tensors(tmp_path / "none", SHAPES)
    with pytest.raises(CheckpointError, match="config file not found"):
        load_config(tmp_path / "none")


@pytest.mark.parametrize("shapes, words", [
    ({"memory": (4, 2), "sources": (4,)}, r"'memory' has shape \(4, 3\), expected \(4, 2\)"),
    ({"memory": (None, 3), "sources": (5,)}, r"'sources' has shape \(4,\), expected \(5,\)"),
    ({"memory": (4, 3, 1), "sources": (4,)}, "'memory' has shape"),  # wrong rank
    ({"memory": (12,), "sources": (4,)}, "'memory' has shape"),
    ({"memory": (None, 3)}, r"unknown \['sources'\]"),
    ({"memory": (None, 3), "sources": (4,), "bias": (3,)}, r"missing \['bias'\]"),
])
def test_wrong_tensor_names_or_shapes_are_refused(tmp_path, shapes, words):
    save(tmp_path / "m", TENSORS, {})
    with pytest.raises(CheckpointError, match=words):
        load_tensors(tmp_path / "m", shapes)


def test_unknown_config_keys_are_refused(tmp_path):
    save(tmp_path / "m", TENSORS, {"dim": 3, "layers": [1], "dropout": 0.1, "aaa": 1})
    with pytest.raises(CheckpointError) as e:
        build_config(TinyConfig, load_config(tmp_path / "m"), tmp_path / "m.json")
    assert str(tmp_path / "m.json") in str(e.value)
    assert "unknown TinyConfig keys ['aaa', 'dropout']" in str(e.value)


@pytest.mark.parametrize("values, words", [({}, "missing 1 required"), ({"dim": -1}, "dim must be positive")])
def test_invalid_config_values_are_refused(values, words):
    with pytest.raises(CheckpointError, match=f"src.json: invalid TinyConfig: .*{words}"):
        build_config(TinyConfig, values, "src.json")


@pytest.mark.parametrize("text, words", [("{bad", "not valid JSON"), ("[1, 2]", "must be a JSON object"),
                                         ("\udcff", "not valid JSON")])
def test_bad_config_files_are_refused(tmp_path, text, words):
    (tmp_path / "c.json").write_bytes(text.encode("utf-8", "surrogateescape"))
    with pytest.raises(CheckpointError, match=words):
        load_config(tmp_path / "c")


def test_oversized_config_is_refused(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"pad": "x" * MAX_CONFIG_BYTES}))
    with pytest.raises(CheckpointError, match="larger than"):
        load_config(tmp_path / "c")
