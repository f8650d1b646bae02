"""`xmc serve`: a model folder behind an HTTP JSON API (Starlette on uvicorn).

Endpoints:

* ``POST /predict`` with ``{"texts": ["...", ...]}`` (models with a text featurizer) or
  ``{"rows": [{"<feature id>": value, ...}, ...]}`` (bag-of-words models), and optionally
  ``"topk"`` (labels per document, default 5). Answers ``{"results": [{"labels": [...],
  "scores": [...]}, ...]}``, one per document in order; a calibrated model adds each document's
  label set, ``"set": {"labels": [...], "probabilities": [...]}`` (micro policy).
* ``GET /health``: ``{"status": "ok", "method", "model_sha", "n_labels", "loaded_at"}``.
* ``GET /model``: the model card (`model_card.model_card`).
* ``POST /reload``: load the folder again. The new model is loaded completely before it
  replaces the one serving, so a request is answered by the old model or the new one, never by
  a half-read folder; a folder that does not load leaves the old model serving (409 with the
  reason). Model folders are written atomically (`folders.atomic_dir`), so a reload during
  ``xmc train`` reads the previous folder or the new one.

Bad requests get a 4xx with ``{"error": "<one line>"}``: 400 for a body that is not a JSON
object, unknown or missing fields, wrong types, empty lists, feature ids out of range or texts
for a model without a featurizer; 413 for a body over `ServeParams.max_body_bytes` or more than
`max_docs` documents; 405/404 from the router. The model is loaded once per worker process
(XR-Transformer's encoder too) and predicts in the event loop: one worker answers one request at
a time, ``--workers N`` runs N processes.
"""

from __future__ import annotations

import gc
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import scipy.sparse as smat

from .params import ParamsBase

__all__ = ["ServeParams", "ModelHolder", "RequestError", "Rows", "parse_request", "build_app", "app_from_env", "run"]

#: environment variables through which `xmc serve --workers N` hands its settings to each worker
MODEL_ENV, PARAMS_ENV = "XMC_SERVE_MODEL", "XMC_SERVE_PARAMS"
#: fields a /predict body may have
PREDICT_FIELDS = frozenset({"texts", "rows", "topk"})


@dataclass
class ServeParams(ParamsBase):
    """Limits of the service.

    max_body_bytes: largest request body (bytes; larger: 413).
    max_docs: most documents per request (larger: 413).
    max_text_chars: longest text (characters; longer: 413).
    max_topk: largest topk a request may ask for.
    default_topk: labels per document when the request gives no topk.
    """

    max_body_bytes: int = 1_000_000
    max_docs: int = 256
    max_text_chars: int = 100_000
    max_topk: int = 100
    default_topk: int = 5


