"""System names with WiM settings: `wim[classification=inline,margin_max_new_tokens=32]` is WiM with those
`WiMConfig` overrides, benchmarked as its own system. The ablations take the same form and reuse the margins of the
WiM variant with the same overrides: `wim_margins_only[classification=inline]` answers from the margins of
`wim[classification=inline]`.

Names are parsed and validated against `WiMConfig` before any model is loaded, and written in one canonical form
(overrides sorted by field name), so the same variant always lands under the same name in the results.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import TypeAdapter, ValidationError

from wim_integrations import WiMConfig

BASE_SYSTEMS = ("long_context", "wim", "wim_margins_only", "rag_classifier", "refine", "tree_summarize")
WIM_FAMILY = ("wim", "wim_margins_only", "rag_classifier")  # the systems that read with WiM's margins

_NAME = re.compile(r"^([a-z_]+)(?:\[(.*)\])?$", re.S)
Value = bool | int | float | str | None


@dataclass(frozen=True)
class SystemSpec:
    base: str
    overrides: tuple[tuple[str, Value], ...] = ()  # sorted by field name

    @property
    def name(self) -> str:
        if not self.overrides:
            return self.base
        return f"{self.base}[{','.join(f'{k}={_format(v)}' for k, v in self.overrides)}]"

    @property
    def reads_with(self) -> str | None:
        """Name of the WiM variant whose reading pass (margins) this system uses; None outside the WiM family."""
        return SystemSpec("wim", self.overrides).name if self.base in WIM_FAMILY else None

    def config(self, base: WiMConfig) -> WiMConfig:
        return base.with_updates(**dict(self.overrides)) if self.overrides else base


def _format(value: Value) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def _problems(e: ValidationError) -> str:
    return "; ".join(
        f"{'.'.join(map(str, err['loc']))}: {err['msg']}" if err["loc"] else err["msg"].removeprefix("Value error, ")
        for err in e.errors()
    )


def _coerce(key: str, raw: str) -> Value:
    """`raw` as the field's type and constraints, by pydantic's own (lax) validation of that field alone (checks
    across fields come after, on all the overrides together); "none"/"null" mean None where the field takes no such
    string (classification="none" stays the string)."""
    field = WiMConfig.model_fields[key]
    typ = Annotated[(field.annotation, *field.metadata)] if field.metadata else field.annotation  # with ge=1 etc.
    adapter: TypeAdapter[Any] = TypeAdapter(typ)
    values = [raw.strip()] + ([None] if raw.strip().lower() in ("none", "null") else [])
    error: ValidationError | None = None
    for value in values:
        try:
            return adapter.validate_python(value)
        except ValidationError as e:
            error = error or e
    assert error is not None
    raise ValueError(f"{key}: {'; '.join(err['msg'] for err in error.errors())}")


def parse_system(text: str, base: WiMConfig) -> SystemSpec:
    """One system name, validated: a known system, and for the WiM family `WiMConfig` fields with valid values."""
    m = _NAME.match(text.strip())
    if not m or m.group(1) not in BASE_SYSTEMS:
        raise ValueError(
            f"unknown system {text!r}; known: {', '.join(BASE_SYSTEMS)}, and WiM variants such as "
            "'wim[classification=inline,margin_max_new_tokens=32]' (also for wim_margins_only and rag_classifier)"
        )
    name, body = m.group(1), m.group(2)
    if body is None:
        return SystemSpec(name)
    if name not in WIM_FAMILY:
        raise ValueError(f"{text!r}: only {', '.join(WIM_FAMILY)} take WiM settings in [...]; write {name!r} alone")
    overrides: dict[str, Value] = {}
    for item in (p for p in body.split(",") if p.strip()):
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ValueError(f"{text!r}: {item!r} is not field=value (e.g. wim[classification=inline])")
        if key not in WiMConfig.model_fields:
            raise ValueError(f"{text!r}: WiMConfig has no field {key!r}; fields: {', '.join(WiMConfig.model_fields)}")
        if isinstance(base.model_dump()[key], dict):
            raise ValueError(f"{text!r}: {key!r} is a nested setting; only plain values can be set in a system name")
        if key in overrides:
            raise ValueError(f"{text!r}: {key!r} is set twice")
        try:
            overrides[key] = _coerce(key, raw)  # validated values ("3" for a float is 3.0): canonical names
        except ValueError as e:
            raise ValueError(f"{text!r}: invalid WiM setting ({e})") from None
    if not overrides:
        raise ValueError(f"{text!r}: empty [...]; name settings as field=value, or write {name!r} alone")
    spec = SystemSpec(name, tuple(sorted(overrides.items())))
    try:  # the settings together (a check across fields)
        spec.config(base)
    except ValidationError as e:
        raise ValueError(f"{text!r}: invalid WiM settings ({_problems(e)})") from None
    return spec


def split_names(items: Iterable[str]) -> list[str]:
    """System names from CLI arguments: space- or comma-separated, commas inside [...] kept."""
    names: list[str] = []
    for item in items:
        depth, start = 0, 0
        for i, ch in enumerate(item):
            depth += {"[": 1, "]": -1}.get(ch, 0)
            if ch == "," and depth == 0:
                names.append(item[start:i])
                start = i + 1
        names.append(item[start:])
    return [n.strip() for n in names if n.strip()]


def base_of(name: str) -> str:
    """The base system of a recorded name, without validating its settings (results may hold older settings)."""
    m = _NAME.match(name.strip())
    return m.group(1) if m else name


def system_order(names: Iterable[str]) -> list[str]:
    """Recorded system names in report order: by base system, plain name first, then variants by name."""
    rank = {b: i for i, b in enumerate(BASE_SYSTEMS)}
    return sorted(set(names), key=lambda n: (rank.get(base_of(n), len(rank)), n != base_of(n), n))


def parse_systems(names: Sequence[str], base: WiMConfig) -> list[SystemSpec]:
    """Validated systems in run order: every WiM variant before the ablations that reuse its margins, otherwise the
    order of `BASE_SYSTEMS`, then the order given. Duplicates are dropped."""
    specs: list[SystemSpec] = []
    for text in names:
        spec = parse_system(text, base)
        if spec not in specs:
            specs.append(spec)
    if not specs:
        raise ValueError("no systems given")
    return sorted(specs, key=lambda s: (BASE_SYSTEMS.index(s.base), specs.index(s)))
