"""Plain dataclass configurations built from parameter dictionaries (Kedro's or any YAML)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")


def from_params(cls: type[T], params: Mapping[str, Any] | None, section: str | None = None,
                ignore: tuple[str, ...] = (), **extra: Any) -> T:
    """`cls(**params, **extra)`, with YAML lists turned into tuples. Unknown keys (other than
    `ignore`) raise a ValueError naming them and the parameter section."""
    params = dict(params or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names - set(ignore))
    if unknown:
        raise ValueError(f"unknown {section or cls.__name__} parameter(s) {unknown}; known: {sorted(names)}")
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in params.items() if k in names}
    return cls(**values, **extra)
