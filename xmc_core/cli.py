"""`xmc` command line: train, calibrate, predict, evaluate, synth, runs, info, explain.

Results go to stdout (JSON lines or a table); progress (`progress`: a bar on a terminal, a plain
line every few seconds otherwise; none with --quiet) and stage lines (-v) go to stderr.

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


def _load_params(value: str | None, option: str = "--params") -> dict:
    if not value:
        return {}
    from .textio import decode_text, text_argument

    source = option
    if value.lstrip().startswith("{"):
        text = text_argument(value, source)
    else:
        path = Path(value)
        if not path.is_file():
            raise UsageError(f"{option}: {value}: not a file and not an inline JSON object ({{...}})")
        text, source = decode_text(path.read_bytes(), str(path)), str(path)
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


def _split_inputs(split, model=None):
    """What to feed `model` from a split: its feature matrix for a model without a text featurizer
    (trained with --features matrix) when the split has one, else its texts (or its X)."""
    if split.X is not None and (split.texts is None or (model is not None and model.featurizer is None)):
        return split.X
    return split.texts


def _check_args(args) -> None:
    """Options checked before any work: numbers that must be positive (argparse only checks that
    they are integers), and output paths that xmc may write (a missing path, or a folder xmc
    wrote: `folders.check_replaceable`)."""
    from .folders import check_replaceable

    for name in ("topk", "beam_size", "max_rows", "threads", "ray_split_level", "ray_cpus_per_task",
                 "shard_rows", "actors", "terms", "workers", "port", "max_docs", "max_body_bytes"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')}: must be >= 1, got {value}")
    if args.command == "train":
        if args.calibration_params and not args.calibrate:
            raise UsageError("--calibration-params goes with --calibrate")
        if args.refit and not args.calibrate:
            raise UsageError("--refit goes with --calibrate")
        if args.refit and args.method not in ("xr-linear", "xr-linear-ld"):
            raise UsageError(f"--refit: xr-linear and xr-linear-ld; {args.method} is calibrated on the dev split it "
                             "did not train on (drop --refit)")
        if args.features != "auto" and args.method in ("xr-transformer", "xlgen"):
            raise UsageError(f"--features: {args.method} reads the raw texts; --features applies to xr-linear and "
                             "xr-linear-ld")
        model, data = Path(args.model).resolve(), Path(args.data).resolve()
        if model == data or model in data.parents:
            raise UsageError(f"--model {args.model}: holds the dataset {args.data}; give another path")
        check_replaceable(args.model, "--model", kind="model")
        if args.method in ("xr-transformer", "xlgen"):
            check_replaceable(_checkpoint_dir(args.model), "checkpoint folder", kind="checkpoint")
        if args.engine == "ray" and args.method not in ("xr-linear",):
            raise UsageError(f"--engine ray: trains xr-linear; {args.method} trains locally (drop --engine)")
    elif args.command == "predict":
        if args.policy is not None and not args.sets:
            raise UsageError("--policy goes with --sets")
        if args.sets and args.topk is not None:
            raise UsageError("--topk: a label set's size comes from its thresholds (at most the calibration's "
                             "max_set_size); drop --topk with --sets")
        args.topk = 5 if args.topk is None else args.topk
        args.policy = args.policy or "micro"
        if args.engine == "ray":
            if not args.out:
                raise UsageError("--engine ray: give --out, the folder for the Parquet shards")
            if args.text is not None:
                raise UsageError("--engine ray: scores files or a split (--inputs, --data), not one --text")
            if args.inputs and args.data:
                raise UsageError("--inputs and --data: give one source of documents")
            if args.sets:
                raise UsageError("--sets: prints label sets as JSON lines; --engine ray writes rankings to Parquet")
            check_replaceable(args.out, "--out", kind="predictions")
        elif args.inputs or args.out:
            raise UsageError("--inputs and --out go with --engine ray (without it, predict prints JSON lines)")
    elif args.command == "synth":
        check_replaceable(args.out, "dataset folder", kind="dataset")


def _checkpoint_dir(model_path) -> Path:
    """MODEL.checkpoint/, beside the model folder: the training done so far (XR-Transformer's
    fine-tuning levels, XLGen's steps)."""
    model_path = Path(model_path)
    return model_path.with_name(model_path.name + ".checkpoint")


def _check_model_inputs(model, inputs, model_path, source: str) -> None:
    """Raw texts need a model with a text featurizer; feature rows need the model's width."""
    import scipy.sparse as smat

    if smat.issparse(inputs):
        want = model.n_features
        if inputs.shape[1] != want:
            raise UsageError(f"{source}: features: the data has {inputs.shape[1]} feature columns but the model "
                             f"{model_path} was trained on {want}")
    elif model.featurizer is None:
        raise UsageError(f"{source}: the model {model_path} was trained on feature vectors (bag of words) and has "
                         f"no text featurizer; give --data with a bag-of-words dataset of its feature space")


def _stdin_lines() -> list[str]:
    """Lines of stdin under the one text policy (`textio.text_lines`), as the dataset readers."""
    from .textio import text_lines

    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:  # a text stream without bytes underneath (tests)
        return text_lines(sys.stdin.read().encode("utf-8", "surrogateescape"), "<stdin>")
    return text_lines(stream.read(), "<stdin>")


def _train_split(args):
    """The train split of --data, checked to have documents and labels; (dataset, seconds)."""
    from .data import DataFormatError, load_dataset

    t0 = time.perf_counter()
    # --calibrate fits on the dev split where the dataset has one
    splits = ("train", "dev") if getattr(args, "calibrate", False) else ("train",)
    ds = load_dataset(args.data, splits=splits, max_rows=args.max_rows)
    load_s = time.perf_counter() - t0
    files = ds.train.files or (str(args.data),)
    if ds.train.n == 0:
        raise DataFormatError(files[0], None, "documents", "the train split has no documents; nothing to train on")
    if ds.train.Y.nnz == 0:
        raise DataFormatError(files[-1], None, "label", "no train document has a label; nothing to train on")
    return ds, load_s


TRAIN_METHODS = ("xr-linear", "xr-linear-ld", "xr-transformer", "xlgen")


def _calibration_params(value: str | None):
    """--calibration-params (JSON file or inline object) as CalibrationParams; UsageError if bad."""
    from .calibration import CalibrationParams

    try:
        return CalibrationParams.from_dict(_load_params(value, "--calibration-params"))
    except (TypeError, ValueError) as e:
        raise UsageError(f"--calibration-params: {e}") from None


def _calibrate_split(model, ds, split_name: str, args, cal_params, beam_size: int | None = None) -> dict:
    """Fit `model`'s calibration on the split `split_name` of `ds` (the --data dataset); the
    summary for the output line. Unusable held-out data is a UsageError (one line)."""
    split = getattr(ds, split_name)
    where = f"--data {args.data} ({split_name} split)"
    inputs = _split_inputs(split, model)
    _check_model_inputs(model, inputs, args.model, where)
    t0 = time.perf_counter()
    try:
        cal = model.calibrate(inputs, split.Y, ds.label_names, cal_params, beam_size=beam_size,
                              info={"source": split_name, "data": str(Path(args.data).resolve())})
    except ValueError as e:  # too few documents, another label space, nothing right
        raise UsageError(f"{where}: cannot calibrate: {e}") from None
    return _calibration_summary(cal, time.perf_counter() - t0)


def _require_dev(args, ds) -> None:
    """--calibrate of a method that calibrates on dev documents only (xr-transformer, xlgen)."""
    if args.calibrate and ds.dev is None:
        raise UsageError(f"--calibrate: {args.data} has no dev split; {args.method} calibrates on dev documents "
                         "(or run 'xmc calibrate --split SPLIT' on documents it was not trained on)")


def _calibration_summary(cal, seconds: float) -> dict:
    import math

    info = cal.info
    threshold = round(cal.threshold, 6) if math.isfinite(cal.threshold) else "inf"  # strict JSON has no Infinity
    return {"source": info.get("source"), "n_docs": info["n_docs"], "threshold": threshold,
            "heldout_micro_f1": info["heldout_micro_f1"], "heldout_macro_f1": info["heldout_macro_f1"],
            "labels_own_threshold": info["labels_own_threshold"], "seconds": round(seconds, 3)}


def _train_features(ds, args) -> tuple[list | None, object, str]:
    """(texts, X, description) for XR-Linear training: `--features text` fits TF-IDF on the raw
    texts, `matrix` takes the dataset's feature matrix (XC bag of words, PECOS tfidf-*/X.trn.npz);
    `auto` takes the texts where there are any (so the model predicts raw text)."""
    split = ds.train
    choice = args.features
    if choice == "auto":
        choice = "text" if split.texts is not None else "matrix"
    if choice == "text":
        if split.texts is None:
            raise UsageError(f"--features text: {args.data} ({ds.layout}) has no raw texts; use --features matrix")
        unused = f"; {Path(ds.features_dir).name}/X.trn.npz not used (--features matrix uses it)" if ds.features_dir else ""
        return split.texts, None, f"text: TF-IDF fitted on {Path(split.files[0]).name}{unused}"
    if split.X is None:
        raise UsageError(f"--features matrix: {args.data} ({ds.layout}) has no feature matrix (an XC train.txt, or "
                         "a PECOS tfidf-*/X.trn.npz)")
    where = (f"{Path(ds.features_dir).name}/X.trn.npz" if ds.features_dir else Path(split.files[0]).name)
    return None, split.X, f"matrix: {where} ({split.X.shape[1]} columns, rows l2-normalized)"


def cmd_train(args) -> dict:
    from .memory import StageMemory
    from .model_card import data_fingerprint
    from .model import METHOD_XR_LINEAR, METHOD_XR_LINEAR_LD, XRLinearParams, train_xr_linear

    if args.preset != "default" and args.method not in ("xr-linear", "xr-linear-ld"):
        raise UsageError(f"--preset {args.preset}: only for --method xr-linear or xr-linear-ld")
    if args.method == "xr-transformer":
        return cmd_train_xr_transformer(args)
    if args.method == "xlgen":
        return cmd_train_xlgen(args)
    methods = (METHOD_XR_LINEAR, METHOD_XR_LINEAR_LD)
    if args.method not in methods:
        raise UsageError(f"--method: {args.method!r} is not available (available: {', '.join(TRAIN_METHODS)})")
    from .presets import preset_overrides

    overrides = preset_overrides(args.preset, _load_params(args.params))
    if args.method == METHOD_XR_LINEAR_LD:
        if overrides.get("disentangle", {}) is None:
            raise UsageError("--params: disentangle: null contradicts --method xr-linear-ld")
        overrides.setdefault("disentangle", {})  # the section's defaults unless given
    elif overrides.get("disentangle") is not None:
        raise UsageError("--params: a disentangle section needs --method xr-linear-ld")
    if args.threads:
        overrides.setdefault("ranker", {})["threads"] = args.threads
    try:
        params = XRLinearParams().merged(overrides)
    except (TypeError, ValueError) as e:
        raise UsageError(f"--params: {e}") from None
    engine = None
    if args.engine == "ray":
        from .engine_ray import RayEngine, RayParams

        engine = RayEngine(RayParams(address=args.ray_address, split_level=args.ray_split_level,
                                     cpus_per_task=args.ray_cpus_per_task))
    memory = StageMemory()

    def log(rec):
        if args.verbose:
            print(json.dumps(rec), file=sys.stderr)

    cal_params = _calibration_params(args.calibration_params) if args.calibrate else None
    ds, load_s = _train_split(args)
    texts, X, features = _train_features(ds, args)
    import scipy.sparse as smat

    Y = ds.train.Y
    refit = bool(args.calibrate and args.refit and ds.dev is not None)
    if refit:
        dev_inputs = ds.dev.texts if texts is not None else ds.dev.X
        if dev_inputs is None:
            raise UsageError(f"--refit: the dev split of {args.data} has no "
                             f"{'raw texts' if texts is not None else 'feature matrix'} to train on")
        # the final model learns from train + dev; the calibration comes from a train-only sibling
        train_texts, train_X = texts, X
        texts = list(texts) + list(dev_inputs) if texts is not None else None
        X = smat.vstack([X, dev_inputs], format="csr") if X is not None else None
        Y = smat.vstack([ds.train.Y, ds.dev.Y], format="csr")
    fingerprint = data_fingerprint(Y, texts, X)  # before X is normalized in place
    log(memory.add({"stage": "load", "seconds": load_s, "n_train": Y.shape[0]}))
    holdout = None
    if refit:
        from .model import sibling_calibration

        t0 = time.perf_counter()
        try:
            holdout = sibling_calibration(ds.train.Y, ds.label_names, params, dev_inputs, ds.dev.Y, cal_params,
                                          texts=train_texts, X=train_X, log=log,
                                          info={"source": "dev", "final_model": "train+dev"})
        except ValueError as e:
            raise UsageError(f"--calibrate --refit: {e}") from None
        holdout_s = time.perf_counter() - t0
    elif args.calibrate and ds.dev is None:
        # no dev split: a sibling trained on all but a held-out slice calibrates (before the final
        # training, which normalizes the split's X in place)
        from .model import holdout_calibration

        t0 = time.perf_counter()
        try:
            holdout = holdout_calibration(ds.train.Y, ds.label_names, params, cal_params, texts=texts, X=X, log=log)
        except ValueError as e:
            raise UsageError(f"--calibrate: {e}") from None
        holdout_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    try:
        # copy_X=False: the split's matrix is normalized in place, not copied (it is not used again)
        model = train_xr_linear(Y, ds.label_names, params, texts=texts, X=X, log=log,
                                label_titles=ds.label_titles, memory=memory, copy_X=False, engine=engine)
    except ValueError as e:  # data the stages cannot learn from (e.g. no term in min_df documents)
        if args.verbose:
            raise
        raise UsageError(f"{args.data}: cannot train on this data: {e} (-v shows the traceback)") from None
    except RuntimeError as e:  # engine_ray.RayRunError: Ray itself failed (one line already)
        if engine is None or args.verbose:
            raise
        raise UsageError(f"--engine ray: {e} (-v shows the traceback)") from None
    train_s = time.perf_counter() - t0
    model.info.update({"dataset": ds.name, "data": str(Path(args.data).resolve()), "n_train": Y.shape[0],
                       "train_s": train_s, "data_fingerprint": fingerprint})
    if refit:
        model.info["trained_on"] = "train+dev"
    model.set_label_counts(Y)
    model.label_titles = ds.label_titles
    calibration = None
    if holdout is not None:
        model.calibration = holdout
        calibration = _calibration_summary(holdout, holdout_s)
    elif args.calibrate:
        calibration = _calibrate_split(model, ds, "dev", args, cal_params)
    if calibration is not None:
        log(memory.add({"stage": "calibrate", **calibration}))
    t0 = time.perf_counter()
    model.save(args.model)
    log(memory.add({"stage": "save", "seconds": time.perf_counter() - t0}))
    out = {"model": str(args.model), "method": model.method, "dataset": ds.name, "n_train": Y.shape[0],
           "n_labels": ds.n_labels, "n_features": model.n_features, "features": features,
           "load_s": round(load_s, 3), "train_s": round(train_s, 3), "peak_rss_mb": round(memory.run_peak_mb, 1)}
    if engine is not None:
        out["engine"] = engine.name
    if refit:
        out["trained_on"] = "train+dev"
    if calibration is not None:
        out["calibration"] = calibration
    if "disentangle" in model.info:
        stats = model.info["disentangle"]
        out.update({"copies_added": stats["copies_added"], "labels_with_copies": stats["labels_with_copies"]})
        if model.copies is not None:
            out["copies_table"] = str(Path(args.model) / "copies.parquet")
    return out


def cmd_train_xr_transformer(args) -> dict:
    """`xmc train --method xr-transformer`: checkpoints after each fine-tuning level in
    MODEL.checkpoint/, so a killed run resumes from its last finished level when started again."""
    from .folders import remove_xmc_folder
    from .model_card import data_fingerprint

    overrides = _load_params(args.params)
    if args.threads:
        overrides.setdefault("ranker", {})["threads"] = args.threads
        overrides.setdefault("finetune", {})["threads"] = args.threads
    try:
        from .xtransformer import XTransformerParams, train_with_checkpoints

        params = XTransformerParams().merged(overrides)
        params.check_lengths()
    except ImportError as e:
        raise UsageError(f"--method xr-transformer needs the transformer extra (pip install -e '.[transformer]'): {e}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"--params: {e}") from None
    cal_params = _calibration_params(args.calibration_params) if args.calibrate else None
    ds, load_s = _train_split(args)
    if ds.train.texts is None:
        raise UsageError(f"--data {args.data}: xr-transformer reads raw texts; this dataset ({ds.layout}) has "
                         "only feature vectors")
    _require_dev(args, ds)
    model_path = Path(args.model)
    ckpt = _checkpoint_dir(model_path)

    def log(rec):
        if args.verbose or rec.get("stage") in ("finetune_level", "resume"):
            print(json.dumps(rec, default=str), file=sys.stderr)

    t0 = time.perf_counter()
    model = train_with_checkpoints(ds.train.texts, ds.train.Y, ds.label_names, params, ckpt, log=log)
    train_s = time.perf_counter() - t0
    model.info.update({"dataset": ds.name, "data": str(Path(args.data).resolve()), "n_train": ds.train.n,
                       "train_s": train_s, "data_fingerprint": data_fingerprint(ds.train.Y, ds.train.texts)})
    model.set_label_counts(ds.train.Y)
    model.label_titles = ds.label_titles
    calibration = _calibrate_split(model, ds, "dev", args, cal_params) if args.calibrate else None
    model.save(model_path)
    remove_xmc_folder(ckpt, kind="checkpoint")
    out = {"model": str(model_path), "method": model.method, "dataset": ds.name, "n_train": ds.train.n,
           "n_labels": ds.n_labels, "n_features": model.n_features, "device": model.info.get("device"),
           "load_s": round(load_s, 3), "train_s": round(train_s, 3)}
    return {**out, "calibration": calibration} if calibration is not None else out


def cmd_train_xlgen(args) -> dict:
    """`xmc train --method xlgen`: a generative model (xmc_core.xlgen); --params holds XLGenParams
    (e.g. '{"variant": "mcg", "pu_drop": 0.5, "decoding": "label_text"}'). Checkpoints in
    MODEL.checkpoint/ after each epoch and every 200 steps: a killed run resumes when started again."""
    from .folders import remove_xmc_folder
    from .model_card import data_fingerprint

    overrides = _load_params(args.params)
    if args.threads:
        overrides.setdefault("threads", args.threads)
    try:
        from .xlgen import XLGenParams, train_with_checkpoints

        params = XLGenParams.from_dict(overrides)
        params.check_lengths()
    except ImportError as e:
        raise UsageError(f"--method xlgen needs the transformer extra (pip install -e '.[transformer]'): {e}") from None
    except (TypeError, ValueError) as e:
        raise UsageError(f"--params: {e}") from None
    cal_params = _calibration_params(args.calibration_params) if args.calibrate else None
    ds, load_s = _train_split(args)
    if ds.train.texts is None:
        raise UsageError(f"--data {args.data}: xlgen reads raw texts; this dataset ({ds.layout}) has only feature vectors")
    _require_dev(args, ds)

    def log(rec):
        if args.verbose or rec.get("stage") in ("epoch", "resume_from"):
            print(json.dumps(rec, default=str), file=sys.stderr)

    ckpt = _checkpoint_dir(args.model)
    t0 = time.perf_counter()
    model = train_with_checkpoints(ds.train.texts, ds.train.Y, ds.label_names, params, ckpt, log=log,
                                   label_titles=ds.label_titles)
    train_s = time.perf_counter() - t0
    model.info.update({"dataset": ds.name, "data": str(Path(args.data).resolve()), "n_train": ds.train.n,
                       "train_s": train_s, "data_fingerprint": data_fingerprint(ds.train.Y, ds.train.texts)})
    model.set_label_counts(ds.train.Y)
    model.label_titles = ds.label_titles
    calibration = _calibrate_split(model, ds, "dev", args, cal_params) if args.calibrate else None
    model.save(args.model)
    remove_xmc_folder(ckpt, kind="checkpoint")
    out = {"model": str(args.model), "method": model.method, "variant": params.variant,
           "decoding": params.decoding, "dataset": ds.name,
           "n_train": ds.train.n, "n_labels": ds.n_labels, "device": model.info.get("device"),
           "load_s": round(load_s, 3), "train_s": round(train_s, 3)}
    return {**out, "calibration": calibration} if calibration is not None else out


def cmd_predict(args) -> None:
    from .data import load_dataset
    from .model import load_model
    from .textio import text_argument

    if args.engine == "ray":
        return cmd_predict_ray(args)
    stage = _StageLog(args.verbose)
    model = load_model(args.model)
    stage("load_model")
    if args.text is not None:
        inputs = [text_argument(args.text, "--text")]
    elif args.data:
        ds = load_dataset(args.data, splits=_with_train(args.split), max_rows=args.max_rows)
        split = getattr(ds, args.split)
        if split is None:
            raise UsageError(f"--data {args.data}: no {args.split} split")
        inputs = _split_inputs(split, model)
    else:
        inputs = _stdin_lines()
    stage("load_data", n=inputs.shape[0] if hasattr(inputs, "shape") else len(inputs))
    _check_model_inputs(model, inputs, args.model,
                        "--text" if args.text is not None else (args.data or "<stdin>"))
    if args.verbose and _text_model(model) and not hasattr(inputs, "shape"):
        inputs = model.featurize(inputs)
        stage("features")
    out = sys.stdout
    if args.sets:
        results = model.named_sets(inputs, policy=args.policy, beam_size=args.beam_size)
        stage("predict")
        for i, labels in enumerate(results):
            out.write(json.dumps({"doc": i, "labels": [name for name, _ in labels],
                                  "probabilities": [round(p, 6) for _, p in labels]}) + "\n")
        return
    results = model.predict_labels(inputs, topk=args.topk, beam_size=args.beam_size)
    stage("predict")
    for i, labels in enumerate(results):
        out.write(json.dumps({"doc": i, "labels": [name for name, _ in labels],
                              "scores": [round(s, 6) for _, s in labels]}) + "\n")


def _read_shard_file(path: str):
    """One --inputs file: an .npz CSR feature matrix, or text with one document per line."""
    import numpy as np
    import scipy.sparse as smat

    from .textio import text_lines

    if path.endswith(".npz"):
        try:
            return smat.csr_matrix(smat.load_npz(path), dtype=np.float32)
        except (ValueError, KeyError) as e:
            raise UsageError(f"{path}: not a scipy sparse .npz matrix ({e})") from None
    with open(path, "rb") as f:
        return text_lines(f.read(), path)


def cmd_predict_ray(args) -> None:
    """predict --engine ray: shards of --inputs files (or of the --data split, or stdin) scored by
    Ray actors into Parquet under --out; prints one JSON summary line."""
    from .batch import split_shards
    from .data import load_dataset
    from .engine_ray import predict_files_ray, ray_session
    from .model import load_model

    model = load_model(args.model)  # checked here once: a bad folder fails before Ray starts
    if args.inputs:
        shards = [_read_shard_file(p) for p in args.inputs]
        source = ", ".join(args.inputs)
    else:
        if args.data:
            ds = load_dataset(args.data, splits=_with_train(args.split), max_rows=args.max_rows)
            split = getattr(ds, args.split)
            if split is None:
                raise UsageError(f"--data {args.data}: no {args.split} split")
            inputs, source = _split_inputs(split, model), args.data
        else:
            inputs, source = _stdin_lines(), "<stdin>"
        shards = split_shards(inputs, args.shard_rows)
    for sh in shards:
        _check_model_inputs(model, sh, args.model, source)
    del model
    log = (lambda rec: print(json.dumps(rec), file=sys.stderr)) if args.verbose else None
    with ray_session(args.ray_address):
        res = predict_files_ray(args.model, shards, args.out, n_actors=args.actors, topk=args.topk,
                                beam_size=args.beam_size, log=log)
    res.pop("files")
    print(json.dumps({"engine": "ray", **res}))


def cmd_evaluate(args) -> dict:
    from .data import load_dataset
    from .metrics import MetricParams
    from .model import evaluate_model, load_model

    stage = _StageLog(args.verbose)
    model = load_model(args.model)
    stage("load_model")
    ds = load_dataset(args.data, splits=_with_train(args.split), max_rows=args.max_rows)
    split = getattr(ds, args.split)
    if split is None:
        raise UsageError(f"--data {args.data}: no {args.split} split")
    stage("load_data", n=getattr(split, "n", None))
    mp = MetricParams(propensity_A=args.propensity_a, propensity_B=args.propensity_b)
    if args.policy is not None and getattr(model, "calibration", None) is None:
        why = f" (not loaded: {model.calibration_error})" if getattr(model, "calibration_error", None) else ""
        raise UsageError(f"--policy: the model {args.model} has no calibration{why}; run 'xmc calibrate' first")
    if getattr(model, "method", None) == "xlgen":  # one decoding pass: ranking + set metrics
        from .xlgen import evaluate_xlgen

        if split.texts is None:
            raise UsageError(f"--data {args.data}: the XLGen model {args.model} reads raw texts; this dataset has none")
        ev, extra = evaluate_xlgen(model, split.texts, split.Y, ds.label_names, mp, args.topk, args.beam_size)
        extra = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in extra.items()}
        return {**ev.flat(), **extra, "model": str(args.model), "split": args.split}
    inputs = _split_inputs(split, model)
    _check_model_inputs(model, inputs, args.model, args.data)
    if args.verbose and _text_model(model) and not hasattr(inputs, "shape"):
        inputs = model.featurize(inputs)  # texts -> X here, so that -v times the two apart
        stage("features")
    ev = evaluate_model(model, inputs, split.Y, ds.label_names, mp, args.topk, args.beam_size,
                        policy=args.policy or "micro")
    stage("predict", predict_s=round(ev.predict_s, 3))
    out = {**ev.flat(), "model": str(args.model), "split": args.split}
    if args.db:
        out["run_id"] = _record_evaluation(args, model, ds.name, ev)
    return out


def _record_evaluation(args, model, dataset: str, ev) -> str:
    """`evaluate --db`: append the evaluation to DuckDB under a new run id (returned); its params
    carry the model's sha, which `xmc info` looks up."""
    import uuid

    from .results_db import append_evaluation

    run_id = f"cli-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"
    append_evaluation(args.db, run_id, dataset, model.method, args.split, ev.history_metrics(),
                      {**model.params.to_dict(), "model_sha": model.params_sha, "model_dir": str(Path(args.model).resolve()),
                       "source": "xmc evaluate"})
    return run_id


def cmd_info(args) -> None:
    """`xmc info MODEL`: the model card (`model_card.model_card`), readable or --json."""
    from .model_card import card_markdown, model_card

    card = model_card(args.model, db=args.db)
    if args.json:
        print(json.dumps(card))
        return
    # the Markdown tables read as they are in a terminal; drop the separator rows
    for line in card_markdown(card).splitlines():
        if line.startswith("|---"):
            continue
        print(line.replace("**", "").replace("`", ""))
    print("settings: " + json.dumps(card["settings"]))


def cmd_serve(args) -> None:
    """`xmc serve`: the model folder over HTTP (`serve`); runs until interrupted."""
    from .serve import ServeParams, run

    def ready(holder) -> None:  # the model loaded: say where it is served, then listen
        print(json.dumps({"serving": str(args.model), "method": holder.model.method,
                          "url": f"http://{args.host}:{args.port}", "workers": args.workers}), flush=True)

    run(args.model, host=args.host, port=args.port, workers=args.workers,
        params=ServeParams(max_body_bytes=args.max_body_bytes, max_docs=args.max_docs), on_ready=ready)


def cmd_explain(args) -> None:
    """`xmc explain`: why labels came out for one text (`explain.explain_model`), readable or --json."""
    from .explain import ExplainParams, explain_model
    from .model import load_model
    from .textio import text_argument

    model = load_model(args.model)
    text = text_argument(args.text, "--text")
    try:
        res = explain_model(model, text, labels=args.label,
                            params=ExplainParams(topk=args.topk, n_terms=args.terms, beam_size=args.beam_size))
    except ValueError as e:
        raise UsageError(f"--model {args.model}: {e}") from None
    if args.json:
        print(json.dumps(res))
        return
    print(f"{res['method']} model {args.model}; the text's {len(res['text_terms'])} known terms: "
          + ", ".join(f"{t['term']} {t['tfidf']:.2f}" for t in res["text_terms"][:10])
          + (" ..." if len(res["text_terms"]) > 10 else ""))
    if res["note"]:
        print(f"note: {res['note']}")
    for entry in res["labels"]:
        rank = f"#{entry['predicted']}" if entry["predicted"] else "not in the top-k"
        title = f" ({entry['title']})" if entry["title"] != entry["label"] else ""
        print(f"\n{entry['label']}{title}: score {entry['score']:.4g}, {rank}")
        for m in entry["members"]:
            path = m["paths"][m["winning_copy"]]
            head = f"  member {m['member']} (weight {m['weight']:.2f}): " if len(entry["members"]) > 1 else "  "
            copies = f", copy {m['winning_copy'] + 1} of {m['copies']} won" if m["copies"] > 1 else ""
            print(f"{head}path score {path['score']:.4g}{copies}")
            for lv in path["levels"]:
                emb = f" + embedding {lv['embedding']:+.3f}" if "embedding" in lv else ""
                print(f"    level {lv['level']} node {lv['node']} [{lv['cluster']}]: raw {lv['raw']:+.3f} = "
                      f"terms {lv['terms_sum']:+.3f}{emb} + bias {lv['bias']:+.3f} -> {lv['post_processed']:.4g}, "
                      f"path {lv['path_score']:.4g}")
                if lv["terms"]:
                    print("      " + ", ".join(f"{t['term']} {t['contribution']:+.3f}" for t in lv["terms"]))


def cmd_calibrate(args) -> dict:
    """`xmc calibrate`: fit probabilities and decision policies on a split the model was not
    trained on (default: dev) and write them into the model folder (its calibration/ part only)."""
    from .data import load_dataset
    from .model import load_model

    cal_params = _calibration_params(args.calibration_params)
    model = load_model(args.model)
    split_name = args.split
    ds = load_dataset(args.data, splits=("train", split_name or "dev"), max_rows=args.max_rows)
    if split_name is None:
        if ds.dev is None:
            raise UsageError(f"--data {args.data}: no dev split; give --split with documents the model was not "
                             "trained on, or train with --calibrate (it holds out a slice of train)")
        split_name = "dev"
    if getattr(ds, split_name) is None:
        raise UsageError(f"--data {args.data}: no {split_name} split")
    trained_on = model.info.get("data")
    if split_name == "train" and trained_on and Path(trained_on) == Path(args.data).resolve():
        raise UsageError(f"--split train: {args.model} was trained on these documents; its probabilities would be "
                         "over-confident. Calibrate on dev (or train with --calibrate)")
    summary = _calibrate_split(model, ds, split_name, args, cal_params, beam_size=args.beam_size)
    folder = model.save_calibration(args.model)
    return {"model": str(args.model), "calibration": str(folder), **summary}


def _text_model(model) -> bool:
    """An XR-Linear model (or ensemble) with a TF-IDF featurizer (its texts can be featurized apart)."""
    from .ensemble import XmcEnsemble
    from .model import XmcModel

    return isinstance(model, (XmcModel, XmcEnsemble)) and model.featurizer is not None


class _StageLog:
    """-v stage lines of predict / evaluate: {"stage", "seconds", "peak_rss_mb", "rss_mb", ...}
    on stderr, one per stage as it ends (seconds since the previous line; memory in MiB, the
    stage's peak and what it left, `memory.StageMemory`)."""

    def __init__(self, verbose: bool):
        from .memory import StageMemory

        self.verbose = verbose
        self.memory = StageMemory() if verbose else None
        self.t0 = time.perf_counter()

    def __call__(self, name: str, **extra) -> None:
        if not self.verbose:
            return
        now = time.perf_counter()
        rec = self.memory.add({"stage": name, "seconds": round(now - self.t0, 3), **extra})
        print(json.dumps(rec), file=sys.stderr)
        self.t0 = time.perf_counter()


def cmd_synth(args) -> dict:
    from .synth import SynthParams, write_synth

    density = {k: v for k, v in (("words_per_doc", args.words_per_doc), ("labels_per_doc", args.labels_per_doc))
               if v is not None}
    params = SynthParams(n_labels=args.labels, n_train=args.train, n_test=args.test, seed=args.seed,
                         **({"n_features": args.features} if args.features else {}), **density)
    t0 = time.perf_counter()
    try:
        write_synth(args.out, params)
    except ValueError as e:  # settings out of range (SynthParams.validate, the vocabulary regions)
        raise UsageError(f"xmc synth: {e}") from None
    return {"out": str(args.out), "n_labels": args.labels, "n_train": args.train, "n_test": args.test,
            "seconds": round(time.perf_counter() - t0, 3)}


def cmd_runs(args) -> None:
    """`xmc runs`: the evaluated runs in DuckDB; `--compare A B`: two runs metric by metric."""
    import polars as pl

    from .results_db import compare_runs, list_runs

    db = Path(args.db)
    if not db.is_file():
        raise UsageError(f"--db {db}: no such file (the main job writes the evaluation history to data/xmc.duckdb; "
                         "$XMC_DUCKDB sets the default)")
    if args.compare:
        a, b = args.compare
        known = list_runs(db)["run_id"].to_list()

        def resolve(prefix: str) -> str:  # a unique prefix of a run id is enough
            hits = sorted({r for r in known if r.startswith(prefix)})
            if len(hits) != 1:
                raise UsageError(f"--compare: {prefix!r} matches {len(hits)} runs in {db}"
                                 + (f" ({', '.join(h[:8] for h in hits)})" if hits else ""))
            return hits[0]

        df = compare_runs(db, resolve(a), resolve(b))
    else:
        df = list_runs(db, dataset=args.dataset, limit=args.limit)
        df = df.with_columns(pl.col("created_at").dt.strftime("%Y-%m-%d %H:%M:%S"))
    if args.json:
        for row in df.iter_rows(named=True):
            print(json.dumps(row, default=str))
        return
    rows = [[("" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)) for v in r] for r in df.rows()]
    widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(df.columns)]
    print("  ".join(c.ljust(w) for c, w in zip(df.columns, widths)).rstrip())
    for r in rows:
        print("  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip())


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, as every other input error (exit status 2)."""

    def error(self, message):
        hint = ""
        if "expected one argument" in message:
            hint = " (a value that starts with '-' is written as --option=VALUE)"
        self.exit(2, f"xmc: error: {message}{hint}; see '{self.prog} --help'\n")


def build_parser() -> argparse.ArgumentParser:
    from .presets import PRESETS

    ap = _Parser(prog="xmc", description="Extreme multi-label classification: train, calibrate, predict, evaluate, "
                                         "explain and describe models; results go to stdout (JSON lines or a "
                                         "table), progress and errors to stderr.")
    ap.add_argument("--version", action="version", version=f"xmc {_version()}",
                    help="print xmc's version and exit")
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # every command: progress on stderr (a bar on a terminal, a line every 10 s otherwise)
    common = _Parser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or progress lines on stderr (results and errors are still printed; "
                             "without it a terminal shows bars with rate and time left, other output a line every "
                             "$XMC_PROGRESS_INTERVAL seconds, default 10)")

    def add(name, help: str):
        # the summary in 'xmc --help' is also the first line of 'xmc NAME --help'
        return sub.add_parser(name, parents=[common], help=help, description=help[0].upper() + help[1:] + ".")

    p = add("train", help="train a model on a dataset folder; prints one JSON line (model, sizes, seconds, peak MiB)")
    p.add_argument("--method", default="xr-linear", choices=None,
                   help="default xr-linear; xr-linear-ld (label disentanglement; settings in the params' "
                        "`disentangle` section: max_copies, rounds, size_cap_factor, min_share, merge); "
                        "xr-transformer (raw texts; sections encoder, finetune besides XR-Linear's; resumes "
                        "from MODEL.checkpoint/ after a kill); xlgen (raw texts; generates the labels, flat "
                        "XLGenParams: variant base|bcl|mcg, decoding label_token|label_text, pu_drop, steps, ...; "
                        "resumes from MODEL.checkpoint/ after a kill)")
    p.add_argument("--data", required=True, help="dataset folder (raw text, XC BoW or PECOS xmc-base layout)")
    p.add_argument("--model", required=True,
                   help="output model folder: a new path, or a model folder xmc wrote (replaced when training "
                        "succeeds); any other existing folder or file is refused")
    p.add_argument("--features", choices=("auto", "text", "matrix"), default="auto",
                   help="xr-linear: 'text' fits TF-IDF on the raw texts, 'matrix' trains on the dataset's feature "
                        "matrix (XC bag of words, PECOS tfidf-*/X.trn.npz); 'auto' (default): the texts where there "
                        "are any. The output's 'features' says which was used")
    p.add_argument("--params", help="JSON file or inline JSON object of nested settings, applied over the preset "
                                    "(sections tfidf, pifa, tree, ranker, pred, disentangle, ensemble; e.g. "
                                    "'{\"ranker\": {\"Cn\": 2}}'); default: none")
    p.add_argument("--preset", choices=tuple(PRESETS), default="default",
                   help="xr-linear settings to start from (--params applies over them): default, the fast "
                        "single model; accurate, an ensemble of 3 trees (about 3-4x the training time and 3x the "
                        "prediction time); sets, the single model with less regularized rankers (Cp = Cn = 3) for "
                        "calibrated label sets on long documents (longer ranker training); accurate-text, the "
                        "accurate ensemble with pretrained MiniLM embeddings joined to the TF-IDF of raw texts "
                        "(minutes of encoder time on CPU; xmc_core/presets.py)")
    p.add_argument("--threads", type=int, default=None,
                   help="worker threads (count) for TF-IDF, the tree, the rankers and BLAS; default: all cores")
    p.add_argument("--max-rows", type=int, default=None,
                   help="read only the first N documents of each split (count; quick runs); default: all")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="stage lines on stderr (JSON): seconds, peak and final resident memory (MiB) of each "
                        "stage (load, features, label_embeddings, label_tree, each rankers_level, save)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="xr-linear: 'local' (default) trains in this process with threads; 'ray' trains every "
                        "top-level sub-tree of the label tree as a Ray task (same model; TFN negatives only)")
    p.add_argument("--ray-address", default=None,
                   help="--engine ray: the cluster to join ('auto': the one 'ray start' runs on this machine; "
                        "'ray://HOST:10001': Ray Client); default: a local Ray started for the run")
    p.add_argument("--ray-split-level", type=int, default=1,
                   help="--engine ray: tree level whose nodes root the sub-tree clustering tasks (default 1: the top "
                        "clusters; deeper: more, smaller tasks); the rankers are cut into chunks of equal cost")
    p.add_argument("--ray-cpus-per-task", type=int, default=1,
                   help="--engine ray: CPUs (threads) per task (count, default 1)")
    p.add_argument("--calibrate", action="store_true",
                   help="also fit probabilities and label-set thresholds (see 'xmc calibrate'): on the dev split "
                        "where the dataset has one; otherwise (xr-linear) a sibling model trained on all but a seeded "
                        "10%% of train is calibrated on that 10%% (the saved model is trained on all of train)")
    p.add_argument("--refit", action="store_true",
                   help="with --calibrate on a dataset with a dev split (xr-linear): calibrate a model trained on "
                        "train on the dev split, then save a model trained on train+dev with that calibration (as "
                        "--calibrate does without a dev split); twice the training time, more training documents")
    p.add_argument("--calibration-params", default=None,
                   help="with --calibrate: JSON file or inline object of CalibrationParams (method, groups, topk, "
                        "max_set_size, at_least_one, min_label_positives, holdout_frac, seed); default: their defaults")

    p = add("predict", help="predict labels: one JSON line per document, {doc, labels, scores} (or label sets "
                            "with probabilities)")
    p.add_argument("--model", required=True, help="model folder ('xmc train' or the Dagster rankers asset wrote it)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--data", help="dataset folder: predicts its --split; default (without --data and --text): "
                                    "one document per line on stdin")
    src.add_argument("--text", help="one document, as a string")
    p.add_argument("--split", default="test", choices=("train", "test", "dev"),
                   help="with --data: the split to predict (default test)")
    p.add_argument("--topk", type=int, default=None,
                   help="labels per document (count, default 5; not with --sets)")
    p.add_argument("--beam-size", type=int, default=None,
                   help="tree nodes kept per level by the beam search (count; larger: slower, sometimes better "
                        "recall); default: the model's (10 unless trained otherwise)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="with --data: only the first N documents (count); default: all")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="stage lines on stderr: seconds, peak and final resident memory (MiB)")
    p.add_argument("--sets", action="store_true",
                   help="each document's label set with calibrated probabilities ({doc, labels, probabilities}); "
                        "needs a calibrated model ('xmc calibrate' or train --calibrate)")
    p.add_argument("--policy", choices=("micro", "macro"), default=None,
                   help="--sets (default micro): 'micro' one threshold (best micro-F1 on the held-out documents), 'macro' per-label "
                        "thresholds (best macro-F1)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="'local' (default): this process; 'ray': score shards on Ray actors (the model loaded once per actor) and write Parquet "
                        "shards to --out (doc, labels, scores; input order) instead of JSON lines")
    p.add_argument("--inputs", nargs="+", default=None, metavar="FILE",
                   help="--engine ray: input files, each a shard (text: one document per line; or an .npz CSR "
                        "feature matrix); instead of --data/--text/stdin")
    p.add_argument("--out", default=None, help="--engine ray: output folder of the Parquet shards (required there)")
    p.add_argument("--shard-rows", type=int, default=50000,
                   help="--engine ray: documents per shard of a --data split or stdin (default 50000); each --inputs "
                        "file is one shard")
    p.add_argument("--actors", type=int, default=2,
                   help="--engine ray: model replicas (Ray actors, 1 CPU each; count, default 2)")
    p.add_argument("--ray-address", default=None, help="--engine ray: cluster to join (default: a local Ray)")

    p = add("calibrate", help="fit probabilities and label-set thresholds on held-out documents; "
                                         "written into the model folder")
    p.add_argument("--model", required=True, help="a model folder xmc wrote (its calibration/ part is replaced)")
    p.add_argument("--data", required=True, help="dataset folder")
    p.add_argument("--split", default=None, choices=("dev", "test", "train"),
                   help="documents the model was not trained on (default: dev); train is refused for the dataset "
                        "the model was trained on")
    p.add_argument("--calibration-params", default=None,
                   help="JSON file or inline object of CalibrationParams (method, groups, topk, max_set_size, "
                        "at_least_one, min_label_positives); default: their defaults")
    p.add_argument("--beam-size", type=int, default=None,
                   help="tree nodes kept per level while scoring the held-out documents (count); default: the model's")
    p.add_argument("--max-rows", type=int, default=None,
                   help="only the first N documents of the split (count); default: all")

    p = add("evaluate", help="P@k, R@k, RP@k, nDCG@k, PSP@k on a split; for a calibrated model also "
                                        "label-set P/R/F1, ECE and Brier score, overall and by label frequency")
    p.add_argument("--model", required=True, help="model folder")
    p.add_argument("--data", required=True, help="dataset folder with the split to score")
    p.add_argument("--split", default="test", choices=("train", "test", "dev"), help="the split scored (default test)")
    p.add_argument("--json", action="store_true", help="one JSON line (default: a table)")
    p.add_argument("--db", default=None,
                   help="also append the evaluation to this DuckDB file (table evaluation, with the model's sha, so "
                        "'xmc info' shows it as the model's last evaluation); default: not recorded")
    p.add_argument("--topk", type=int, default=None,
                   help="rank at most K labels per document (default: the largest cut-off, 10); metrics at a "
                        "cut-off above K count the places left empty as misses")
    p.add_argument("--beam-size", type=int, default=None,
                   help="tree nodes kept per level (count); default: the model's")
    p.add_argument("--propensity-a", type=float, default=0.55,
                   help="A of the Jain et al. (2016) propensity model used by PSP@k (default 0.55; 0.5 for "
                        "Wikipedia-like sets, 0.6 for Amazon-like)")
    p.add_argument("--propensity-b", type=float, default=1.5,
                   help="B of the propensity model used by PSP@k (default 1.5; 0.4 for Wikipedia-like, 2.6 for "
                        "Amazon-like)")
    p.add_argument("--policy", choices=("micro", "macro"), default=None,
                   help="a calibrated model's label-set policy to score (default micro)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="only the first N documents of the split (count); default: all")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="stage lines on stderr: seconds, peak and final resident memory (MiB)")

    p = add("synth", help="generate a synthetic XMC dataset (XC BoW format) with known label structure")
    p.add_argument("out", help="the dataset folder to write (a new path, or a dataset folder xmc wrote)")
    p.add_argument("--labels", type=int, required=True, help="labels L (count)")
    p.add_argument("--train", type=int, required=True, help="training documents (count)")
    p.add_argument("--test", type=int, required=True, help="test documents (count)")
    p.add_argument("--features", type=int, default=None,
                   help="vocabulary size (feature columns, count); default: grows with the labels (synth.SynthParams)")
    p.add_argument("--words-per-doc", type=int, default=None,
                   help="mean word tokens per document (default 80: about 72 distinct features, nonzeros, per "
                        "document; PROVENANCE.md gives the realised count)")
    p.add_argument("--labels-per-doc", type=float, default=None,
                   help="mean labels drawn per document, >= 1 (default 3.0: about 2.7 distinct)")
    p.add_argument("--seed", type=int, default=0, help="random seed (int, default 0): the same seed, the same files")

    p = add("runs", help="evaluated runs in DuckDB; --compare RUN_A RUN_B metric by metric")
    p.add_argument("--db", default=os.environ.get("XMC_DUCKDB", "data/xmc.duckdb"),
                   help="DuckDB file (default $XMC_DUCKDB or data/xmc.duckdb)")
    p.add_argument("--dataset", default=None, help="only this dataset")
    p.add_argument("--limit", type=int, default=None, help="only the latest N runs")
    p.add_argument("--compare", nargs=2, metavar=("RUN_A", "RUN_B"), help="run ids (or unique prefixes)")
    p.add_argument("--json", action="store_true", help="JSON lines instead of a table")

    p = add("info", help="a model card: method, labels, features, tree levels, settings, training time and data "
                         "fingerprint, size on disk, calibration, and the last evaluation recorded in DuckDB")
    p.add_argument("model", help="model folder")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the readable card")
    p.add_argument("--db", default=os.environ.get("XMC_DUCKDB", "data/xmc.duckdb"),
                   help="DuckDB history searched for the model's last evaluation (default $XMC_DUCKDB or "
                        "data/xmc.duckdb; a missing file: none)")

    p = add("explain", help="why labels were predicted for a text: the path of clusters down the tree, each "
                            "level's score, and the terms that contributed most")
    p.add_argument("--model", required=True, help="model folder (xr-linear, xr-linear-ld, an ensemble or "
                                                  "xr-transformer; xlgen has no tree to explain)")
    p.add_argument("--text", required=True, help="the document, as a string")
    p.add_argument("--label", action="append", default=None, metavar="LABEL",
                   help="explain this label (a name from the model's labels.txt; repeat for several), predicted or "
                        "not; default: the top --topk predicted labels")
    p.add_argument("--topk", type=int, default=5, help="predicted labels explained (count, default 5)")
    p.add_argument("--terms", type=int, default=8, help="terms listed per level (count, default 8)")
    p.add_argument("--beam-size", type=int, default=None,
                   help="tree nodes kept per level for the prediction (count); default: the model's")
    p.add_argument("--json", action="store_true", help="one JSON object instead of the readable explanation")

    p = add("serve", help="answer predictions over HTTP (JSON): POST /predict, GET /health, GET /model, POST /reload")
    p.add_argument("--model", required=True, help="model folder (any kind; loaded once per worker)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000)")
    p.add_argument("--workers", type=int, default=1,
                   help="worker processes, each with its own copy of the model and one request at a time "
                        "(count, default 1)")
    p.add_argument("--max-docs", type=int, default=256,
                   help="most documents per request (count, default 256; more: 413)")
    p.add_argument("--max-body-bytes", type=int, default=1_000_000,
                   help="largest request body (bytes, default 1000000; larger: 413)")
    p.add_argument("--threads", type=int, default=1,
                   help="threads per worker for scoring (count, default 1: a request is one document or a few)")
    return ap


def _version() -> str:
    """The installed xmc's version (pyproject's), or "unknown" when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("xmc")
    except PackageNotFoundError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    """The `xmc` command line: train, calibrate, predict, evaluate, synth, runs, info, explain.

    Args:
        argv: the arguments after the program name (None: ``sys.argv[1:]``).

    Returns:
        Exit status (int): 0 on success (or a closed output pipe), 2 after a one-line
        "xmc: error: ..." on stderr for a usage error, a malformed dataset (DataFormatError),
        a bad model folder (ModelFormatError) or an OSError naming a path.

    Raises:
        SystemExit: from argparse, on unparsable arguments or --help.
    """
    args = build_parser().parse_args(argv)
    _set_threads(getattr(args, "threads", None))
    from . import progress
    from .data import DataFormatError
    from .model import ModelFormatError
    from .model_base import NotCalibratedError

    # progress goes to stderr only: stdout carries the results (JSON lines, tables)
    previous = progress.install(progress.for_stream(sys.stderr, quiet=args.quiet))
    try:
        _check_args(args)
        if args.command == "train":
            print(json.dumps(cmd_train(args)))
        elif args.command == "predict":
            cmd_predict(args)
        elif args.command == "calibrate":
            print(json.dumps(cmd_calibrate(args)))
        elif args.command == "evaluate":
            res = cmd_evaluate(args)
            if args.json:
                print(json.dumps(res))
            else:
                for key, value in res.items():
                    print(f"{key:>12}  {value}")
        elif args.command == "synth":
            print(json.dumps(cmd_synth(args)))
        elif args.command == "runs":
            cmd_runs(args)
        elif args.command == "info":
            cmd_info(args)
        elif args.command == "explain":
            cmd_explain(args)
        elif args.command == "serve":
            cmd_serve(args)
    except BrokenPipeError:  # an OSError: before the handler below
        return 0
    except (UsageError, DataFormatError, ModelFormatError, NotCalibratedError, OSError) as e:
        # OSError: a path that cannot be read or written (missing, a file where a folder is
        # expected, permissions, disk full); one line, the message names the path.
        print("xmc: error: " + " ".join(str(e).split()), file=sys.stderr)
        return 2
    finally:
        progress.install(previous)
    return 0


if __name__ == "__main__":
    sys.exit(main())
