"""One vocabulary for text and images: `[specials][text BPE][image codes]`.

Every id in the project comes from here. The layout is

    0 .. S-1          special and task tokens, in `SPECIAL_TOKENS` order
    S .. S+T-1        text: a byte-level BPE (HF `tokenizers`), its own ids shifted by S
    S+T .. S+T+K-1    image codes 0..K-1 of the VQVAE, shifted by S+T

The BPE has the 256 byte symbols in its alphabet, a ByteLevel pre-tokenizer and decoder and no
normalizer, so every unicode string encodes and decodes back to itself exactly. Special tokens
never come out of `encode_text`: a caption that contains the text "<eoi>" is just text.

The whole tokenizer is one JSON document (`save`/`load`, `to_json_str`/`from_json_str`).
`layout()` is the small summary that model checkpoints store; `check_layout` tells a model
trained on another vocabulary apart with a message naming the first difference.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

FORMAT = "cogview-tokenizer"
VERSION = 1

TASKS = ("t2i", "cap", "inp", "sr")
# Order is part of the file format: ids 0.. are assigned in this order.
SPECIAL_TOKENS = (
    "<pad>",
    "<unk>",
    "<boi>",
    "<eoi>",
    "<bot>",
    "<eot>",
    "<mask>",
    *(f"<{task}>" for task in TASKS),
)
BYTE_ALPHABET_SIZE = 256
# A text vocabulary of bare bytes would make every caption as long as its UTF-8 encoding; ask
# for at least a few merges so that a typo like `--vocab-size 25` is caught.
MIN_MERGES = 8
MIN_TEXT_VOCAB = BYTE_ALPHABET_SIZE + MIN_MERGES
FINGERPRINT_CHARS = 16
_TRAIN_BATCH = 1024


class TokenizerError(ValueError):
    """Bad tokenizer file, bad training arguments, or ids/codes outside their range."""


class TextTruncatedWarning(UserWarning):
    """A caption had more than `max_text_len` tokens and was cut."""


def _byte_symbols() -> dict[str, int]:
    """The byte-level alphabet: printable symbol -> the byte it stands for.

    Bytes that are printable Latin-1 stand for themselves; the others are shifted to 256.. so
    that every byte has a visible, non-space symbol (this is the mapping ByteLevel uses).
    """
    kept = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    kept += list(range(ord("®"), ord("ÿ") + 1))
    symbols = {chr(b): b for b in kept}
    shift = 0
    for b in range(BYTE_ALPHABET_SIZE):
        if b not in kept:
            symbols[chr(BYTE_ALPHABET_SIZE + shift)] = b
            shift += 1
    return symbols


_BYTE_OF_SYMBOL = _byte_symbols()


def _is_int(x: Any) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, (bool, np.bool_))


def _new_bpe() -> Tokenizer:
    bpe = Tokenizer(models.BPE())
    # no normalizer: it would change text and break the exact round trip
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    return bpe


def _check_bpe(bpe: Tokenizer) -> None:
    """Refuse a BPE that could not round-trip every string or whose ids have holes."""
    spec = json.loads(bpe.to_str())
    model = spec.get("model") or {}
    if model.get("type") != "BPE":
        raise TokenizerError(f"bpe model must be BPE, got {model.get('type')!r}")
    if model.get("dropout") not in (None, 0, 0.0):
        raise TokenizerError("bpe model has dropout: encodings would not be deterministic")
    if spec.get("normalizer") is not None:
        raise TokenizerError("bpe must have no normalizer (it would change the text)")
    pre = spec.get("pre_tokenizer") or {}
    if pre.get("type") != "ByteLevel" or pre.get("add_prefix_space"):
        raise TokenizerError("bpe pre_tokenizer must be ByteLevel without add_prefix_space")
    if (spec.get("decoder") or {}).get("type") != "ByteLevel":
        raise TokenizerError("bpe decoder must be ByteLevel")
    if spec.get("added_tokens"):
        raise TokenizerError("bpe must have no added tokens (specials live outside the BPE)")
    vocab = bpe.get_vocab(with_added_tokens=False)
    if sorted(vocab.values()) != list(range(len(vocab))):
        raise TokenizerError("bpe vocab ids are not 0..n-1 without holes")
    missing = [s for s in _BYTE_OF_SYMBOL if s not in vocab]
    if missing:
        raise TokenizerError(f"bpe vocab lacks {len(missing)} of the 256 byte symbols")
    foreign = [t for t in vocab if not all(c in _BYTE_OF_SYMBOL for c in t)]
    if foreign:
        raise TokenizerError(f"bpe vocab has tokens that are not byte-level, e.g. {foreign[0]!r}")


class UnifiedTokenizer:
    """Specials, text BPE and image codes in one id space. Build with `train`, `load` or
    `from_json_str`; the constructor takes an already trained byte-level BPE."""

    def __init__(self, bpe: Tokenizer, *, image_codes: int, max_text_len: int = 32) -> None:
        if not _is_int(image_codes) or image_codes < 1:
            raise TokenizerError(f"image_codes must be a positive integer, got {image_codes!r}")
        if not _is_int(max_text_len) or max_text_len < 1:
            raise TokenizerError(f"max_text_len must be a positive integer, got {max_text_len!r}")
        _check_bpe(bpe)
        self._bpe = bpe
        self._num_image_codes = int(image_codes)
        self._max_text_len = int(max_text_len)
        n_special = len(SPECIAL_TOKENS)
        n_text = bpe.get_vocab_size(with_added_tokens=False)
        self._specials = {tok: i for i, tok in enumerate(SPECIAL_TOKENS)}
        self._text_range = range(n_special, n_special + n_text)
        self._image_range = range(self._text_range.stop, self._text_range.stop + image_codes)
        self._fingerprint = self._compute_fingerprint()

    # ---------------------------------------------------------------- building

    @classmethod
    def train(
        cls,
        captions: Iterable[str],
        *,
        vocab_size: int,
        image_codes: int,
        max_text_len: int = 32,
        min_frequency: int = 2,
    ) -> UnifiedTokenizer:
        """Learn a byte-level BPE of `vocab_size` text tokens (the 256 bytes included) from
        `captions`. The result can have fewer text tokens when the captions offer fewer merges
        seen at least `min_frequency` times; `text_range` gives the real size."""
        if not _is_int(vocab_size) or vocab_size < MIN_TEXT_VOCAB:
            raise TokenizerError(
                f"vocab_size must be an integer >= {MIN_TEXT_VOCAB} (the {BYTE_ALPHABET_SIZE} "
                f"byte symbols plus at least {MIN_MERGES} merges), got {vocab_size!r}"
            )
        if not _is_int(image_codes) or image_codes < 1:
            raise TokenizerError(f"image_codes must be a positive integer, got {image_codes!r}")
        if not _is_int(max_text_len) or max_text_len < 1:
            raise TokenizerError(f"max_text_len must be a positive integer, got {max_text_len!r}")
        if not _is_int(min_frequency) or min_frequency < 1:
            raise TokenizerError(f"min_frequency must be a positive integer, got {min_frequency!r}")
        if isinstance(captions, (str, bytes)):
            raise TokenizerError("captions must be an iterable of strings, not one string")

        count = 0

        def batches() -> Iterator[list[str]]:
            # the trainer takes batches of strings, which is much faster than one at a time
            nonlocal count
            batch: list[str] = []
            for caption in captions:
                if not isinstance(caption, str):
                    raise TokenizerError(
                        f"caption {count} is a {type(caption).__name__}, not a string"
                    )
                batch.append(caption)
                count += 1
                if len(batch) == _TRAIN_BATCH:
                    yield batch
                    batch = []
            if batch:
                yield batch

        bpe = _new_bpe()
        trainer = trainers.BpeTrainer(
            vocab_size=int(vocab_size),
            min_frequency=int(min_frequency),
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            special_tokens=[],
            show_progress=False,
        )
        bpe.train_from_iterator(batches(), trainer=trainer)
        if count == 0:
            raise TokenizerError("no captions to train the tokenizer on")
        return cls(bpe, image_codes=int(image_codes), max_text_len=int(max_text_len))

    # ---------------------------------------------------------------- ids by name

    @property
    def specials(self) -> dict[str, int]:
        """Special token -> id, e.g. `{"<pad>": 0, ...}` (a copy)."""
        return dict(self._specials)

    @property
    def pad_id(self) -> int:
        return self._specials["<pad>"]

    @property
    def unk_id(self) -> int:
        return self._specials["<unk>"]

    @property
    def boi_id(self) -> int:
        return self._specials["<boi>"]

    @property
    def eoi_id(self) -> int:
        return self._specials["<eoi>"]

    @property
    def bot_id(self) -> int:
        return self._specials["<bot>"]

    @property
    def eot_id(self) -> int:
        return self._specials["<eot>"]

    @property
    def mask_id(self) -> int:
        return self._specials["<mask>"]

    def task_id(self, name: str) -> int:
        """Id of the task token for `name` in `TASKS` ("t2i", "cap", "inp", "sr")."""
        if name not in TASKS:
            raise TokenizerError(f"unknown task {name!r}; tasks are {', '.join(TASKS)}")
        return self._specials[f"<{name}>"]

    # ---------------------------------------------------------------- sizes

    @property
    def vocab_size(self) -> int:
        """Total ids: specials + text + image codes (the size of an embedding table)."""
        return self._image_range.stop

    @property
    def text_range(self) -> range:
        return self._text_range

    @property
    def image_range(self) -> range:
        return self._image_range

    @property
    def num_image_codes(self) -> int:
        return self._num_image_codes

    @property
    def max_text_len(self) -> int:
        """Most text tokens `encode_text` returns (the <bot>/<eot> around them not counted)."""
        return self._max_text_len

    # ---------------------------------------------------------------- text

    def _truncate(self, ids: list[int], truncate: bool) -> tuple[list[int], int]:
        if not truncate or len(ids) <= self._max_text_len:
            return ids, 0
        return ids[: self._max_text_len], len(ids) - self._max_text_len

    def encode_text(self, text: str, *, truncate: bool = True) -> list[int]:
        """Text ids (in `text_range`) of `text`. With `truncate`, keep the first
        `max_text_len` ids and warn (`TextTruncatedWarning`) once if any were cut; without it,
        return every id (e.g. to measure caption lengths)."""
        if not isinstance(text, str):
            raise TokenizerError(f"text must be a string, got {type(text).__name__}")
        offset = self._text_range.start
        ids = [i + offset for i in self._bpe.encode(text, add_special_tokens=False).ids]
        ids, cut = self._truncate(ids, truncate)
        if cut:
            warnings.warn(
                f"text of {len(ids) + cut} tokens truncated to max_text_len={self._max_text_len} "
                f"({cut} tokens cut)",
                TextTruncatedWarning,
                stacklevel=2,
            )
        return ids

    def encode_texts(self, texts: Sequence[str], *, truncate: bool = True) -> list[list[int]]:
        """`encode_text` for many texts at once (the BPE's parallel batch path). Truncation
        gives one warning for the whole batch."""
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TokenizerError(f"text {i} must be a string, got {type(text).__name__}")
        # encode_batch_fast skips offset tracking, which we do not use
        encode = getattr(self._bpe, "encode_batch_fast", self._bpe.encode_batch)
        offset = self._text_range.start
        out: list[list[int]] = []
        n_cut = tokens_cut = 0
        for enc in encode(texts, add_special_tokens=False):
            ids, cut = self._truncate([i + offset for i in enc.ids], truncate)
            n_cut += cut > 0
            tokens_cut += cut
            out.append(ids)
        if n_cut:
            warnings.warn(
                f"{n_cut} of {len(texts)} texts truncated to max_text_len={self._max_text_len} "
                f"({tokens_cut} tokens cut)",
                TextTruncatedWarning,
                stacklevel=2,
            )
        return out

    def decode_text(self, ids: Iterable[int]) -> str:
        """The text of the text ids among `ids`; specials and image ids are skipped, so a whole
        `<bot> ... <eot>` span (or a sampled sequence) decodes directly."""
        start, stop = self._text_range.start, self._text_range.stop
        raw = [int(i) - start for i in _as_int_list(ids) if start <= int(i) < stop]
        return self._bpe.decode(raw, skip_special_tokens=False)

    def piece(self, id: int) -> str:
        """A readable name for one id: the special token, the text the BPE token stands for
        (bytes that are not whole UTF-8 characters shown as `<0xNN>`), or `<img:N>`."""
        if not _is_int(id) or not 0 <= id < self.vocab_size:
            raise TokenizerError(f"id {id!r} outside the vocabulary 0..{self.vocab_size - 1}")
        id = int(id)
        if id < self._text_range.start:
            return SPECIAL_TOKENS[id]
        if id >= self._image_range.start:
            return f"<img:{id - self._image_range.start}>"
        symbols = self._bpe.id_to_token(id - self._text_range.start)
        return _readable(bytes(_BYTE_OF_SYMBOL[s] for s in symbols))

    # ---------------------------------------------------------------- image codes

    def codes_to_ids(self, codes: Any) -> Any:
        """VQVAE codes (0..K-1) -> vocabulary ids in `image_range`. Takes a torch tensor or
        numpy array of any shape and integer dtype (returned as int64, same shape/device), or
        one int (returned as int)."""
        return _shift(codes, 0, self._num_image_codes, self._image_range.start, "image code")

    def ids_to_codes(self, ids: Any) -> Any:
        """Inverse of `codes_to_ids`; ids outside `image_range` raise TokenizerError."""
        r = self._image_range
        return _shift(ids, r.start, r.stop, -r.start, "image id")

    # ---------------------------------------------------------------- files

    def to_json_str(self) -> str:
        """The whole tokenizer as one JSON document (what `save` writes)."""
        doc = {
            "format": FORMAT,
            "version": VERSION,
            "specials": list(SPECIAL_TOKENS),
            "image_codes": self._num_image_codes,
            "max_text_len": self._max_text_len,
            "bpe": json.loads(self._bpe.to_str()),
        }
        return json.dumps(doc, ensure_ascii=False, indent=1)

    @classmethod
    def from_json_str(cls, text: str, source: str = "<string>") -> UnifiedTokenizer:
        """Parse `to_json_str` output; errors name `source` (a file name, or where the JSON
        came from)."""
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise TokenizerError(f"{source}: not a JSON document ({e})") from e
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            got = doc.get("format") if isinstance(doc, dict) else type(doc).__name__
            raise TokenizerError(f"{source}: not a {FORMAT} file (format is {got!r})")
        if doc.get("version") != VERSION:
            raise TokenizerError(
                f"{source}: {FORMAT} version {doc.get('version')!r}; this code reads {VERSION}"
            )
        missing = [k for k in ("specials", "image_codes", "max_text_len", "bpe") if k not in doc]
        if missing:
            raise TokenizerError(f"{source}: missing field(s) {', '.join(missing)}")
        if doc["specials"] != list(SPECIAL_TOKENS):
            raise TokenizerError(
                f"{source}: specials {doc['specials']!r} differ from {list(SPECIAL_TOKENS)!r}"
            )
        if not isinstance(doc["bpe"], dict):
            raise TokenizerError(f"{source}: field bpe must be a JSON object")
        try:
            bpe = Tokenizer.from_str(json.dumps(doc["bpe"]))
        except Exception as e:  # the Rust parser raises plain Exception
            raise TokenizerError(f"{source}: field bpe is not a valid tokenizer: {e}") from e
        try:
            return cls(bpe, image_codes=doc["image_codes"], max_text_len=doc["max_text_len"])
        except TokenizerError as e:
            raise TokenizerError(f"{source}: {e}") from e

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write the tokenizer to one JSON file (atomically: a crash leaves no half file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(self.to_json_str())
                f.write("\n")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> UnifiedTokenizer:
        """Read a file written by `save`. Any problem raises TokenizerError naming the file."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError as e:
            raise TokenizerError(f"{path}: tokenizer file not found") from e
        except (OSError, UnicodeDecodeError) as e:
            raise TokenizerError(f"{path}: cannot read tokenizer file ({e})") from e
        return cls.from_json_str(text, source=str(path))

    # ---------------------------------------------------------------- identity

    def _compute_fingerprint(self) -> str:
        # Hash what decides the ids, in a canonical form, not the BPE file as the library
        # writes it: a newer `tokenizers` may add fields or spell merges differently.
        model = json.loads(self._bpe.to_str())["model"]
        merges = [m.split(" ") if isinstance(m, str) else list(m) for m in model["merges"]]
        canonical = {
            "specials": list(SPECIAL_TOKENS),
            "vocab": sorted(model["vocab"].items(), key=lambda kv: kv[1]),
            "merges": merges,
            "image_codes": self._num_image_codes,
            "max_text_len": self._max_text_len,
        }
        blob = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:FINGERPRINT_CHARS]

    @property
    def fingerprint(self) -> str:
        """sha256 hex prefix of the canonical vocabulary (specials, BPE vocab and merges, image
        codes, max_text_len): equal fingerprints mean equal encodings."""
        return self._fingerprint

    def layout(self) -> dict[str, Any]:
        """Small JSON-able summary that model checkpoints store next to their config."""
        return {
            "vocab_size": self.vocab_size,
            "specials": self.specials,
            "text_range": [self._text_range.start, self._text_range.stop],
            "image_range": [self._image_range.start, self._image_range.stop],
            "image_codes": self._num_image_codes,
            "max_text_len": self._max_text_len,
            "fingerprint": self._fingerprint,
        }

    def check_layout(self, layout: dict[str, Any], source: str = "checkpoint") -> None:
        """Raise TokenizerError naming the first way `layout` (from `source`) differs from this
        tokenizer's. Sizes are compared before the fingerprint so the message says the most."""
        if not isinstance(layout, dict):
            raise TokenizerError(f"{source}: tokenizer layout must be a dict, got {layout!r}")
        mine = self.layout()
        for key, want in mine.items():
            if key not in layout:
                raise TokenizerError(f"{source}: tokenizer layout lacks {key!r}")
            got = layout[key]
            if isinstance(want, list) and isinstance(got, (list, tuple)):
                got = list(got)
            if got != want:
                hint = (
                    " (same sizes, different BPE: a tokenizer trained on other captions)"
                    if key == "fingerprint"
                    else ""
                )
                raise TokenizerError(
                    f"{source} was made with another vocabulary: {key} is {got!r} there but "
                    f"{want!r} in this tokenizer{hint}"
                )

    def __repr__(self) -> str:
        return (
            f"UnifiedTokenizer(vocab_size={self.vocab_size}, specials={len(SPECIAL_TOKENS)}, "
            f"text={len(self._text_range)}, image_codes={self._num_image_codes}, "
            f"max_text_len={self._max_text_len}, fingerprint={self._fingerprint!r})"
        )