class RequestError(Exception):
    """A request the service refuses: `status` (4xx) and a one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class ModelHolder:
    """The model a service answers with, replaced whole on reload.

    Args:
        path: the model folder.
        freeze: a service process's holder: once a model is loaded, everything alive is moved
            out of the garbage collector's view (`gc.freeze`), so that a full collection walks a
            request's own objects only, not the whole process, and stops adding milliseconds to
            the slowest answers (the p99). A reload unfreezes, so the old model can be freed.

    Raises:
        ModelFormatError: the folder does not load (at start; a failed reload keeps the old model).
    """

    def __init__(self, path: str | Path, freeze: bool = False):
        self.path = Path(path)
        self.freeze = freeze
        self._lock = threading.Lock()
        self.model, self.loaded_at = self._load()
        self._freeze()

    def _freeze(self) -> None:
        if self.freeze:
            gc.collect()
            gc.freeze()

    def _load(self):
        from .model import load_model

        model = load_model(self.path)
        # a first prediction builds what a request should not pay for (chunks, featurizer index,
        # the compiled kernels read from numba's cache)
        if getattr(model, "featurizer", None) is not None:
            model.predict(["warm up"], topk=1)
        elif model.method not in ("xr-transformer", "xlgen"):
            model.predict(smat.csr_matrix((1, model.n_features), dtype=np.float32), topk=1)
        return model, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def reload(self) -> dict:
        """Load the folder again and swap the new model in (the old one keeps serving until then).

        Returns:
            {"reloaded": True, "model_sha", "loaded_at"}.

        Raises:
            ModelFormatError: the folder does not load; the old model stays.
        """
        with self._lock:  # one reload at a time; requests keep reading self.model meanwhile
            model, loaded_at = self._load()
            if self.freeze:
                gc.unfreeze()  # the old model's objects go back to the collector once dropped
            self.model, self.loaded_at = model, loaded_at
            self._freeze()
        return {"reloaded": True, "model_sha": model.params_sha, "loaded_at": loaded_at}


def _int(value, name: str, lo: int, hi: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise RequestError(400, f"{name}: an integer, got {type(value).__name__}")
    if not lo <= value <= hi:
        raise RequestError(400, f"{name}: between {lo} and {hi}, got {value}")
    return value


def parse_request(body: bytes, model, params: ServeParams):
    """Check a /predict body and turn it into model inputs.

    Args:
        body: the raw request body.
        model: the loaded model (its featurizer and feature count decide texts or rows).
        params: the service's limits.

    Returns:
        (inputs, topk): a list of texts, or the rows as `Rows` (checked sparse rows, normalized
        by the model as `xmc predict` does); topk an int.

    Raises:
        RequestError: 400 or 413 with a one-line reason.
    """
    if len(body) > params.max_body_bytes:
        raise RequestError(413, f"body: {len(body)} bytes, at most {params.max_body_bytes}")
    if not body.strip():
        raise RequestError(400, 'body: empty; send a JSON object such as {"texts": ["..."]}')
    try:
        req = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise RequestError(400, f"body: not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(req, dict):
        raise RequestError(400, f"body: a JSON object, got {type(req).__name__}")
    unknown = sorted(set(req) - PREDICT_FIELDS)
    if unknown:
        raise RequestError(400, f"{unknown[0]}: unknown field (fields: texts or rows, and topk)")
    if ("texts" in req) == ("rows" in req):
        raise RequestError(400, "give exactly one of texts and rows")
    topk = _int(req.get("topk", params.default_topk), "topk", 1, min(params.max_topk, model.n_labels))
    has_featurizer = getattr(model, "featurizer", None) is not None or model.method == "xlgen"
    if "texts" in req:
        texts = req["texts"]
        if not has_featurizer:
            raise RequestError(400, "texts: this model was trained on feature vectors; send rows")
        if not isinstance(texts, list) or not texts:
            raise RequestError(400, "texts: a non-empty list of strings")
        if len(texts) > params.max_docs:
            raise RequestError(413, f"texts: {len(texts)} documents, at most {params.max_docs} per request")
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise RequestError(400, f"texts[{i}]: a string, got {type(t).__name__}")
            if len(t) > params.max_text_chars:
                raise RequestError(413, f"texts[{i}]: {len(t)} characters, at most {params.max_text_chars}")
        return texts, topk
    rows = req["rows"]
    if model.method in ("xr-transformer", "xlgen"):
        raise RequestError(400, f"rows: {model.method} models read texts; send texts")
    if not isinstance(rows, list) or not rows:
        raise RequestError(400, 'rows: a non-empty list of objects {"<feature id>": value}')
    if len(rows) > params.max_docs:
        raise RequestError(413, f"rows: {len(rows)} documents, at most {params.max_docs} per request")
    return Rows(_rows_arrays(rows, model.n_features), model.n_features), topk


@dataclass
class Rows:
    """The bag-of-words documents of a request.

    Attributes:
        rows: per document, (feature ids int32, ascending and distinct; values float32).
        n_features: the model's feature width D.
    """

    rows: list[tuple[np.ndarray, np.ndarray]]
    n_features: int

    def matrix(self) -> smat.csr_matrix:
        """The rows as one N × D float32 CSR (indices sorted, canonical)."""
        X = smat.csr_matrix((np.concatenate([v for _, v in self.rows]), np.concatenate([i for i, _ in self.rows]),
                             np.concatenate([[0], np.cumsum([len(i) for i, _ in self.rows])]).astype(np.int32)),
                            shape=(len(self.rows), self.n_features))
        X.has_sorted_indices = True
        X.has_canonical_format = True
        return X


def _rows_arrays(rows: list, D: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Checked `rows` objects ({"<feature id>": value}) as (ids int32, values float32) arrays, ids
    ascending, duplicate ids ("7" and "07") summed (a request is a few rows: numpy per row, not
    a loop per feature). Raises RequestError (400) naming the first bad row, id or value."""
    out = []
    for i, row in enumerate(rows):
        if not isinstance(row, dict):
            raise RequestError(400, f"rows[{i}]: an object {{\"<feature id>\": value}}, got {type(row).__name__}")
        n = len(row)
        try:
            idx = np.fromiter(map(int, row), np.int64, n)
        except (ValueError, OverflowError):
            key = next((k for k in row if not _is_int(k)), None)
            if key is not None:
                raise RequestError(400, f"rows[{i}]: feature id {key!r} is not an integer") from None
            key = next(k for k in row if not -2**63 <= int(k) < 2**63)
            raise RequestError(400, f"rows[{i}]: feature id {int(key)} out of range 0..{D - 1}") from None
        values = row.values()
        if not all(type(v) in (int, float) for v in values):  # bool, str, None, lists: not numbers
            key, value = next((k, v) for k, v in row.items() if type(v) not in (int, float))
            raise RequestError(400, f"rows[{i}][{key!r}]: a finite number, got {value!r}")
        try:
            val = np.fromiter(values, np.float64, n)
        except OverflowError:  # an int past float64
            val = np.full(n, np.inf)
        if n and (idx.min() < 0 or idx.max() >= D):
            j = int(idx[(idx < 0) | (idx >= D)][0])
            raise RequestError(400, f"rows[{i}]: feature id {j} out of range 0..{D - 1}")
        bad = ~np.isfinite(val)
        if bad.any():
            key = list(row)[int(np.flatnonzero(bad)[0])]
            raise RequestError(400, f"rows[{i}][{key!r}]: a finite number, got {row[key]!r}")
        val = val.astype(np.float32)
        if n > 1 and not (idx[1:] > idx[:-1]).all():  # not ascending already (most clients send it so)
            order = np.argsort(idx, kind="stable")
            idx, val = idx[order], val[order]
            if (idx[1:] == idx[:-1]).any():  # the same id twice: summed, in the order given
                first = np.concatenate([[True], idx[1:] != idx[:-1]])
                val = np.add.reduceat(val, np.flatnonzero(first))
                idx = idx[first]
        out.append((idx.astype(np.int32), val))
    return out


