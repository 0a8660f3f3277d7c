"""WiM settings as LangChain fields, derived from `WiMConfig` so the adapters never fall behind the core.

Every `WiMConfig` field becomes an optional field of the same type and constraints; `None` keeps the engine's own
setting. Unknown constructor arguments and invoke keyword arguments are rejected with the list of valid ones.

The answer budget is `max_tokens`, LangChain's standard name for it (chat models' `max_tokens`, the `ls_max_tokens`
a tracer records, `init_chat_model(..., max_tokens=)`), so code written for any LangChain model sets it unchanged;
`answer_max_new_tokens` (the core's `WiMConfig` name) is a deprecated alias.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from typing import Annotated, Any, cast

from pydantic import BaseModel, Field, ValidationError, create_model, model_validator

from ..config import WiMConfig, settings_error
from ..errors import WiMInputError

# Engine options that are not per-call settings: they belong to the `WiM` the adapter wraps.
_ENGINE_OPTIONS = {
    "document_cache": "WiM(..., document_cache=DocumentCache()) or WiM.default(document_cache=...)",
    "classifier_model": "WiMChain.from_model_id(model_id, classifier_model=...)",
    "prompts": "WiM(..., prompts=PromptSet(...))",
    "config": "WiM(..., config=WiMConfig(...)), or the settings themselves as fields",
}


def _optional_fields() -> dict[str, Any]:
    fields: dict[str, Any] = {}
    for name, info in WiMConfig.model_fields.items():
        # Keep the core's constraints (ge=1, gt=0, ...) so bad values fail at construction.
        args = (info.annotation, *info.metadata)
        ann: Any = cast(Any, Annotated)[args] if info.metadata else info.annotation
        default = info.get_default(call_default_factory=True)
        shown = default.model_dump() if isinstance(default, BaseModel) else default
        about = f"{info.description}. " if info.description else ""
        about += f"None keeps the engine's setting (WiMConfig: {shown!r})"
        if name == "answer_max_new_tokens":
            about = f"Deprecated alias of max_tokens (the answer budget). {about}"
        fields[name] = (ann | None, Field(None, description=about))
    return fields


ANSWER_BUDGET = "max_tokens"
DEPRECATED_BUDGET = "answer_max_new_tokens"  # the core's name: accepted, with a DeprecationWarning
WIM_SETTINGS: tuple[str, ...] = (*WiMConfig.model_fields, ANSWER_BUDGET)

_WiMSettingsFields = create_model("_WiMSettingsFields", **_optional_fields())


def answer_budget(given: dict[str, Any], owner: str) -> int | None:
    """The answer budget among `given` settings: `max_tokens`, or its deprecated alias (warned; both must agree)."""
    budget, old = given.get(ANSWER_BUDGET), given.get(DEPRECATED_BUDGET)
    if old is None:
        return budget
    warnings.warn(
        f"{owner}: {DEPRECATED_BUDGET} is deprecated, use {ANSWER_BUDGET} (LangChain's name for the answer budget); "
        "the alias will be removed in a future release.",
        DeprecationWarning,
        stacklevel=4,
    )
    if budget is not None and budget != old:
        raise WiMInputError(
            f"{ANSWER_BUDGET}={budget} and {DEPRECATED_BUDGET}={old} disagree; they are the same setting, give "
            f"{ANSWER_BUDGET} only."
        )
    return int(old)


class WiMSettings(_WiMSettingsFields):
    """Mixin of the per-call WiM settings (one optional field per `WiMConfig` field) for the LangChain adapters."""

    max_tokens: int | None = Field(
        None, ge=1, description="answer budget: max new tokens of the answer. None keeps the engine's setting"
    )

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        try:
            super().__init__(*args, **kwargs)
        except ValidationError as exc:  # a bad setting is the library's SettingsError, as on WiMConfig itself
            raise settings_error(type(self).__name__, exc) from None

    @model_validator(mode="before")
    @classmethod
    def _reject_unknown(cls, data: Any) -> Any:
        if isinstance(data, dict):
            check_known(data, cls.model_fields, what=f"{cls.__name__} argument")
            if data.get(DEPRECATED_BUDGET) is not None:  # the alias sets max_tokens
                data = {**data, ANSWER_BUDGET: answer_budget(data, cls.__name__)}
        return data

    @model_validator(mode="after")
    def _check_combination(self) -> WiMSettings:
        # The core's cross-field rules, at construction, against the engine's own config (the settings override it).
        engine_config = getattr(getattr(self, "wim", None), "config", None)
        base = engine_config if isinstance(engine_config, WiMConfig) else WiMConfig()
        base.with_updates(**self.wim_overrides())
        return self

    def setting(self, name: str) -> Any:
        """The value of one WiM setting field (None: the engine's own), for code that names it."""
        return getattr(self, name)

    def wim_overrides(self, **per_call: Any) -> dict[str, Any]:
        """The settings this object (and `per_call` invoke kwargs) set, as `WiM.stream(**overrides)` takes them."""
        check_known(per_call, WIM_SETTINGS, what="invoke keyword argument")
        fixed = {k: getattr(self, k) for k in WiMConfig.model_fields if getattr(self, k) is not None}
        overrides = {**fixed, **{k: v for k, v in per_call.items() if v is not None and k in WiMConfig.model_fields}}
        budget = answer_budget(per_call, type(self).__name__) if per_call else None
        budget = budget if budget is not None else self.max_tokens
        if budget is not None:
            overrides[DEPRECATED_BUDGET] = budget
        return overrides


def check_known(given: Iterable[str], valid: Iterable[str], *, what: str) -> None:
    """Raise `WiMInputError` naming the unknown names, the valid ones, and where engine options go."""
    valid = set(valid)
    unknown = sorted(k for k in given if k not in valid)
    if not unknown:
        return
    hints = [f"{k} belongs to the engine: {_ENGINE_OPTIONS[k]}" for k in unknown if k in _ENGINE_OPTIONS]
    raise WiMInputError(
        f"unknown {what}{'s' if len(unknown) > 1 else ''} {unknown}. Valid: {sorted(valid)}."
        + (" " + "; ".join(hints) + "." if hints else "")
    )
