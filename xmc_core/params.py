"""Shared behaviour of the stages' `Params` dataclasses: JSON round trips with clear errors."""

from __future__ import annotations

from dataclasses import asdict, fields

__all__ = ["ParamsBase"]


class ParamsBase:
    """Mixin for a (flat) settings dataclass: `to_dict()` and `from_dict()` that names unknown keys."""

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None):
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
        return cls(**d)
