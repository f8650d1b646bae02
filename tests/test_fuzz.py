"""Issue 20: an end-to-end fuzz of input handling (scripts/fuzz_inputs.py): 1,000 mutated tiny
datasets in the three layouts through `xmc train` / `evaluate` / `predict` (about 50 s here).
Each command succeeds or exits 2 with one `xmc: error:` line naming a file; no exception
escapes; no file outside the model folder changes; a `--model` that names the dataset, its folder
or one of its files is refused. `scripts/fuzz_inputs.py --rounds N --seed S` runs longer."""

from __future__ import annotations

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "fuzz_inputs.py"


def _fuzz_module():
    spec = importlib.util.spec_from_file_location("fuzz_inputs", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_mutated_datasets_succeed_or_fail_with_one_line_and_touch_nothing(tmp_path):
    report = _fuzz_module().fuzz(rounds=1000, seed=20, workdir=tmp_path)
    counts = report["counts"]
    assert report["failures"] == [], report["failures"][:5]
    assert all(counts[f"layout {layout}"] >= 333 for layout in ("raw-text", "xc-bow", "pecos-xmc-base"))
    # the mutations do reach every command both ways, and the --model hazards are exercised
    for cmd in ("train", "evaluate", "predict", "predict --text", "predict <stdin"):
        assert counts.get(f"{cmd} ok", 0) >= 50 and counts.get(f"{cmd} exit 2", 0) >= 50, (cmd, counts)
    assert counts["--model names the dataset, its folder or one of its files"] >= 50
    assert sum(v for k, v in counts.items() if k.startswith("mutation npz-")) >= 50
