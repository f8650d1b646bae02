"""End-to-end fuzz of xmc's input handling: mutated tiny datasets through `xmc train`, `evaluate`
and `predict`.

Each round writes a tiny dataset in one of the three layouts (raw-text, xc-bow, pecos-xmc-base;
plain or gzip; PECOS with Y as ids or as a .npz, with or without a tfidf-* folder), mutates it
(bytes flipped or inserted, lines dropped, duplicated, swapped or truncated, headers altered,
encodings changed, files emptied, removed or gzipped, matrices given negative, NaN or misshapen
entries, label names given invisible or decomposed characters, ids made huge or negative), then
runs `xmc train --data D --model D/../model`, and where that succeeds `xmc evaluate` and
`xmc predict --data` on it, in this process (`xmc_core.cli.main`).

Every command must either succeed (exit 0) or exit 2 with exactly one line on stderr,
`xmc: error: ...`, naming a file or folder of the dataset (or the model); anything else (an
exception escaping `main`, another exit code, other output on stderr) is a failure. After each
round every file outside the model folder must be byte-identical (and no temporary name left
behind).

    .venv/bin/python scripts/fuzz_inputs.py --rounds 1000 [--seed 0] [--out report.json]

prints the counts (rounds per layout and mutation, outcomes per command) and the failures, and
exits 1 when there is any. tests/test_fuzz.py runs a bounded number of rounds in CI.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from pathlib import Path

import numpy as np
import scipy.sparse as sp

LAYOUTS = ("raw-text", "xc-bow", "pecos-xmc-base")
TOPICS = {
    "grain": "wheat corn harvest barley crop farmer tonnes",
    "crude": "oil barrel opec refinery pipeline petroleum",
    "money": "bank interest rate dollar currency loan",
    "ship": "port vessel cargo tanker harbour freight",
    "metal": "copper gold zinc mine ore nickel",
}


# --------------------------------------------------------------------------- seed datasets


def _docs(rng: np.random.Generator, n: int) -> tuple[list[str], list[list[int]]]:
    names = sorted(TOPICS)
    texts, labels = [], []
    for _ in range(n):
        picked = sorted(rng.choice(len(names), size=int(rng.integers(1, 3)), replace=False).tolist())
        words = [w for j in picked for w in rng.choice(TOPICS[names[j]].split(), size=4).tolist()]
        if rng.random() < 0.3:
            words.append(rng.choice(["café", "Zürich", "naïve", "東京", "ölpreis"]))
        texts.append(" ".join(words))
        labels.append(picked)
    return texts, labels


def _bow(texts: list[str], vocab: dict[str, int]) -> sp.csr_matrix:
    rows, cols = [], []
    for i, t in enumerate(texts):
        for w in t.split():
            rows.append(i)
            cols.append(vocab.setdefault(w, len(vocab)))
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(texts), 64))
    X.sum_duplicates()
    return X


def write_seed(root: Path, layout: str, rng: np.random.Generator) -> None:
    """A valid tiny dataset of `layout` in `root` (a variant drawn with `rng`; now and then marked
    as a dataset `xmc synth` wrote, which a `--model` must not replace either)."""
    from xmc_core.folders import mark

    root.mkdir(parents=True)
    if rng.random() < 0.2:
        mark(root, "dataset")
    names = sorted(TOPICS)
    tr, te = _docs(rng, 12), _docs(rng, 5)
    gz = rng.random() < 0.25

    def put(name: str, data: bytes) -> None:
        if gz and not name.endswith(".npz") and "/" not in name:
            (root / (name + ".gz")).write_bytes(gzip.compress(data, mtime=0))
        else:
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            (root / name).write_bytes(data)

    if layout == "raw-text":
        for split, (texts, labels) in (("train", tr), ("test", te)):
            put(f"{split}_texts.txt", "".join(t + "\n" for t in texts).encode())
            put(f"{split}_labels.txt", "".join(" ".join(names[j] for j in ls) + "\n" for ls in labels).encode())
        if rng.random() < 0.5:
            put("label_map.txt", "".join(n + "\n" for n in names).encode())
        if rng.random() < 0.3:
            put("label_names.tsv", ("id\ttitle\n" + "".join(f"{n}\t{n.title()} news\n" for n in names)).encode())
    elif layout == "xc-bow":
        vocab: dict[str, int] = {}
        for split, (texts, labels) in (("train", tr), ("test", te)):
            X = _bow(texts, vocab)
            lines = [f"{X.shape[0]} {X.shape[1]} {len(names)}"]
            for i, ls in enumerate(labels):
                a, b = X.indptr[i], X.indptr[i + 1]
                feats = " ".join(f"{j}:{int(v)}" for j, v in zip(X.indices[a:b], X.data[a:b]))
                lines.append(",".join(map(str, ls)) + " " + feats)
            put(f"{split}.txt", ("\n".join(lines) + "\n").encode())
    else:
        vocab = {}
        tfidf = root / ("tfidf-attnxml" if rng.random() < 0.6 else "tfidf-plain")
        with_tfidf = rng.random() < 0.7
        for split, tag, (texts, labels) in (("train", "trn", tr), ("test", "tst", te)):
            put(f"X.{tag}.txt", "".join(t + "\n" for t in texts).encode())
            if rng.random() < 0.5:
                put(f"Y.{tag}.txt", "".join(",".join(map(str, ls)) + "\n" for ls in labels).encode())
            else:
                rows = [i for i, ls in enumerate(labels) for _ in ls]
                cols = [j for ls in labels for j in ls]
                Y = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(labels), len(names)))
                buf = io.BytesIO()
                sp.save_npz(buf, Y)
                put(f"Y.{tag}.npz", buf.getvalue())
            if with_tfidf and (split == "train" or rng.random() < 0.9):
                buf = io.BytesIO()
                sp.save_npz(buf, _bow(texts, vocab))
                tfidf.mkdir(exist_ok=True)
                (tfidf / f"X.{tag}.npz").write_bytes(buf.getvalue())
        if rng.random() < 0.6:
            put("output-items.txt", "".join(n + "\n" for n in names).encode())


# --------------------------------------------------------------------------- mutations


def _files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


def _lines(data: bytes) -> list[bytes]:
    return data.split(b"\n")


NASTY = [b"\r", b"\n", b"\t", b"\xff", b"\x00", b"\xe9", b",", b":", b"-1", b" ", b"9999999999999999999999",
         b"\xe2\x80\x8b", b"e\xcc\x81", b"nan", b"1e400", b"...", b"0,", b",,", b"\xef\xbb\xbf"]


def _gunzip(path: Path) -> tuple[bytes, bool]:
    data = path.read_bytes()
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(data), True
        except (OSError, EOFError):
            return data, False
    return data, False


def _put_back(path: Path, data: bytes, was_gz: bool) -> None:
    path.write_bytes(gzip.compress(data, mtime=0) if was_gz else data)


def _mutate_npz(path: Path, rng: np.random.Generator) -> str:
    try:
        M = sp.load_npz(path).tocsr().astype(np.float64)
    except Exception:  # noqa: BLE001 - already broken: break it further
        path.write_bytes(path.read_bytes()[: int(rng.integers(0, 40))])
        return "npz-truncated"
    kind = rng.choice(["negative", "nan", "inf", "graded", "extra-row", "extra-col", "drop-row", "dense-pm1",
                       "bytes"])
    if kind == "bytes":
        data = bytearray(path.read_bytes())
        for _ in range(int(rng.integers(1, 4))):
            data[int(rng.integers(0, len(data)))] = int(rng.integers(0, 256))
        path.write_bytes(bytes(data))
        return "npz-bytes"
    M = M.tolil()
    r, c = int(rng.integers(0, M.shape[0])), int(rng.integers(0, M.shape[1]))
    if kind == "negative":
        M[r, c] = -1.0
    elif kind == "nan":
        M[r, c] = np.nan
    elif kind == "inf":
        M[r, c] = np.inf
    elif kind == "graded":
        M[r, c] = 3.5
    M = M.tocsr()
    if kind == "extra-row":
        M = sp.vstack([M, M[:1]]).tocsr()
    elif kind == "extra-col":
        M = sp.hstack([M, M[:, :1]]).tocsr()
    elif kind == "drop-row":
        M = M[:-1]
    elif kind == "dense-pm1":
        D = M.toarray()
        M = sp.csr_matrix(np.where(D > 0, 1.0, -1.0))
    buf = io.BytesIO()
    sp.save_npz(buf, M)
    path.write_bytes(buf.getvalue())
    return f"npz-{kind}"


KINDS = ("flip", "insert", "drop-line", "dup-line", "swap-lines", "truncate", "header", "utf16", "latin1", "crlf",
         "bom", "empty", "remove", "gzip", "gz-corrupt", "label-invisible", "label-nfd", "id-huge", "id-negative",
         "blank-line", "tab", "npz")


def _is_labels(p: Path) -> bool:
    n = p.name.replace(".gz", "")
    return n.endswith("_labels.txt") or n in ("label_map.txt", "output-items.txt", "label_names.tsv", "train.txt",
                                              "test.txt") or (n.startswith("Y.") and n.endswith(".txt"))


def _targets(kind: str, files: list[Path]) -> list[Path]:
    """The files a mutation of `kind` is aimed at (all files when none of them fits)."""
    if kind == "npz":
        fit = [p for p in files if p.suffix == ".npz"]
    elif kind == "header":
        fit = [p for p in files if p.name.replace(".gz", "") in ("train.txt", "test.txt")]
    elif kind.startswith(("label-", "id-")):
        fit = [p for p in files if _is_labels(p)]
    else:
        fit = []
    return fit or files


def mutate(root: Path, rng: np.random.Generator) -> str:
    """Apply one random mutation to a file of the dataset in `root` (one the mutation is aimed at:
    ids at label files, headers at XC files, matrix edits at .npz files); returns its name."""
    kind = str(rng.choice(KINDS))
    files = _targets(kind, _files(root))
    if not files:  # an earlier mutation removed the only file
        return "none (no file left)"
    path = files[int(rng.integers(0, len(files)))]
    if path.suffix == ".npz" and (kind == "npz" or rng.random() < 0.5):
        return _mutate_npz(path, rng)
    data, was_gz = _gunzip(path)
    lines = _lines(data)
    if kind == "npz":
        kind = "flip"
    if kind == "flip" and data:
        b = bytearray(data)
        for _ in range(int(rng.integers(1, 4))):
            b[int(rng.integers(0, len(b)))] = int(rng.integers(0, 256))
        data = bytes(b)
    elif kind == "insert":
        pos = int(rng.integers(0, len(data) + 1))
        data = data[:pos] + NASTY[int(rng.integers(0, len(NASTY)))] + data[pos:]
    elif kind == "drop-line" and len(lines) > 1:
        del lines[int(rng.integers(0, len(lines)))]
        data = b"\n".join(lines)
    elif kind == "dup-line" and lines:
        i = int(rng.integers(0, len(lines)))
        lines.insert(i, lines[i])
        data = b"\n".join(lines)
    elif kind == "swap-lines" and len(lines) > 2:
        i, j = rng.choice(len(lines), 2, replace=False)
        lines[i], lines[j] = lines[j], lines[i]
        data = b"\n".join(lines)
    elif kind == "truncate":
        data = data[: int(rng.integers(0, len(data) + 1))]
    elif kind == "header":
        fields = lines[0].split(b" ") if lines else [b""]
        choice = int(rng.integers(0, 5))
        if choice == 0 and fields:
            k = int(rng.integers(0, len(fields)))
            fields[k] = str(int(rng.choice([-1, 0, 1, 2, 10**12, 10**20]))).encode()
        elif choice == 1:
            fields = fields[:-1]
        elif choice == 2:
            fields = fields + [b"7"]
        elif choice == 3:
            fields = [b",".join(fields)]
        else:
            fields = [f + b"%" for f in fields]
        lines[0] = b" ".join(fields)
        data = b"\n".join(lines)
    elif kind == "utf16":
        data = data.decode("utf-8", "replace").encode("utf-16")
    elif kind == "latin1":
        data = data.decode("utf-8", "replace").encode("latin-1", "replace") + "é\n".encode("latin-1")
    elif kind == "crlf":
        data = data.replace(b"\n", b"\r\n")
    elif kind == "bom":
        data = b"\xef\xbb\xbf" + data
    elif kind == "empty":
        data = b""
    elif kind == "remove":
        path.unlink()
        return "remove"
    elif kind == "gzip" and not was_gz:
        path.unlink()
        path = path.with_name(path.name + ".gz")
        was_gz = True
    elif kind == "gz-corrupt":
        raw = gzip.compress(data, mtime=0)
        path.write_bytes(raw[: max(1, len(raw) // 2)] if not was_gz else raw[:-5])
        return kind
    elif kind in ("label-invisible", "label-nfd") and lines:
        i = int(rng.integers(0, len(lines)))
        add = "\u200b" if kind == "label-invisible" else "e\u0301"
        lines[i] = lines[i] + add.encode()
        data = b"\n".join(lines)
    elif kind in ("id-huge", "id-negative") and lines:
        first = 1 if path.name.replace(".gz", "") in ("train.txt", "test.txt") else 0  # not the XC header
        i = int(rng.integers(first, max(first + 1, len(lines))))
        if i < len(lines):
            huge = rng.choice([b"4104233000", b"987001", b"99999999999999999999"])
            lines[i] = (huge + b"," if kind == "id-huge" else b"-1,") + lines[i]
        data = b"\n".join(lines)
    elif kind == "blank-line":
        lines.insert(int(rng.integers(0, len(lines) + 1)), b"")
        data = b"\n".join(lines)
    elif kind == "tab":
        data = data.replace(b" ", b"\t", 1)
    _put_back(path, data, was_gz)
    return kind


# --------------------------------------------------------------------------- running


def _snapshot(folder: Path, skip: Path) -> dict[str, str]:
    out = {}
    for p in sorted(folder.rglob("*")):
        if p == skip or skip in p.parents:
            continue
        out[str(p.relative_to(folder))] = hashlib.sha1(p.read_bytes()).hexdigest() if p.is_file() else "dir"
    return out


def run_cli(argv: list[str], stdin: bytes = b"") -> tuple[int | None, str, str]:
    """(exit code or None when an exception escaped, stdout, stderr or the traceback)."""
    from xmc_core.cli import main

    out, err = io.StringIO(), io.StringIO()
    saved = sys.stdin
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin), encoding="utf-8")
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(argv)
    except SystemExit as e:  # argparse
        return (e.code if isinstance(e.code, int) else 1), out.getvalue(), err.getvalue()
    except BaseException:  # noqa: BLE001 - a traceback is what we are counting
        return None, out.getvalue(), err.getvalue() + traceback.format_exc()
    finally:
        sys.stdin = saved
    return rc, out.getvalue(), err.getvalue()


def _query(rng: np.random.Generator) -> bytes:
    """A query text as bytes: words, with a nasty byte sequence now and then."""
    words = rng.choice(" ".join(TOPICS.values()).split(), size=int(rng.integers(0, 6))).tolist()
    raw = " ".join(words).encode()
    if rng.random() < 0.5:
        pos = int(rng.integers(0, len(raw) + 1))
        raw = raw[:pos] + NASTY[int(rng.integers(0, len(NASTY)))] + raw[pos:]
    return raw


def _model_path(work: Path, data: Path, rng: np.random.Generator) -> tuple[Path, bool]:
    """Where `--model` points: a new folder mostly; now and then (a hazard) the dataset folder, the
    folder holding it, or a file of the dataset, none of which xmc may replace."""
    u = rng.random()
    if u < 0.04:
        return data, True
    if u < 0.08:
        return work, True
    files = _files(data)
    if u < 0.11 and files:
        return files[int(rng.integers(0, len(files)))], True
    return work / "model", False


def _judge(rc, err: str, names: tuple[str, ...]) -> str | None:
    """None when the outcome is acceptable, else what is wrong."""
    if rc is None:
        return "traceback: " + err.strip().splitlines()[-1][:300]
    if rc == 0:
        return None if not err.strip() else f"exit 0 with stderr {err.strip()[:200]!r}"
    if rc != 2:
        return f"exit {rc}: {err.strip()[:300]!r}"
    lines = err.strip("\n").split("\n")
    if len(lines) != 1 or not lines[0].startswith("xmc: error: "):
        return f"exit 2 but stderr is not one 'xmc: error:' line: {err[:300]!r}"
    if not any(n in lines[0] for n in names):
        return f"exit 2 without naming a file: {lines[0][:300]!r}"
    return None


def fuzz(rounds: int, seed: int = 0, workdir: Path | None = None, log=None) -> dict:
    """Run `rounds` mutated datasets; returns the counts and the failures (see module docstring)."""
    rng = np.random.default_rng(seed)
    counts: Counter = Counter()
    failures: list[dict] = []
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        for i in range(rounds):
            layout = LAYOUTS[i % len(LAYOUTS)]
            work = Path(tmp) / f"r{i}"
            data = work / "data"
            write_seed(data, layout, rng)
            mutations = [mutate(data, rng) for _ in range(int(rng.integers(1, 3)))]
            model, hazard = _model_path(work, data, rng)
            counts[f"layout {layout}"] += 1
            for m in mutations:
                counts[f"mutation {m}"] += 1
            if hazard:
                counts["--model names the dataset, its folder or one of its files"] += 1
            skip = work / "nothing" if hazard else model  # a hazard: nothing at all may change
            before = _snapshot(Path(tmp), skip)
            names = (str(data), str(model), "--text", "<stdin>")
            steps = [("train", ["train", "--data", str(data), "--model", str(model), "--threads", "1"], b"")]
            for cmd, argv, stdin in steps:
                rc, _, err = run_cli(argv, stdin)
                outcome = "ok" if rc == 0 else ("exit 2" if rc == 2 else ("traceback" if rc is None else f"exit {rc}"))
                counts[f"{cmd} {outcome}"] += 1
                problem = _judge(rc, err, names)
                if problem:
                    failures.append({"round": i, "layout": layout, "mutations": mutations, "command": cmd,
                                     "problem": problem})
                if hazard and cmd == "train" and rc == 0:
                    failures.append({"round": i, "layout": layout, "mutations": mutations, "command": cmd,
                                     "problem": f"--model {model} (not xmc's) was accepted"})
                if cmd == "train" and rc == 0:
                    query = os.fsdecode(_query(rng))  # as Python decodes argv bytes
                    steps += [("evaluate", ["evaluate", "--model", str(model), "--data", str(data), "--json"], b""),
                              ("predict", ["predict", "--model", str(model), "--data", str(data), "--topk", "3"], b""),
                              ("predict --text", ["predict", "--model", str(model), "--text", query], b""),
                              ("predict <stdin", ["predict", "--model", str(model)],
                               b"\n".join(_query(rng) for _ in range(3)))]
            after = _snapshot(Path(tmp), skip)
            if after != before:
                changed = sorted(set(before.items()) ^ set(after.items()))
                failures.append({"round": i, "layout": layout, "mutations": mutations, "command": "files",
                                 "problem": f"files outside the model folder changed: {changed[:5]}"})
                counts["files touched"] += 1
            if not hazard and model.exists() and not (model / "params.json").is_file():
                failures.append({"round": i, "layout": layout, "mutations": mutations, "command": "files",
                                 "problem": "the model path holds something that is not a model"})
            shutil.rmtree(work, ignore_errors=True)
            if log and (i + 1) % 100 == 0:
                log(f"{i + 1} rounds, {len(failures)} failures, {time.perf_counter() - t0:.0f} s")
    return {"rounds": rounds, "seed": seed, "seconds": round(time.perf_counter() - t0, 1),
            "counts": dict(sorted(counts.items())), "failures": failures}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the report as JSON here")
    ap.add_argument("--memory-gb", type=float, default=4.0,
                    help="address-space limit of this process, so that a runaway allocation is a MemoryError "
                         "(counted) rather than the machine swapping or the process killed (0: none)")
    args = ap.parse_args(argv)
    if args.memory_gb > 0:
        import resource

        limit = int(args.memory_gb * 2**30)
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    report = fuzz(args.rounds, args.seed, log=lambda s: print(s, file=sys.stderr, flush=True))
    width = max(len(k) for k in report["counts"])
    print(f"{report['rounds']} rounds (seed {report['seed']}) in {report['seconds']} s")
    for k, v in report["counts"].items():
        print(f"  {k:<{width}}  {v}")
    print(f"failures: {len(report['failures'])}")
    for f in report["failures"][:50]:
        print("  " + json.dumps(f))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
