"""Every number the README quotes from a benchmark is backed by a record in ``bench/results/``.

The bench scripts write ``bench/results/<run_id>.csv`` and ``.md`` (``bench/record.py``): the run's
DuckDB rows, machine, commit and command. Here:

* every run id the README cites has both files, and the CSV's rows carry that id;
* every paragraph, bullet or table of the README that states a measurement (a number with a unit
  of time, memory or speed-up, or a P@k-style two-decimal figure) cites at least one run id
  (a table may cite it in the paragraph just before it);
* every number in such a table (first column, the row's name, aside) and every two-decimal,
  "×" or signed figure of such a paragraph is one of the cited records' numbers, rounded as the
  README writes it; a "×" figure may instead be the ratio, and a signed one the difference, of
  two values of one field on one dataset (xmc's and PECOS's train_s on yso-finna-en).

It cannot tell a figure computed some other way from a coincidence among a large record's
numbers, so a derived figure the README states should be one the bench script records.
"""

from __future__ import annotations

import csv
import itertools
import json
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
RESULTS = REPO / "bench" / "results"

# the bench's name may hold hyphens (xlgen-eurlex-20261130T100846-51b117)
RUN_ID = re.compile(r"(?<![\w-])[a-z]+(?:-[a-z]+)*-\d{8}T\d{6}(?:-[0-9a-f]{6})?\b")
FULL_RUN_ID = re.compile(r"^[a-z]+(?:-[a-z]+)*-\d{8}T\d{6}-[0-9a-f]{6}$")
# a number as people write it: 1,234.5 or −0.03 (not part of a word such as float32 or P@1)
NUMBER = re.compile(r"(?<![\w.@/])[−-]?\d{1,3}(?:,\d{3})+(?:\.\d+)?(?![\w.])|(?<![\w.@/])[−-]?\d+(?:\.\d+)?(?![\w.]|\.\d)")
# Numbers that are versions, settings or bounds, not measurements: the only exemptions.
NOT_MEASURED = re.compile(
    r"(?:[<>=]=?|Dagster |scikit-learn |numpy |scipy |Python )\d+(?:\.\d+)+"  # versions
    r"|readers wait 5 s and writers 60 s"  # results_db lock timeouts (settings)
    r"|at most 10×"  # the input-width bound of xmc_core/data.py
    r"|`threshold` is 0\.01"  # XR-Transformer's ranker setting
)
MEASUREMENT = re.compile(r"\d(?:\.\d+)?\s?(?:×|x\b|s\b|ms\b|%|GB\b|MB\b|GiB\b)|\b\d{1,3}\.\d\d\b")


def blocks(text: str) -> list[tuple[int, str]]:
    """README split into paragraphs, bullets and tables (first line number, text); code blocks dropped."""
    out, cur, start, in_code = [], [], 0, False
    for no, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_code = not in_code
            if cur:
                out.append((start, "\n".join(cur)))
                cur = []
            continue
        if in_code:
            continue
        is_table = line.lstrip().startswith("|")
        new_block = (not line.strip() or line.startswith("#") or line.startswith("- ")
                     or (cur and cur[-1].lstrip().startswith("|") != is_table))
        if new_block and cur:
            out.append((start, "\n".join(cur)))
            cur = []
        if line.strip() and not line.startswith("#"):
            if not cur:
                start = no
            cur.append(line.strip() if is_table else line)
    if cur:
        out.append((start, "\n".join(cur)))
    return out


def _value(tok: str) -> float:
    return float(tok.replace(",", "").replace("−", "-"))


def _decimals(tok: str) -> int:
    return len(tok.split(".")[1]) if "." in tok else 0


