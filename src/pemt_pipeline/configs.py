"""Plain dataclass configurations built from parameter dictionaries (Kedro's or any YAML).

`from_params` is the one place parameters become configs: it rejects unknown keys, checks every
given value against its field's type annotation, builds the dataclass and then runs its
`validate()` (the class's range and choice checks), so a bad parameter stops a run with one line
naming the key, before any work. Type rules (values as YAML / Kedro's `--params` deliver them):

    int         an int (numpy's too); not a bool, not a float (so 2.5 and also 8.0 are rejected)
    float       an int or a float; not a bool
    str, bool   exactly that type (YAML's yes/no/true/false already arrive as bools)
    X | None    None (YAML null) or an X
    tuple[X, ...] / tuple[X, Y]   a YAML list (turned into a tuple) whose items are X (/ X and Y)
    dict / Mapping                a mapping (items not checked)
    a dataclass                   an instance, or a mapping built with `from_params` recursively
    Literal[...]                  one of the listed values
    Any, anything else            not checked

The validate convention: a config class's `validate()` checks ranges and choices of its fields and
raises `ValueError("<section>.<key> must be <expected>, got <value>")` (`require` and the rules
below write that line); classes also built by hand call it from `__post_init__`.
"""

from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

T = TypeVar("T")
Rule = tuple[Callable[[Any], bool], str]  # (test of a value, what it expects in words)


def from_params(cls: type[T], params: Mapping[str, Any] | None, section: str | None = None,
                ignore: tuple[str, ...] = (), **extra: Any) -> T:
    """`cls(**params, **extra)` with YAML lists turned into tuples, each value type-checked, then
    `validate()` if the class has one. Unknown keys (other than `ignore`), missing required keys and
    wrong types raise a one-line ValueError naming `section.key`. `extra` (already built parts) is
    not checked."""
    section = section or cls.__name__
    params = dict(params or {})
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names - set(ignore))
    if unknown:
        raise ValueError(f"unknown {section} parameter(s) {unknown}; known: {sorted(names)}")
    missing = [f.name for f in dataclasses.fields(cls) if f.init and f.name not in params and f.name not in extra
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ValueError(f"missing {section} parameter(s) {missing}")
    hints = typing.get_type_hints(cls)
    values = {k: check_type(f"{section}.{k}", hints.get(k, Any), v) for k, v in params.items() if k in names}
    cfg = cls(**values, **extra)
    validate = getattr(cfg, "validate", None)
    if callable(validate):
        validate()
    return cfg


def check_type(key: str, hint: Any, value: Any) -> Any:
    """`value` (lists as tuples, mappings for dataclass fields built) if it fits `hint`, else a
    ValueError `parameter <key> must be <expected>, got <value> (<type>)`."""
    ok, fitted = _fit(key, hint, value)
    if not ok:
        raise ValueError(f"parameter {key} must be {describe(hint)}, got {value!r} ({type(value).__name__})")
    return fitted


def check_fields(section: str, cfg: Any) -> None:
    """`check_type` on every field of a built dataclass (for a `validate()` of a config that is
    also built by hand, not only through `from_params`)."""
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        check_type(f"{section}.{f.name}", hints.get(f.name, Any), getattr(cfg, f.name))


def describe(hint: Any) -> str:
    """What a type annotation expects, in words (`an integer`, `a list of strings`, ...)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    if hint is type(None):
        return "null"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in sorted(args, key=lambda a: a is type(None)))
    if origin is typing.Literal:
        return f"one of {list(args)}"
    if hint is tuple or origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"a list of {_plural(describe(args[0]))}"
        if args and len(set(args)) == 1:
            return f"a list of {len(args)} {_plural(describe(args[0]))}"
        if args:
            return f"a list of {len(args)} items ({', '.join(describe(a) for a in args)})"
        return "a list"
    if hint is dict or origin in (dict, Mapping) or hint is Mapping:
        return "a mapping"
    if dataclasses.is_dataclass(hint):
        return f"a mapping of {hint.__name__} parameters"
    return getattr(hint, "__name__", str(hint))


def _plural(what: str) -> str:
    words = {"an integer": "integers", "a number": "numbers", "a string": "strings", "true or false": "booleans"}
    return words.get(what, what)


def _fit(key: str, hint: Any, value: Any) -> tuple[bool, Any]:
    """(fits, value as stored): the type rules of the module docstring."""
    if isinstance(value, list):
        value = tuple(value)
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return True, value
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool), value
    if hint is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool), value
    if hint is str:
        return isinstance(value, str), value
    if hint is type(None):
        return value is None, value
    if origin in (typing.Union, types.UnionType):
        for arg in sorted(args, key=lambda a: a is not type(None)):  # None first: cheap and exact
            ok, fitted = _fit(key, arg, value)
            if ok:
                return True, fitted
        return False, value
    if origin is typing.Literal:
        return any(value == a and type(value) is type(a) for a in args), value
    if hint is tuple or origin is tuple:
        if not isinstance(value, tuple):
            return False, value
        if len(args) == 2 and args[1] is Ellipsis:
            items = [args[0]] * len(value)
        elif args:
            if len(args) != len(value):
                return False, value
            items = list(args)
        else:
            return True, value  # bare `tuple`: any items
        return True, tuple(check_type(f"{key}[{i}]", a, v) for i, (a, v) in enumerate(zip(items, value)))
    if hint is dict or hint is Mapping or origin in (dict, Mapping):
        return isinstance(value, Mapping), value
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        if isinstance(value, hint):
            return True, value
        if isinstance(value, Mapping):
            return True, from_params(hint, value, key)
        return False, value
    return True, value  # an annotation these rules do not cover: not checked


# --------------------------------------------------------------------------- range checks
def require(section: str, cfg: Any, **rules: Rule) -> None:
    """The range checks of a `validate()`: for each field, (test, what it expects); the first value
    that fails (or whose test raises TypeError: a wrong type built by hand) raises
    `ValueError: <section>.<field> must be <expected>, got <value>`."""
    for name, (test, expected) in rules.items():
        value = getattr(cfg, name)
        try:
            good = bool(test(value))
        except TypeError:
            good = False
        if not good:
            raise ValueError(f"{section}.{name} must be {expected}, got {value!r}")


def at_least(low: float) -> Rule:
    return (lambda v: v >= low), f">= {low}"


def above(low: float) -> Rule:
    return (lambda v: v > low), f"> {low}"


def between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Rule:
    """low <= v <= high; `*_open`: that end excluded (e.g. (0, 1])."""
    def test(v: Any) -> bool:
        return (v > low if low_open else v >= low) and (v < high if high_open else v <= high)
    return test, f"in {'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"


def one_of(choices: tuple | list) -> Rule:
    return (lambda v: v in choices), f"one of {list(choices)}"


def optional(rule: Rule) -> Rule:
    """None (null) or a value passing `rule`."""
    return (lambda v: v is None or rule[0](v)), f"null or {rule[1]}"


def each(rule: Rule, non_empty: bool = True) -> Rule:
    """A list whose every item passes `rule` (and, by default, not empty)."""
    return ((lambda v: (len(v) > 0 or not non_empty) and all(rule[0](x) for x in v)),
            f"a {'non-empty ' if non_empty else ''}list of values {rule[1]}")


NON_EMPTY: Rule = ((lambda v: len(v) > 0), "non-empty")
DEVICE: Rule = ((lambda v: v in ("auto", "cpu", "cuda") or (v.startswith("cuda:") and v[5:].isdigit())),
                "auto, cpu, cuda or cuda:N")
