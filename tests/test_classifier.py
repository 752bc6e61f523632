"""The Fashion-MNIST classifier: checkpoint round trip, a short training run, the CLI.

The >80% figure on the real test split needs the full training set and a couple of minutes
(`cogview train-classifier --data FASHION --out DIR`); here a tiny run on a small subset must
beat chance clearly.
"""

from dataclasses import replace
from pathlib import Path

import pytest
import torch

from cogview.bench.classifier import (
    PRESETS,
    Classifier,
    ClassifierConfig,
    load_classifier,
    save_classifier,
)
from cogview.cli import main
from cogview.errors import UserError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not FASHION_DIR.is_dir(), reason="dataset-fashion-mnist is not installed"
)
NAMES = [f"class {i}" for i in range(10)]


@pytest.fixture(scope="module")
def fashion_shards(tmp_path_factory):
    from train.data.sources import build_fashion

    out = tmp_path_factory.mktemp("fashion")
    build_fashion(out, n=1200, progress=False)  # 1200 train, 200 test images
    return out


def test_round_trip_gives_the_same_predictions(tmp_path):
    torch.manual_seed(0)
    model = Classifier(PRESETS["tiny"]).eval()
    path = save_classifier(tmp_path / "clf", model, NAMES, step=7)
    loaded, names = load_classifier(tmp_path / "clf")
    x = torch.rand(5, 3, 32, 32)
    assert names == NAMES
    assert torch.equal(loaded.predict(x), model.predict(x))
    assert torch.allclose(loaded(x), model(x))
    assert path.name == "clf" and not loaded.training


def test_grey_and_rgb_inputs_agree():
    model = Classifier(ClassifierConfig(channels=(4, 8))).eval()
    grey = torch.rand(3, 1, 32, 32)
    assert torch.allclose(model(grey), model(grey.expand(3, 3, 32, 32)))


def test_wrong_number_of_class_names_is_refused(tmp_path):
    with pytest.raises(ValueError, match="class names"):
        save_classifier(tmp_path / "clf", Classifier(PRESETS["tiny"]), NAMES[:3])


@needs_fashion
def test_short_training_beats_chance(fashion_shards, tmp_path, one_thread):
    from train.classifier import LOOP_DEFAULTS, ClassifierTrainConfig, train_classifier

    cfg = ClassifierTrainConfig(data=str(fashion_shards), out=str(tmp_path / "run"),
                                preset="tiny")
    loop = replace(LOOP_DEFAULTS, steps=30, warmup=3, batch_size=64, lr=1e-2)
    result = train_classifier(cfg, loop, progress=False)
    assert result.n_train == 1200 and result.n_test == 200
    assert result.test_accuracy > 0.5  # chance is 0.1
    model, names = load_classifier(tmp_path / "run")  # the run folder resolves to its step
    assert names[0] == "T-shirt/top" and names[9] == "Ankle boot"
    assert model.config == PRESETS["tiny"]


@needs_fashion
def test_cli_trains_and_writes_a_checkpoint(fashion_shards, tmp_path, capsys):
    out = tmp_path / "clf"
    code = main(
        ["train-classifier", "--data", str(fashion_shards), "--out", str(out), "--preset",
         "tiny", "--steps", "3", "--limit", "100", "--test-limit", "50", "--threads", "1"]
    )  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "test accuracy" in printed and "on 50 real test images" in printed
    assert (out / "step-00000003" / "model.safetensors").is_file()
    load_classifier(out)


def test_cli_missing_data_is_a_user_error(tmp_path, capsys):
    code = main(["train-classifier", "--data", str(tmp_path / "nope"), "--out", str(tmp_path)])
    assert code == 2
    assert "--data" in capsys.readouterr().err


def test_load_of_a_missing_folder_is_a_user_error(tmp_path):
    with pytest.raises(UserError):
        load_classifier(tmp_path / "missing")
