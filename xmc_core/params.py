"""Shared behaviour of the stages' `Params` dataclasses: JSON round trips with clear errors."""

from __future__ import annotations

from dataclasses import asdict, fields

__all__ = ["ParamsBase"]


class ParamsBase:
    """Mixin for a (flat) settings dataclass: `to_dict()` and `from_dict()` that names unknown keys.

    Subclasses are ``@dataclass``es; their fields are documented in each subclass's docstring.
    """

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict {field name: value} (``dataclasses.asdict``)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict | None):
        """Settings from a dict such as :meth:`to_dict` returns.

        Args:
            d: {field name: value}; missing fields take their defaults (None: all defaults).

        Returns:
            An instance of the dataclass `cls`.

        Raises:
            ValueError: `d` has keys that are not fields (the message names them and the known
                ones), or the dataclass's own checks (``__post_init__``) refuse a value.
        """
        d = dict(d or {})
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown key(s) {sorted(unknown)}; expected {sorted(known)}")
        return cls(**d)
