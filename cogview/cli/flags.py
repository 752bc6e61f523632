"""Command-line flags made from config dataclasses, so that a default, a help text and a check
are written once, in the dataclass field (its metadata holds `help`, and `flag` when the flag
is not the field's name).

Flags made here default to None: a flag not given leaves the field to the next source of
defaults (a model folder's sampling.json, then the dataclass).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable
from typing import Any

from cogview.errors import ConfigError, UserError


def flag_name(cls: type, name: str) -> str:
    """The flag of field `name` of `cls` (`--top-k` for top_k; metadata `flag` renames it)."""
    meta = next((f.metadata for f in dataclasses.fields(cls) if f.name == name), {})
    return "--" + meta.get("flag", name).replace("_", "-")


_PLAIN_TYPES = {"int": int, "float": float, "str": str, "bool": bool}


def _value_type(f: dataclasses.Field) -> Any:
    """The parser of a field's flag: metadata `type`, else its plain annotation."""
    if "type" in f.metadata:
        return f.metadata["type"]
    name = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
    name = name.replace(" | None", "")
    if name not in _PLAIN_TYPES:
        raise TypeError(f"{f.name}: annotation {f.type!r} needs a `type` in its metadata")
    return _PLAIN_TYPES[name]


def add_flags(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    keep: Callable[[dataclasses.Field], bool] = lambda f: True,
    defaults: Any = None,
    show_defaults: bool = False,
) -> None:
    """One flag per documented field of `cls` that `keep` accepts, its value stored under the
    field's name; booleans get --x / --no-x; a field without a default is a required flag.

    Flags default to None, so that a flag not given leaves its field to the next source of
    defaults; `defaults` (an instance of `cls`) is that source, and its values are shown in
    the help (`show_defaults`: the dataclass's own defaults are).
    """
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata or not keep(f):
            continue
        kind = _value_type(f)
        text = f.metadata["help"]
        shown = getattr(defaults, f.name) if defaults is not None else (
            f.default if show_defaults and f.default is not dataclasses.MISSING else None)
        if isinstance(shown, tuple):
            shown = ",".join(str(v) for v in shown)
        if shown is not None:
            text += f" (default: {shown})"
        options: dict[str, Any] = {"dest": f.name, "default": None, "help": text}
        if kind is bool:
            options["action"] = argparse.BooleanOptionalAction
        else:
            metavar = f.metadata.get("metavar", f.name.split("_")[-1][0].upper())
            options.update(type=kind, metavar=metavar)
            if "choices" in f.metadata:
                options.update(choices=f.metadata["choices"], metavar=None)
        no_default = (f.default is dataclasses.MISSING
                      and f.default_factory is dataclasses.MISSING)
        if no_default and defaults is None:
            options["required"] = True
        parser.add_argument(flag_name(cls, f.name), **options)


def from_flags(cls: type, args: argparse.Namespace, defaults: Any = None, **values: Any) -> Any:
    """An instance of `cls`: the flags given on the command line over `values`, over
    `defaults` (an instance) or the dataclass's own defaults; a bad value is told by its flag."""
    base = dataclasses.asdict(defaults) if defaults is not None else {}
    return checked(cls, lambda: cls(**{**base, **values, **given(args, cls)}))


def given(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` given on the command line."""
    names = (f.name for f in dataclasses.fields(cls))
    return {n: getattr(args, n) for n in names if getattr(args, n, None) is not None}


def checked(cls: type, make: Callable[[], Any]) -> Any:
    """`make()`, with an error about one of `cls`'s fields told by its flag."""
    try:
        return make()
    except ConfigError as e:
        if e.field is None:
            raise
        raise UserError(f"{flag_name(cls, e.field)} {e.detail}") from None


def add_model_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="DIR",
        help="CogLM checkpoint folder (or training run: its newest step), or a shipped model "
        "by name: shapes, fashion; default: shapes",
    )
    p.add_argument("--device", default="cpu", metavar="DEV", help="torch device (default: cpu)")
    p.add_argument("--seed", type=int, metavar="S", default=0, help="random seed (default: 0)")
    add_dtype_flag(p)


def add_dtype_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dtype",
        choices=("float32", "bfloat16"),
        default="float32",
        help="transformer precision (bfloat16: faster on CPUs with AVX-512 bf16 and on GPUs)",
    )


def add_sampling_flags(p: argparse.ArgumentParser, images: bool = True) -> None:
    """SamplingConfig's flags (`cogview.cli.flags`); `images=False` leaves out the settings of
    image sampling. A flag not given takes the model folder's sampling.json value, else the
    field's default (`CogView.sampling_config`)."""
    from cogview.sampling import SamplingConfig

    g = p.add_argument_group(
        "sampling (a flag not given takes the model's sampling.json value, else the default)"
    )
    add_flags(g, SamplingConfig, keep=lambda f: images or not f.metadata.get("images"))


def sampling_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The SamplingConfig fields given on the command line."""
    from cogview.sampling import SamplingConfig

    return given(args, SamplingConfig)


def check_sampling_flags(pipe: Any, args: argparse.Namespace, images: bool = True) -> None:
    """Bad sampling values fail before any work, naming their flag."""
    from cogview.sampling import SamplingConfig

    checked(SamplingConfig, lambda: pipe.sampling_config(images, **sampling_flags(args)))
