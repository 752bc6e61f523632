"""The README's A/B rows from the reports `benchmarks/prompt_ab_eval.sh` writes.

    python benchmarks/prompt_ab_table.py runs/ab/shipped runs/ab/rephrase/final ...

One markdown row per folder (its eval-t2i.json, eval-edit.json, eval-cap.json; a part not
measured is "-"): "all right" of text-to-image one and two objects in the training wording and
paraphrased, captioning, the three edit rows, reconstruction inpainting (strict / stated
attributes) and the held-out loss per task.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = ("1 obj", "1 obj para.", "2 obj", "2 obj para.", "captioning", "edit region",
           "edit scene", "edit blob", "reconstruction (stated)", "held-out loss t2i / cap / inp")


def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _load(folder: Path, part: str) -> dict[str, Any]:
    path = folder / f"eval-{part}.json"
    return json.loads(path.read_text()) if path.exists() else {}


def row(folder: Path) -> list[str]:
    t2i = _load(folder, "t2i").get("t2i", {})
    edit = _load(folder, "edit").get("edits", {})
    cap = _load(folder, "cap")

    def t2i_all(name: str) -> float | None:
        return t2i[name]["accuracy"].get("all") if name in t2i else None

    cells = [_pct(t2i_all(n)) for n in ("one_object", "one_object_paraphrased", "two_objects",
                                        "two_objects_paraphrased")]
    cells.append(_pct(cap["captioning"]["accuracy"].get("all")) if "captioning" in cap else "-")
    cells += [_pct(edit[s]["scene_all"]) if s in edit else "-" for s in ("region", "scene", "blob")]
    if "inpainting" in cap:
        inp = cap["inpainting"]
        cells.append(f"{_pct(inp['object_accuracy']['all'])} "
                     f"({_pct(inp['object_accuracy']['all_stated'])})")
    else:
        cells.append("-")
    loss = cap.get("held_out_loss", {})
    keys = ("t2i", "cap", "inp")
    cells.append(" / ".join(f"{loss[k]:.3f}" if k in loss else "-" for k in keys))
    return cells


def main(argv: list[str]) -> None:
    if not argv:
        sys.exit("usage: python benchmarks/prompt_ab_table.py FOLDER [FOLDER ...]")
    print("| model | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name in argv:
        print(f"| {name} | " + " | ".join(row(Path(name))) + " |")


if __name__ == "__main__":
    main(sys.argv[1:])
