"""`cogview train-tokenizer` and `cogview tokenize`: build and inspect the unified vocabulary."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

from cogview.errors import UserError

DEFAULT_MAX_TEXT_LEN = 32
DEFAULT_MIN_FREQUENCY = 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train-tokenizer",
        help="train the unified tokenizer (text BPE + specials + image codes) on captions",
        description=(
            "Learn a byte-level BPE from the captions of a data set and write one JSON file "
            "holding the whole vocabulary: special and task tokens, text tokens, image codes."
        ),
    )
    p.add_argument("shards", metavar="SHARDS", help="data set folder, .tar shard or glob")
    p.add_argument(
        "--vocab-size",
        type=int,
        required=True,
        help="text BPE tokens, the 256 byte symbols included",
    )
    p.add_argument(
        "--image-codes",
        type=int,
        required=True,
        help="codebook size K of the VQVAE whose codes the vocabulary holds",
    )
    p.add_argument(
        "--max-text-len",
        type=int,
        default=DEFAULT_MAX_TEXT_LEN,
        help=f"text tokens kept per caption (default {DEFAULT_MAX_TEXT_LEN})",
    )
    p.add_argument(
        "--min-frequency",
        type=int,
        default=DEFAULT_MIN_FREQUENCY,
        help=f"fewest occurrences for a merge to be learned (default {DEFAULT_MIN_FREQUENCY})",
    )
    p.add_argument("--out", type=Path, required=True, help="tokenizer JSON file to write")
    p.set_defaults(func=run_train_tokenizer)

    p = subparsers.add_parser(
        "tokenize",
        help="show the ids and pieces of a text (debugging aid)",
        description="Encode TEXT with a tokenizer file and print its ids and token pieces.",
    )
    p.add_argument("text", metavar="TEXT", help="text to encode")
    p.add_argument("--tokenizer", type=Path, required=True, help="tokenizer JSON file")
    p.add_argument(
        "--no-truncate", action="store_true", help="show every token, past --max-text-len too"
    )
    p.set_defaults(func=run_tokenize)


def run_train_tokenizer(args: argparse.Namespace) -> int:
    import time
    import warnings

    from tqdm import tqdm

    from tokenizer import TextTruncatedWarning, TokenizerError, UnifiedTokenizer
    from tokenizer.unified import MIN_TEXT_VOCAB
    from train.data.loader import iter_samples, list_shards

    # check the flags before reading any data, naming the flag
    for flag, value, least in (
        ("--vocab-size", args.vocab_size, MIN_TEXT_VOCAB),
        ("--image-codes", args.image_codes, 1),
        ("--max-text-len", args.max_text_len, 1),
        ("--min-frequency", args.min_frequency, 1),
    ):
        if value < least:
            why = " (256 byte symbols plus some merges)" if flag == "--vocab-size" else ""
            raise UserError(f"{flag} must be at least {least}{why}, got {value}")
    if args.out.is_dir():
        raise UserError(f"--out {args.out} is a folder; give a file name like tokenizer.json")
    shards = list_shards(args.shards, split="train")
    if not shards:
        raise UserError(f"SHARDS {args.shards}: no training shards found")

    # Keep the captions: they are short, and encoding them afterwards reports how many
    # `--max-text-len` would cut.
    captions: list[str] = []

    def read() -> Iterator[str]:
        bar = tqdm(iter_samples(shards, decode_images=False), desc="captions", unit=" cap")
        for sample in bar:
            captions.append(sample.caption)
            yield sample.caption

    start = time.perf_counter()
    try:
        tok = UnifiedTokenizer.train(
            read(),
            vocab_size=args.vocab_size,
            image_codes=args.image_codes,
            max_text_len=args.max_text_len,
            min_frequency=args.min_frequency,
        )
    except TokenizerError as e:
        raise UserError(f"train-tokenizer: {e}") from e
    train_s = time.perf_counter() - start

    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", TextTruncatedWarning)
        lengths = [len(ids) for ids in tok.encode_texts(captions, truncate=False)]
    encode_s = time.perf_counter() - start
    path = tok.save(args.out)

    n = len(captions)
    cut = sum(length > tok.max_text_len for length in lengths)
    r = tok.layout()
    print(f"captions: {n} from {len(shards)} shard(s), trained at {n / train_s:,.0f} captions/s")
    print(f"encoded (batched) at {n / max(encode_s, 1e-9):,.0f} captions/s")
    print(
        f"text tokens per caption: mean {sum(lengths) / n:.1f}, max {max(lengths)}; "
        f"{cut} caption(s) longer than max_text_len={tok.max_text_len}"
    )
    print(
        f"vocab_size {tok.vocab_size}: specials 0..{len(tok.specials) - 1}, "
        f"text {r['text_range'][0]}..{r['text_range'][1] - 1} ({len(tok.text_range)} tokens), "
        f"image {r['image_range'][0]}..{r['image_range'][1] - 1} ({tok.num_image_codes} codes)"
    )
    if len(tok.text_range) < args.vocab_size:
        print(
            f"note: the captions gave only {len(tok.text_range)} text tokens of the "
            f"{args.vocab_size} asked (merges seen < --min-frequency times are not learned)"
        )
    print(f"fingerprint {tok.fingerprint}")
    print(f"wrote {path}")
    return 0


def run_tokenize(args: argparse.Namespace) -> int:
    import warnings

    from tokenizer import TextTruncatedWarning, TokenizerError, UnifiedTokenizer

    try:
        tok = UnifiedTokenizer.load(args.tokenizer)
    except TokenizerError as e:
        raise UserError(f"--tokenizer {e}") from e
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", TextTruncatedWarning)
        ids = tok.encode_text(args.text, truncate=not args.no_truncate)
    print(f"ids ({len(ids)}): {ids}")
    print(f"pieces: {[tok.piece(i) for i in ids]}")
    for w in caught:
        print(f"note: {w.message}")
    return 0
