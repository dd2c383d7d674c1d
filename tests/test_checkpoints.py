"""checkpoints: a weights file says what kind of model it holds, and a reader refuses another kind."""

from __future__ import annotations

import pytest
import torch

from patchscaler.checkpoints import read_safetensors, save_safetensors
from patchscaler.models.grm import GRM, GRMConfig, grm_from_file, save_grm


def test_a_reader_refuses_another_kind_of_file(tmp_path):
    path = save_safetensors(tmp_path / "dit.safetensors", {"w": torch.zeros(2)}, format="patchscaler.PatchDiT", config={"a": 1})
    tensors, config, meta = read_safetensors(path, format="patchscaler.PatchDiT")
    assert config == {"a": 1} and meta["format"] == "patchscaler.PatchDiT" and torch.equal(tensors["w"], torch.zeros(2))
    with pytest.raises(ValueError, match="'patchscaler.PatchDiT', not the 'patchscaler.GRM'"):
        grm_from_file(path)


def test_untagged_files_and_the_grm_round_trip(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.ones(1)}, str(tmp_path / "plain.safetensors"))
    tensors, config, _ = read_safetensors(tmp_path / "plain.safetensors", format="patchscaler.GRM")
    assert config == {} and tensors["w"].item() == 1.0  # no tag: accepted, checked by the loader
    cfg = GRMConfig(channels=8, blocks=1)
    model = GRM(cfg)
    save_grm(model.state_dict(), cfg.__dict__, tmp_path / "grm.safetensors", {})
    again = grm_from_file(tmp_path / "grm.safetensors")
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), again.state_dict().values()))


def test_a_trainer_finds_the_set_made_for_its_degradation(tmp_path, monkeypatch):
    import json

    from patchscaler.checkpoints import ENV_VAR, set_trained_for

    assert set_trained_for("real") == "real" and set_trained_for("bicubic") == "bicubic"
    with pytest.raises(ValueError, match="0 model sets"):
        set_trained_for("jpeg-only")
    # The active root's own manifests decide: a set named "bicubic" made for real photos.
    (tmp_path / "bicubic").mkdir()
    (tmp_path / "bicubic" / "set.json").write_text(json.dumps({"degradation": "real"}))
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert set_trained_for("real") == "bicubic"
