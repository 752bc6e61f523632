from dataclasses import dataclass

import torch

from cogview.checkpoint import load_checkpoint, save_checkpoint, step_dir_name
from cogview.cli import main


@dataclass(frozen=True)
class Cfg:
    dim: int = 3


def test_export_copies_newest_checkpoint_without_training_state(tmp_path, capsys):
    run = tmp_path / "run"
    for step in (1, 2):
        layer = torch.nn.Linear(3, 3)
        save_checkpoint(
            run / step_dir_name(step),
            kind="toy",
            config=Cfg(),
            state_dict=layer.state_dict(),
            step=step,
            training_state={"step": torch.tensor(step)},
            copy={"notes.txt": __file__},
        )
    assert main(["export", str(run), str(tmp_path / "model")]) == 0
    out = tmp_path / "model"
    assert sorted(p.name for p in out.iterdir()) == [
        "config.json",
        "model.safetensors",
        "notes.txt",
    ]
    exported, newest = load_checkpoint(out), load_checkpoint(run)
    assert exported.step == 2
    for k, v in newest.state_dict.items():
        assert torch.equal(exported.state_dict[k], v)
    assert "wrote" in capsys.readouterr().out


def test_export_of_missing_run_is_a_one_line_error(tmp_path, capsys):
    assert main(["export", str(tmp_path / "nope"), str(tmp_path / "model")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "\n" not in err
    assert not (tmp_path / "model").exists()
