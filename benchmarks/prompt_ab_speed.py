"""Training time of the prompt A/B's contenders: seconds a step of the recipe's first CogLM
stage, each contender run alone for a few steps on the recipe's token shards.

    .venv/bin/python benchmarks/prompt_ab_speed.py                       # the three contenders
    .venv/bin/python benchmarks/prompt_ab_speed.py --steps 60 --threads 2 \\
        --contender "head=--contrastive-weight 0.1 --contrastive-pool last"

Each contender is `benchmarks/prompt_ab.sh`'s first stage with its flags, cut to `--steps`
steps (`STAGE1_STEPS`, `STAGE1_ONLY`), from scratch into a temporary folder; TOKENS and BIN
are passed on to it. The first `--skip` steps (start-up, first
allocations) are left out; the rest give the mean seconds a step and, of those, the seconds
the step waited for its batch (`data_wait_s`: building the task sequences and, with
`--text-encoder`, encoding the prompts, which happens in the training process). The recipe's
time is the mean times its 7500 CogLM steps (4500 + 2000 + 1000). Run it with nothing else
on the machine: the load average before and after each run is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE_STEPS = 4500 + 2000 + 1000
CONTENDERS = {
    "learnt BPE embeddings": "",
    "--rephrase 0.5": "--rephrase 0.5",
    "--text-encoder minilm": "--text-encoder minilm",
}


def run(name: str, flags: str, steps: int, threads: int, skip: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "RUNS": tmp,
               "STAGE1_STEPS": str(steps), "STAGE1_ONLY": "1"}
        subprocess.run(["bash", "benchmarks/prompt_ab.sh", "speed", *shlex.split(flags)],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
        rows = [json.loads(line) for line in Path(f"{tmp}/speed/coglm/metrics.jsonl").open()]
    timed = [r for r in rows if "step_s" in r][skip:]
    if not timed:
        raise SystemExit(f"{name}: no step after the first {skip} to time: raise --steps")
    return {"step_s": statistics.mean(r["step_s"] for r in timed),
            "data_wait_s": statistics.mean(r["data_wait_s"] for r in timed)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=50, help="steps per contender (default 50)")
    p.add_argument("--skip", type=int, default=10, help="first steps left out (default 10)")
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run")
    p.add_argument("--contender", action="append", metavar="NAME=FLAGS",
                   help="a contender instead of the three (repeatable)")
    args = p.parse_args()
    contenders = dict(c.split("=", 1) for c in args.contender) if args.contender else CONTENDERS
    print(f"{args.steps - args.skip} timed steps each, {args.threads} threads")
    print("| contender | s a step | of which waiting for the batch | 7500 recipe steps |")
    print("|---|---|---|---|")
    for name, flags in contenders.items():
        load = os.getloadavg()[0]
        r = run(name, flags, args.steps, args.threads, args.skip)
        minutes = round(r["step_s"] * RECIPE_STEPS / 60)  # whole minutes: never "2 h 60 min"
        print(f"| {name} | {r['step_s']:.2f} | {r['data_wait_s']:.2f} | "
              f"{minutes // 60} h {minutes % 60} min |  (load {load:.1f} -> "
              f"{os.getloadavg()[0]:.1f})", flush=True)


if __name__ == "__main__":
    main()