def _readable(data: bytes) -> str:
    """UTF-8 text, with bytes that are only part of a character written as `<0xNN>`."""
    out = []
    while data:
        try:
            out.append(data.decode("utf-8"))
            break
        except UnicodeDecodeError as e:
            out.append(data[: e.start].decode("utf-8"))
            out.extend(f"<0x{b:02X}>" for b in data[e.start : e.end])
            data = data[e.end :]
    return "".join(out)


def _as_int_list(ids: Iterable[int]) -> list[int]:
    if hasattr(ids, "tolist"):  # torch tensor or numpy array
        ids = ids.tolist()
    if _is_int(ids):
        return [int(ids)]
    return [int(i) for i in ids]


def _shift(values: Any, low: int, high: int, offset: int, what: str) -> Any:
    """Check `low <= values < high` and return `values + offset` as int64 (int for an int)."""
    if _is_int(values):
        if not low <= values < high:
            raise TokenizerError(f"{what} {int(values)} outside {low}..{high - 1}")
        return int(values) + offset

    torch = sys.modules.get("torch")  # a tensor cannot exist unless torch is imported
    if torch is not None and isinstance(values, torch.Tensor):
        if values.dtype == torch.bool or values.is_floating_point() or values.is_complex():
            raise TokenizerError(f"{what}s must have an integer dtype, got {values.dtype}")
        values = values.to(torch.int64)  # before the offset, so int8/uint8 cannot overflow
        outside = (values < low) | (values >= high)
        if outside.any():  # one host sync for a GPU tensor, the value only on the error path
            bad = int(values[outside].flatten()[0])
            raise TokenizerError(f"{what} {bad} outside {low}..{high - 1}")
        return values + offset

    if isinstance(values, np.ndarray):
        if not np.issubdtype(values.dtype, np.integer):
            raise TokenizerError(f"{what}s must have an integer dtype, got {values.dtype}")
        if values.size:
            # compare in the array's own dtype first: a uint64 above 2**63 would wrap in int64
            lo, hi = int(values.min()), int(values.max())
            if lo < low or hi >= high:
                bad = lo if lo < low else hi
                raise TokenizerError(f"{what} {bad} outside {low}..{high - 1}")
        return values.astype(np.int64) + offset

    raise TokenizerError(
        f"{what}s must be a torch tensor, numpy array or int, got {type(values).__name__}"
    )
