"""`xmc` command line: train, predict, evaluate, synth.

Errors in the user's input (data files, params, model folders) print one line
`xmc: error: ...` naming the file, line and field, and exit with status 2; no traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

__all__ = ["main"]


class UsageError(Exception):
    """An error in the user's input: printed as one line, exit status 2."""


def _load_params(value: str | None) -> dict:
    if not value:
        return {}
    text = value
    source = "--params"
    if not value.lstrip().startswith("{"):
        path = Path(value)
        if not path.is_file():
            raise UsageError(f"--params: {value}: no such file (give a JSON file or an inline JSON object)")
        text, source = path.read_text(), str(path)
    try:
        params = json.loads(text)
    except json.JSONDecodeError as e:
        raise UsageError(f"{source}:{e.lineno}: params: invalid JSON ({e.msg})") from None
    if not isinstance(params, dict):
        raise UsageError(f"{source}: params: expected a JSON object")
    return params


def _set_threads(threads: int | None) -> None:
    if threads and threads > 0:
        # BLAS pools sized before numpy is imported by the commands below.
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ.setdefault(var, str(threads))


def _with_train(split: str) -> tuple[str, ...]:
    # the readers build the label index from train (plus the split), as at training time
    return ("train",) if split == "train" else ("train", split)


def _split_inputs(split):
    return split.texts if split.texts is not None else split.X


def cmd_train(args) -> dict:
    from .data import load_dataset
    from .model import XRLinearParams, train_xr_linear

    if args.method != "xr-linear":
        raise UsageError(f"--method: {args.method!r} is not available yet (available: xr-linear)")
    overrides = _load_params(args.params)
    if args.threads:
        overrides.setdefault("ranker", {})["threads"] = args.threads
    try:
        params = XRLinearParams().merged(overrides)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--params: {e}") from None
    t0 = time.perf_counter()
    ds = load_dataset(args.data, splits=("train",), max_rows=args.max_rows)
    load_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    stages = []

    def log(rec):
        stages.append(rec)
        if args.verbose:
            print(json.dumps(rec), file=sys.stderr)

    model = train_xr_linear(ds.train.Y, ds.label_names, params, texts=ds.train.texts, X=ds.train.X, log=log)
    train_s = time.perf_counter() - t0
    model.info.update({"dataset": ds.name, "data": str(Path(args.data).resolve()), "n_train": ds.train.n,
                       "train_s": train_s})
    model.set_label_counts(ds.train.Y)
    model.save(args.model)
    return {"model": str(args.model), "method": args.method, "dataset": ds.name, "n_train": ds.train.n,
            "n_labels": ds.n_labels, "n_features": model.ranker.n_features,
            "load_s": round(load_s, 3), "train_s": round(train_s, 3)}


def cmd_predict(args) -> None:
    from .data import load_dataset
    from .model import XmcModel

    model = XmcModel.load(args.model)
    if args.text is not None:
        inputs = [args.text]
    elif args.data:
        ds = load_dataset(args.data, splits=_with_train(args.split), max_rows=args.max_rows)
        split = getattr(ds, args.split)
        if split is None:
            raise UsageError(f"--data {args.data}: no {args.split} split")
        inputs = _split_inputs(split)
    else:
        inputs = [line.rstrip("\n") for line in sys.stdin]
    results = model.predict_labels(inputs, topk=args.topk, beam_size=args.beam_size)
    out = sys.stdout
    for i, labels in enumerate(results):
        out.write(json.dumps({"doc": i, "labels": [name for name, _ in labels],
                              "scores": [round(s, 6) for _, s in labels]}) + "\n")


def cmd_evaluate(args) -> dict:
    from .data import load_dataset
    from .metrics import MetricParams
    from .model import XmcModel, evaluate_model

    model = XmcModel.load(args.model)
    ds = load_dataset(args.data, splits=_with_train(args.split), max_rows=args.max_rows)
    split = getattr(ds, args.split)
    if split is None:
        raise UsageError(f"--data {args.data}: no {args.split} split")
    mp = MetricParams(propensity_A=args.propensity_a, propensity_B=args.propensity_b)
    ev = evaluate_model(model, _split_inputs(split), split.Y, ds.label_names, mp, args.topk, args.beam_size)
    return {**ev.flat(), "model": str(args.model), "split": args.split}


def cmd_synth(args) -> dict:
    from .synth import SynthParams, write_synth

    params = SynthParams(n_labels=args.labels, n_train=args.train, n_test=args.test, seed=args.seed,
                         **({"n_features": args.features} if args.features else {}))
    t0 = time.perf_counter()
    write_synth(args.out, params)
    return {"out": str(args.out), "n_labels": args.labels, "n_train": args.train, "n_test": args.test,
            "seconds": round(time.perf_counter() - t0, 3)}


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="xmc", description="Extreme multi-label classification")
    sub = ap.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on a dataset folder")
    p.add_argument("--method", default="xr-linear")
    p.add_argument("--data", required=True, help="dataset folder (raw text, XC BoW or PECOS xmc-base layout)")
    p.add_argument("--model", required=True, help="output model folder")
    p.add_argument("--params", help="JSON file or inline JSON object of nested settings")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--max-rows", type=int, default=None, help="read only the first N documents (quick runs)")
    p.add_argument("-v", "--verbose", action="store_true", help="stage timings on stderr")

    p = sub.add_parser("predict", help="predict labels (JSON lines)")
    p.add_argument("--model", required=True)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data")
    src.add_argument("--text")
    p.add_argument("--split", default="test")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--max-rows", type=int, default=None)

    p = sub.add_parser("evaluate", help="P@k, R@k, RP@k, nDCG@k, PSP@k on a split")
    p.add_argument("--model", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--json", action="store_true", help="one JSON line (default: a table)")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--beam-size", type=int, default=None)
    p.add_argument("--propensity-a", type=float, default=0.55)
    p.add_argument("--propensity-b", type=float, default=1.5)
    p.add_argument("--max-rows", type=int, default=None)

    p = sub.add_parser("synth", help="generate a synthetic XMC dataset (XC BoW format)")
    p.add_argument("out")
    p.add_argument("--labels", type=int, required=True)
    p.add_argument("--train", type=int, required=True)
    p.add_argument("--test", type=int, required=True)
    p.add_argument("--features", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _set_threads(getattr(args, "threads", None))
    from .data import DataFormatError
    from .model import ModelFormatError

    try:
        if args.command == "train":
            print(json.dumps(cmd_train(args)))
        elif args.command == "predict":
            cmd_predict(args)
        elif args.command == "evaluate":
            res = cmd_evaluate(args)
            if args.json:
                print(json.dumps(res))
            else:
                for key, value in res.items():
                    print(f"{key:>12}  {value}")
        elif args.command == "synth":
            print(json.dumps(cmd_synth(args)))
    except (UsageError, DataFormatError, ModelFormatError, FileNotFoundError) as e:
        print(f"xmc: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
