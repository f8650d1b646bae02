"""Small helpers that turn numbers into Dagster metadata (markdown tables, tiny PNG plots)."""

from __future__ import annotations

import base64
import functools
import io
import math
from pathlib import Path
from typing import Sequence

import numpy as np
from dagster import MaterializeResult, MetadataValue


def markdown_table(header: Sequence[str], rows: Sequence[Sequence], floatfmt: str = ".2f") -> str:
    def cell(v):
        if isinstance(v, (float, np.floating)):
            # NaN: a number that has no value here (e.g. ECE of a bucket without labels)
            return "—" if math.isnan(v) else format(float(v), floatfmt)
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def frame_markdown(df, floatfmt: str = ".2f") -> str:
    """A polars DataFrame as a markdown table."""
    return markdown_table(df.columns, df.rows(), floatfmt)


def copies_markdown(copies, top: int = 20) -> str:
    """The first `top` rows of a `copy_table` (labels whose copies carry the most training
    documents): each cluster named by its signature, with the share of the label's routing mass
    that lands there."""
    if copies.height == 0:
        return "(no label got a copy)"

    def where(sigs, shares):
        return "; ".join(f"{sig} ({share:.2f})".replace("|", "\\|") for sig, share in zip(sigs, shares))

    def label(r):
        text = r["label"] if r["title"] == r["label"] else f"{r['title']} ({r['label']})"
        return text.replace("|", "\\|")

    rows = [(label(r), round(r["train_docs"]), where(r["signatures"][:1], r["shares"][:1]),
             where(r["signatures"][1:], r["shares"][1:]), round(r["docs_via_copies"]))
            for r in copies.head(top).iter_rows(named=True)]
    header = ("label", "train docs", "original cluster (share)", "added clusters (share)", "docs via copies")
    note = f"\n\n{copies.height} labels have copies; clusters named by their most frequent labels."
    return markdown_table(header, rows) + note


def png_markdown(fig, alt: str) -> MetadataValue:
    """A matplotlib figure embedded as a base64 PNG (kept small: metadata lives in the event log)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=72, bbox_inches="tight")
    plt.close(fig)
    b64 = base64.b64encode(buf.getvalue()).decode()
    return MetadataValue.md(f"![{alt}](data:image/png;base64,{b64})")


def _figure(width: float = 4.0, height: float = 2.4):
    import matplotlib

    matplotlib.use("Agg")  # no display on servers; must precede pyplot
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(width, height))


def label_frequency_plot(label_counts: np.ndarray) -> MetadataValue:
    """Training documents per label, labels sorted by frequency (log y): the long tail at a glance.
    Labels without training documents cannot sit on a log axis; the title counts them."""
    fig, ax = _figure()
    counts = np.sort(np.asarray(label_counts))[::-1]
    positive = counts[counts > 0]
    ax.plot(np.arange(1, len(positive) + 1), positive, lw=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("label rank")
    ax.set_ylabel("train docs")
    missing = len(counts) - len(positive)
    ax.set_title("label frequency (train)" + (f"; {missing} labels without docs" if missing else ""), fontsize=9)
    return png_markdown(fig, "label frequency")


def histogram_plot(values: np.ndarray, xlabel: str, title: str) -> MetadataValue:
    """Histogram of integer values (one bar per value when the range is small)."""
    fig, ax = _figure()
    values = np.asarray(values)
    lo, hi = int(values.min()), int(values.max())
    bins = np.arange(lo, hi + 2) - 0.5 if hi - lo < 40 else 30
    ax.hist(values, bins=bins, rwidth=0.85)
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    ax.set_title(title, fontsize=9)
    return png_markdown(fig, title)


def reliability_plot(bins: Sequence[dict], bins_raw: Sequence[dict] | None = None, title: str = "") -> MetadataValue:
    """A reliability diagram (PNG): fraction of right labels against mean predicted probability per
    bin (`metrics.calibration_metrics` bins), the raw scores' beside the calibrated ones."""
    fig, ax = _figure(3.6, 3.0)
    ax.plot([0, 1], [0, 1], color="0.7", lw=1, ls="--")
    for b, label, style in ((bins_raw, "raw scores", "o-"), (bins, "calibrated", "s-")):
        if b:
            ax.plot([x["mean_proba"] for x in b], [x["frac_positive"] for x in b], style, ms=3, lw=1, label=label)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("fraction right")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7, loc="upper left")
    if title:
        ax.set_title(title, fontsize=8)
    return png_markdown(fig, "reliability diagram")


def metrics_at_k_plot(result: dict, dataset: str = "") -> MetadataValue:
    """P@k (and nDCG@k, PSP@k when present) against k, in percent: one line per metric."""
    fig, ax = _figure()
    for metric, label in (("p", "P@k"), ("ndcg", "nDCG@k"), ("psp", "PSP@k")):
        by_k = result.get(metric)
        if not by_k:
            continue
        ks = sorted(int(k) for k in by_k)
        ax.plot(ks, [float(by_k[k]) for k in ks], marker="o", lw=1.2, label=label)
    ax.set_xlabel("k")
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=7)
    ax.set_title(f"P@k on the test split{' — ' + dataset if dataset else ''}", fontsize=9)
    return png_markdown(fig, "P@k")


#: decimals of durations and sizes in metadata (keys with "seconds", ending "_s" or "_mb")
METADATA_DECIMALS = 3
#: significant digits of other float metadata (enough that no number a test or a person
#: compares changes: 7 digits keep the relative error under 1e-6)
METADATA_DIGITS = 7


def readable_metadata(result):
    """`result` (a MaterializeResult) with its plain float metadata rounded for the UI: durations
    and sizes to METADATA_DECIMALS decimals ("0.789 s", not "0.7891517550015124"), other floats to
    METADATA_DIGITS significant digits. Other values unchanged."""
    if not isinstance(result, MaterializeResult) or not result.metadata:
        return result

    def rounded(key: str, v):
        if not isinstance(v, float) or not math.isfinite(v) or v == 0.0:
            return v
        if "seconds" in key or key.endswith(("_s", "_mb")):
            return round(v, METADATA_DECIMALS)
        return round(v, max(0, METADATA_DIGITS - 1 - int(math.floor(math.log10(abs(v))))))

    return result._replace(metadata={k: rounded(k, v) for k, v in result.metadata.items()})


class _LogStream:
    """A text stream onto a Dagster logger: each line written is one INFO event of the run."""

    def __init__(self, log):
        self.log = log

    def write(self, text: str) -> None:
        """Log each nonblank line of `text` (str) at INFO."""
        for line in text.splitlines():
            if line.strip():
                self.log.info(line)

    def flush(self) -> None:
        """Nothing to flush (each line is an event already)."""


def asset_body(fn):
    """Decorator of an asset function: while it runs, the progress of its long steps
    (`xmc_core.progress`) goes to the run's log as a line every LOG_INTERVAL_S seconds; its
    MaterializeResult's metadata goes through :func:`readable_metadata`. Dagster reads the
    wrapped function's signature (context, resources) through ``functools.wraps``."""
    from xmc_core import progress

    @functools.wraps(fn)
    def run(*args, **kwargs):
        context = kwargs.get("context", args[0] if args else None)
        log = getattr(context, "log", None)
        reporter = progress.LogReporter(_LogStream(log)) if log is not None else progress.Silent()
        with progress.reporting(reporter):
            return readable_metadata(fn(*args, **kwargs))

    return run