def _is_int(key: str) -> bool:
    try:
        int(key)
    except ValueError:
        return False
    return True


def predict_response(model, inputs, topk: int) -> dict:
    """The /predict answer for checked inputs: labels and scores per document, best first, and the
    label set with probabilities when the model is calibrated (micro policy).

    Rows go one by one through the model's `predict_row_labels` where it has one (XR-Linear)
    and no label sets are asked: the same answer as the matrix path, without its scipy matrices.

    Args:
        model: the loaded model.
        inputs: texts or `Rows` (`parse_request`).
        topk: labels per document.

    Returns:
        {"results": [{"labels", "scores", "set"?}, ...]}; scores as float32 arrays, which
        `to_json` writes in the fewest digits that read back as the same float32 (a score of
        1e-7 stays 1e-7, not 0.0).
    """
    calibrated = getattr(model, "calibration", None) is not None
    by_row = getattr(model, "predict_row_labels", None)
    if isinstance(inputs, Rows) and by_row is not None and not calibrated:
        ranked = [by_row(ids, values, topk) for ids, values in inputs.rows]
    else:
        if isinstance(inputs, Rows):
            inputs = inputs.matrix()
        ranked = model.predict_labels(inputs, topk=topk)
    results = [{"labels": [name for name, _ in labels], "scores": np.asarray([s for _, s in labels], np.float32)}
               for labels in ranked]
    if calibrated:
        for res, labels in zip(results, model.named_sets(inputs, policy="micro")):
            res["set"] = {"labels": [name for name, _ in labels], "probabilities": [round(p, 6) for _, p in labels]}
    return {"results": results}


