"""Code versions that follow the settings: each asset owns one section of the settings, and its
`code_version` is "<code revision>-<hash of its section>".

Dagster marks an asset STALE ("has a new code version") when its definition's `code_version`
differs from the one recorded with its latest materialization, and marks a child stale ("has a new
dependency data version") only once the changed parent has rematerialized (with a code version,
the default data version is a hash of the code version and the inputs' data versions). So folding
an asset's own settings section into its code version makes a settings change invalidate exactly
that asset and what follows it: a new `ranker` setting makes `rankers` stale, then `metrics`;
`corpus` … `label_tree` stay FRESH.

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
    "corpus": "1",
    "tfidf": "1",
    "label_embeddings": "1",
    "label_tree": "1",
    "rankers": "1",
    "metrics": "1",
}

#: The XRLinearParams sections each asset reads (`max_rows` is the corpus's slice).
SECTIONS = {
    "corpus": (),
    "tfidf": ("tfidf",),
    "label_embeddings": ("pifa",),
    "label_tree": ("tree",),
    "rankers": ("ranker", "pred"),  # `pred` is saved in the model folder and used by `metrics`
    "metrics": (),
}

#: Keys that change speed, never results: left out of the hashes.
_NON_RESULT_KEYS = {"threads"}


def settings_section(settings: XmcSettings, asset_name: str) -> dict:
    """The part of the effective settings (defaults merged with `params_json`) `asset_name` uses."""
    params = settings.params().to_dict()
    section = {
        name: {k: v for k, v in params[name].items() if k not in _NON_RESULT_KEYS}
        for name in SECTIONS[asset_name]
    }
    if asset_name == "corpus":
        section["max_rows"] = settings.max_rows
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
