"""Tiny default models trained by the project's own recipe (`make default-models`).

They ship inside the package so that `cogview generate "a red circle at the top left"` works
right after install. Layout:

    cogview/defaults/shapes/      CogLM checkpoint folder (config.json, model.safetensors,
                                  tokenizer.json, vqvae/, sampling.json): the default model
    cogview/defaults/shapes-sr/   super-resolution checkpoint folder
    cogview/defaults/fashion/     CogLM checkpoint folder of a Fashion-MNIST model

A shipped CogLM can be named instead of given as a path: `--model fashion`.
"""

from __future__ import annotations

from pathlib import Path

from cogview.errors import ConfigError

ROOT = Path(__file__).resolve().parent
DEFAULTS = {
    "coglm": ROOT / "shapes",
    "sr": ROOT / "shapes-sr",
    "vqvae": ROOT / "shapes" / "vqvae",
    "tokenizer": ROOT / "shapes" / "tokenizer.json",
}
# the parameter (and flag) that names a model of each kind
PARAMETERS = {"coglm": "model", "sr": "sr", "vqvae": "vqvae", "tokenizer": "tokenizer"}
# shipped CogLM folders by name (`--model fashion`); a folder of that name, if one exists, wins
NAMED = {"shapes": DEFAULTS["coglm"], "fashion": ROOT / "fashion"}


def default_model_path(kind: str = "coglm") -> Path | None:
    """The shipped default of `kind`, or None when this install has none."""
    path = DEFAULTS[kind]
    ok = path.is_file() if kind == "tokenizer" else (path / "config.json").is_file()
    return path if ok else None


def model_path_or_default(path: str | Path | None, kind: str = "coglm") -> Path:
    """`path` when given (or the shipped CogLM it names), else the shipped default; a clear
    error when there is neither."""
    if path is not None:
        if kind == "coglm" and str(path) in NAMED and not Path(path).exists():
            return NAMED[str(path)]
        return Path(path)
    found = default_model_path(kind)
    if found is None:
        raise ConfigError.of(PARAMETERS[kind], f"not given, and this install has no shipped "
                             f"default {kind} (build them with `make default-models`)")
    return found
