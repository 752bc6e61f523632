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


def test_export_bf16_halves_the_weights_and_loads_back_as_their_rounding(tmp_path):
    from cogview.checkpoint import load_state_strict

    layer = torch.nn.Linear(64, 64)
    save_checkpoint(tmp_path / "run" / step_dir_name(1), kind="toy", config=Cfg(),
                    state_dict=layer.state_dict(), step=1)
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "full")]) == 0
    assert main(["export", str(tmp_path / "run"), str(tmp_path / "half"), "--bf16"]) == 0
    size = {n: (tmp_path / n / "model.safetensors").stat().st_size for n in ("full", "half")}
    assert size["half"] < 0.55 * size["full"]
    half = load_checkpoint(tmp_path / "half")
    assert all(v.dtype == torch.bfloat16 for v in half.state_dict.values())
    loaded = torch.nn.Linear(64, 64)
    load_state_strict(loaded, half.state_dict, source="half")
    assert loaded.weight.dtype == torch.float32
    assert torch.equal(loaded.weight, layer.weight.detach().to(torch.bfloat16).float())
    assert not torch.equal(loaded.weight, layer.weight)  # rounded, not a copy