def record_fields(run_id: str) -> dict[str, list[float]]:
    """A record's numbers by ``<dataset>::<field>``: the CSV's columns and the leaves of the JSON
    inside them (by key), plus ``"md"``: every number of its markdown page (tables of means, notes)."""
    fields: dict[str, list[float]] = {}

    def walk(key, v):
        if isinstance(v, bool) or v is None:
            return
        if isinstance(v, (int, float)):
            fields.setdefault(key, []).append(float(v))
        elif isinstance(v, dict):
            for k, x in v.items():
                walk(key.split("::")[0] + "::" + k, x)
        elif isinstance(v, list):
            for x in v:
                walk(key, x)
        elif isinstance(v, str):
            try:
                walk(key, json.loads(v))
            except ValueError:
                pass

    with open(RESULTS / f"{run_id}.csv", newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            for k, v in row.items():
                walk(f"{row.get('dataset')}::{k}", v)
    md = (RESULTS / f"{run_id}.md").read_text(encoding="utf-8")
    fields["md"] = [_value(t) for t in NUMBER.findall(md)]
    return fields


def backed(tok: str, fields: dict[str, list[float]], kind: str = "value") -> bool:
    """Is ``tok`` (as written, rounded to its decimals) one of the record's numbers — or, for
    ``kind`` "ratio" (an "N×" figure) or "difference" (a signed figure), the ratio or difference
    of two numbers of one field of one dataset (xmc's and PECOS's train_s on yso-finna-en)?"""
    d, v = _decimals(tok), abs(_value(tok)) if kind == "difference" else _value(tok)
    tol = 0.5 * 10 ** -d + 1e-9
    # a page's loose numbers back a plain value (the sweep's table of means); a "×" figure is a
    # recorded ratio (speedup_vs_sklearn, x_plain) or one computed from a pair below
    plain = [k for k in fields if kind != "ratio" or re.search(r"speedup|ratio|x_plain", k)]
    if any(abs(n - v) <= tol for k in plain for n in fields[k]):
        return True
    for key, nums in fields.items():
        if key == "md":
            continue  # every number of a page: any ratio would be found among them
        pairs = itertools.permutations(sorted({n for n in nums if n > 0}), 2)
        if kind == "ratio" and any(abs(a / b - v) <= tol for a, b in pairs):
            return True
        if kind == "difference" and any(abs(abs(a - b) - v) <= tol for a, b in pairs):
            return True
    return False


def prose_tokens(block: str) -> list[tuple[str, str]]:
    """(number, kind) for the figures of a paragraph that a record must hold: two-decimal numbers,
    "×" figures (ratios; "0.64–0.95×" both ends) and signed figures (differences)."""
    out = []
    for m in NUMBER.finditer(block):
        tok, before, after = m.group(0), block[max(0, m.start() - 1):m.start()], block[m.end():m.end() + 12]
        if re.match(r"\s?×|–[\d.]+\s?×", after):
            out.append((tok, "ratio"))
        elif before == "+" or tok.startswith(("−", "-")):
            out.append((tok, "difference"))
        elif _decimals(tok) == 2:
            out.append((tok, "value"))
    return out


def cited_ids() -> list[str]:
    return sorted(set(RUN_ID.findall(README.read_text(encoding="utf-8"))))


def test_every_cited_run_has_its_record():
    ids = cited_ids()
    assert ids, "the README cites no benchmark run"
    problems = []
    for run_id in ids:
        if not FULL_RUN_ID.match(run_id):
            problems.append(f"{run_id}: not a full run id (<bench>-<yyyymmddThhmmss>-<6 hex>)")
            continue
        for ext in ("csv", "md"):
            if not (RESULTS / f"{run_id}.{ext}").is_file():
                problems.append(f"bench/results/{run_id}.{ext} missing")
        if (RESULTS / f"{run_id}.csv").is_file():
            with open(RESULTS / f"{run_id}.csv", newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if not rows or {r["run_id"] for r in rows} != {run_id}:
                problems.append(f"bench/results/{run_id}.csv: rows of another run, or none")
    assert not problems, "\n".join(problems)


def _table_cells(table: str) -> list[str]:
    rows = [r for r in table.splitlines() if not re.match(r"^\|[\s|:-]+\|$", r)][1:]  # header and rule off
    return [c for r in rows for c in r.strip().strip("|").split("|")[1:]]


def test_every_measurement_cites_a_record_that_holds_it():
    text = README.read_text(encoding="utf-8")
    problems = []
    bl = blocks(text)
    for i, (line, block) in enumerate(bl):
        is_table = block.startswith("|")
        ids = RUN_ID.findall(block)
        if is_table and not ids and i > 0:
            ids = RUN_ID.findall(bl[i - 1][1])
        block = NOT_MEASURED.sub("", block)
        measured = [m.group(0) for m in MEASUREMENT.finditer("\n".join(_table_cells(block)) if is_table else block)]
        if not measured:
            continue
        if not ids:
            problems.append(f"README.md:{line}: states {measured[0]!r} without citing a bench/results run")
            continue
        if not all((RESULTS / f"{r}.csv").is_file() for r in ids):
            continue  # reported by test_every_cited_run_has_its_record
        fields: dict[str, list[float]] = {}
        for r in ids:
            for k, v in record_fields(r).items():
                fields.setdefault(k, []).extend(v)
        if is_table:
            toks = [(t, "value") for c in _table_cells(block) for t in NUMBER.findall(c)]
        else:
            toks = prose_tokens(RUN_ID.sub("", block))
        for tok, kind in toks:
            if not backed(tok, fields, kind):
                problems.append(f"README.md:{line}: {tok} ({kind}) is in none of {', '.join(ids)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("tok,kind,fields,ok", [
    ("93.54", "value", {"p1": [93.5388]}, True), ("93.54", "value", {"p1": [93.55]}, False),
    ("1,599", "value", {"peak_rss_mb": [1599.2]}, True),
    ("0.50", "ratio", {"yso::train_s": [59.4, 119.7]}, True),
    ("0.50", "ratio", {"yso::train_s": [59.4], "yso::predict_s": [119.7]}, False),  # across fields: no
    ("0.50", "ratio", {"yso::train_s": [59.4], "eurlex::train_s": [119.7]}, False),  # across datasets: no
    ("0.50", "ratio", {"md": [59.4, 119.7]}, False),  # not among a page's loose numbers
    ("0.50", "value", {"yso::train_s": [59.4, 119.7]}, False),  # a ratio only where the README says ×
    ("−0.40", "difference", {"s::p1": [80.93, 81.33]}, True), ("2.1", "ratio", {"s::x": [1.0, 3.0]}, False)])
def test_backed_rounds_as_written(tok, kind, fields, ok):
    assert backed(tok, fields, kind) is ok


def test_prose_tokens_kinds():
    assert prose_tokens("in 0.46× the time, 0.64–0.95× on all; P@1 93.54 (+0.69, −0.13), 2 threads") == [
        ("0.46", "ratio"), ("0.64", "ratio"), ("0.95", "ratio"), ("93.54", "value"), ("0.69", "difference"),
        ("−0.13", "difference")]
