import os
import pickle
from dataclasses import dataclass

import pytest
import torch

from cogview.checkpoint import (
    CheckpointError,
    config_from_dict,
    load_checkpoint,
    load_state_strict,
    load_training_state,
    resolve_checkpoint,
    save_checkpoint,
    step_dir_name,
)


@dataclass(frozen=True)
class Cfg:
    dim: int = 4
    sizes: tuple = (1, 2)


def _save(path, step=3, **kw):
    model = torch.nn.Linear(4, 2)
    save_checkpoint(path, kind="toy", config=Cfg(), state_dict=model.state_dict(), step=step, **kw)
    return model


def test_round_trip_is_exact(tmp_path):
    model = _save(tmp_path / "ck", extra={"note": "x"}, training_state={"step": torch.tensor(3)})
    ck = load_checkpoint(tmp_path / "ck", kind="toy")
    assert ck.step == 3 and ck.extra == {"note": "x"}
    assert config_from_dict(Cfg, ck.config) == Cfg()
    for k, v in model.state_dict().items():
        assert torch.equal(ck.state_dict[k], v)
    assert int(load_training_state(ck.path)["step"]) == 3


def test_resolve_picks_newest_complete_step(tmp_path):
    for step in (10, 20):
        _save(tmp_path / step_dir_name(step), step=step)
    # a half-written folder from a killed process is never picked
    (tmp_path / f".{step_dir_name(30)}.tmp-123").mkdir()
    (tmp_path / step_dir_name(40)).mkdir()  # no files: incomplete
    assert resolve_checkpoint(tmp_path).name == step_dir_name(20)
    assert load_checkpoint(tmp_path).step == 20


def test_overwrite_replaces_atomically(tmp_path):
    _save(tmp_path / "ck", step=1)
    _save(tmp_path / "ck", step=2)
    assert load_checkpoint(tmp_path / "ck").step == 2
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_wrong_kind_and_unknown_fields_are_clear_errors(tmp_path):
    _save(tmp_path / "ck")
    with pytest.raises(CheckpointError, match="toy checkpoint, expected vqvae"):
        load_checkpoint(tmp_path / "ck", kind="vqvae")
    with pytest.raises(CheckpointError, match="unknown Cfg fields"):
        config_from_dict(Cfg, {"dim": 4, "width": 9})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_state_strict(torch.nn.Linear(5, 2), load_checkpoint(tmp_path / "ck").state_dict, "ck")


def test_truncated_weights_name_the_file(tmp_path):
    _save(tmp_path / "ck")
    f = tmp_path / "ck" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:40])
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(tmp_path / "ck")
    (tmp_path / "ck" / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="config.json"):
        load_checkpoint(tmp_path / "ck")


class _Payload:
    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_payload_in_training_state_is_not_executed(tmp_path):
    _save(tmp_path / "ck")
    marker = tmp_path / "pwned"
    payload = _Payload()
    payload.marker = marker
    with open(tmp_path / "ck" / "training_state.pt", "wb") as fh:
        pickle.dump({"optimizer": payload}, fh, protocol=2)
    with pytest.raises(CheckpointError, match="training_state.pt"):
        load_training_state(tmp_path / "ck")
    assert not marker.exists()


def test_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="not a checkpoint"):
        load_checkpoint(tmp_path / "empty")