def to_json(obj) -> bytes:
    """`obj` as JSON bytes (orjson; numpy arrays as lists, float32 in shortest form)."""
    return orjson.dumps(obj, option=orjson.OPT_SERIALIZE_NUMPY)


def build_app(holder: ModelHolder, params: ServeParams | None = None):
    """The Starlette application of a service.

    Args:
        holder: the ModelHolder of the model folder.
        params: the limits (None: defaults).

    Returns:
        A Starlette ASGI app (run it with uvicorn, or test it with starlette.testclient).
    """
    from starlette.applications import Starlette
    from starlette.responses import Response
    from starlette.routing import Route

    class JSONResponse(Response):  # orjson: several times faster than the json module
        media_type = "application/json"

        def render(self, content) -> bytes:
            return to_json(content)

    from .model_base import ModelFormatError, one_line

    params = params or ServeParams()

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": one_line(message)}, status_code=status)

    async def predict(request):
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > params.max_body_bytes:
            return error(413, f"body: {length} bytes, at most {params.max_body_bytes}")
        body = await request.body()
        model = holder.model  # one model for the whole request, even if a reload swaps it meanwhile
        try:
            inputs, topk = parse_request(body, model, params)
            return JSONResponse(predict_response(model, inputs, topk))
        except RequestError as e:
            return error(e.status, str(e))
        except ValueError as e:  # e.g. a text that is not valid Unicode (a lone surrogate)
            return error(400, str(e))

    async def health(request):
        m = holder.model
        return JSONResponse({"status": "ok", "method": m.method, "model_sha": m.params_sha, "n_labels": m.n_labels,
                             "loaded_at": holder.loaded_at})

    async def card(request):
        from .model_card import model_card

        return JSONResponse(model_card(holder.path))

    async def reload(request):
        try:
            return JSONResponse(holder.reload())
        except (ModelFormatError, OSError) as e:
            return error(409, f"reload: {e}; still serving model {holder.model.params_sha}")

    return Starlette(routes=[Route("/predict", predict, methods=["POST"]), Route("/health", health, methods=["GET"]),
                             Route("/model", card, methods=["GET"]), Route("/reload", reload, methods=["POST"])])


def app_from_env():
    """The app of a uvicorn worker process: model folder and limits from $XMC_SERVE_MODEL and
    $XMC_SERVE_PARAMS (what `run` sets for ``--workers N``)."""
    params = ServeParams.from_dict(json.loads(os.environ.get(PARAMS_ENV) or "{}"))
    return build_app(ModelHolder(os.environ[MODEL_ENV], freeze=True), params)


def run(model: str | Path, host: str = "127.0.0.1", port: int = 8000, workers: int = 1,
        params: ServeParams | None = None, log_level: str = "warning", on_ready=None) -> None:
    """Serve `model` until interrupted.

    Args:
        model: the model folder (checked to load before the server starts).
        host, port: where to listen (loopback by default).
        workers: uvicorn worker processes, each with its own copy of the model.
        params: the limits (None: defaults).
        log_level: uvicorn's log level.
        on_ready: called with the ModelHolder once the model has loaded, before listening.

    Raises:
        ModelFormatError: the folder does not load.
    """
    import uvicorn

    params = params or ServeParams()
    holder = ModelHolder(model, freeze=True)  # a bad folder fails here, in one line, before any socket opens
    if on_ready is not None:
        on_ready(holder)
    # lifespan "off": the app has no startup or shutdown hooks (the model loads before listening),
    # and a lifespan task cancelled by a second Ctrl-C was logged as an error with a traceback
    try:
        if workers <= 1:
            uvicorn.run(build_app(holder, params), host=host, port=port, log_level=log_level, access_log=False,
                        lifespan="off")
            return
        del holder
        os.environ[MODEL_ENV] = str(Path(model).resolve())
        os.environ[PARAMS_ENV] = json.dumps(params.to_dict())
        uvicorn.run("xmc_core.serve:app_from_env", factory=True, host=host, port=port, workers=workers,
                    log_level=log_level, access_log=False, lifespan="off")
    except KeyboardInterrupt:  # Ctrl-C: uvicorn has shut down, then raised it again
        return
