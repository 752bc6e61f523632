"""Encoding speed of the unified tokenizer: captions/s, batched and one at a time.

    .venv/bin/python benchmarks/tokenizer_speed.py [--captions 20000] [--vocab-size 1000]

Captions are synthetic shapes-style sentences (seeded), so the figure is reproducible without
a data set. The best of `--repeats` runs is reported (the machine is shared).
"""

from __future__ import annotations

import argparse
import random
import time

from tokenizer import UnifiedTokenizer

COLOURS = ("red", "green", "blue", "yellow", "purple", "orange", "cyan", "magenta", "grey")
SHAPES = ("circle", "square", "triangle", "star", "hexagon", "heart", "cross")
SIZES = ("small", "large", "tiny", "big")
PLACES = ("top left", "top right", "bottom left", "bottom right", "centre", "left", "right")


def captions(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)

    def thing() -> str:
        return f"a {rng.choice(SIZES)} {rng.choice(COLOURS)} {rng.choice(SHAPES)}"

    out = []
    for _ in range(n):
        text = f"{thing()} at the {rng.choice(PLACES)}"
        if rng.random() < 0.5:
            text += f" and {thing()} at the {rng.choice(PLACES)}"
        out.append(text)
    return out


def best_rate(fn, n: int, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return n / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", type=int, default=20_000)
    parser.add_argument("--vocab-size", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    texts = captions(args.captions, seed=0)
    start = time.perf_counter()
    tok = UnifiedTokenizer.train(texts, vocab_size=args.vocab_size, image_codes=512)
    train_s = time.perf_counter() - start
    ids = tok.encode_texts(texts)
    tokens = sum(map(len, ids))

    batched = best_rate(lambda: tok.encode_texts(texts), len(texts), args.repeats)
    single = best_rate(lambda: [tok.encode_text(t) for t in texts], len(texts), args.repeats)
    print(f"{tok!r}")
    print(f"trained on {len(texts)} captions in {train_s:.2f} s")
    print(f"tokens per caption: {tokens / len(texts):.1f}")
    tokens_s = batched * tokens / len(texts)
    print(f"encode_texts (batched): {batched:,.0f} captions/s ({tokens_s:,.0f} tokens/s)")
    print(f"encode_text (one by one): {single:,.0f} captions/s")


if __name__ == "__main__":
    main()
