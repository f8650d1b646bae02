"""Code versions that follow the settings: each asset owns one section of the settings, and its
`code_version` is "<code revision>-<hash of its section>".

Dagster marks an asset STALE ("has a new code version") when its definition's `code_version`
differs from the one recorded with its latest materialization, and marks a child stale ("has a new
dependency data version") only once the changed parent has rematerialized (with a code version,
the default data version is a hash of the code version and the inputs' data versions). So folding
an asset's own settings section into its code version makes a settings change invalidate exactly
that asset and what follows it: a new `ranker` setting makes `rankers` stale, then `metrics`;
`corpus` … `label_tree` stay FRESH (and `disentangled_tree` too, unless a `disentangle` section is
set: its first matcher is trained with the ranker settings).

The settings are read when the code location loads (`XmcSettings` of the Definitions, see
`definitions.build_defs`); changing them is a code-location reload, just like a code change.
Settings given per run (run config) cannot change a code version: the assets then warn and record
the settings hash they actually ran with (metadata `settings_hash`).
"""

from __future__ import annotations

import hashlib
import json

from .resources import XmcSettings

#: Code revision of each asset: bump it when the asset's code changes what it writes.
CODE_REVISIONS = {
    "corpus": "2",
    "tfidf": "4",
    "label_embeddings": "1",
    "label_tree": "2",
    "disentangled_tree": "2",
    "rankers": "3",
    "calibration": "1",
    "metrics": "2",
}

#: The XRLinearParams sections each asset reads (`max_rows` is the corpus's slice).
SECTIONS = {
    "corpus": (),
    "tfidf": ("tfidf",),
    "label_embeddings": ("pifa",),
    "label_tree": ("tree",),
    # `disentangle` without `merge`; with a disentangle section also `ranker` and `pred` (the first
    # matcher is trained with them), without one only {"disentangle": None} (a pass-through, so
    # ranker settings then touch `rankers` alone). See `settings_section`.
    "disentangled_tree": ("disentangle",),
    # `pred` and `disentangle.merge` are saved in the model folder and used by `metrics`; with an
    # `ensemble` section also it, `pifa` and `tree` (see `settings_section`)
    "rankers": ("ranker", "pred"),
    "calibration": (),  # its own settings: XmcSettings.calibration_json (see `settings_section`)
    "metrics": (),
}

#: Keys that change speed, never results: left out of the hashes.
_NON_RESULT_KEYS = {"threads"}


def settings_section(settings: XmcSettings, asset_name: str) -> dict:
    """The part of the effective settings (defaults merged with `params_json`) `asset_name` uses."""
    params = settings.params().to_dict()

    def clean(name: str, drop=()):
        values = params.get(name)  # None: an optional section that is absent
        if values is None:
            return None
        return {k: v for k, v in values.items() if k not in _NON_RESULT_KEYS and k not in drop}

    section = {name: clean(name) for name in SECTIONS[asset_name]}
    if asset_name == "corpus":
        section["max_rows"] = settings.max_rows
    if asset_name == "disentangled_tree":
        section["disentangle"] = clean("disentangle", drop=("merge",))
        if section["disentangle"] is not None:
            section.update({name: clean(name) for name in ("ranker", "pred")})
    if asset_name == "calibration":
        section["calibration"] = settings.calibration_params().to_dict()
    if asset_name == "rankers" and params.get("disentangle") is not None:
        section["merge"] = params["disentangle"]["merge"]
    if asset_name == "rankers" and params.get("ensemble") is not None:
        # members beyond the first build their own trees here, from these sections (the key is
        # absent without an ensemble, so single-model hashes are what they were)
        section.update({name: clean(name) for name in ("ensemble", "pifa", "tree")})
    return section


def settings_hash(settings: XmcSettings, asset_name: str) -> str:
    """8 hex digits of the asset's settings section ("" for an asset without settings)."""
    section = settings_section(settings, asset_name)
    if not section:
        return ""
    text = json.dumps(section, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def code_version(settings: XmcSettings, asset_name: str) -> str:
    """`<revision>-<settings hash>`, or just `<revision>` for an asset without settings."""
    digest = settings_hash(settings, asset_name)
    revision = CODE_REVISIONS[asset_name]
    return f"{revision}-{digest}" if digest else revision


def code_versions(settings: XmcSettings) -> dict[str, str]:
    return {name: code_version(settings, name) for name in CODE_REVISIONS}
