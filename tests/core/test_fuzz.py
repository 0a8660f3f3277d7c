"""Property-based fuzzing of the public entry points on the fake backend (fast suite).

Arbitrary text (lone surrogates, NUL, control and bidi characters, placeholder and chat-marker look-alikes, very long
text), arbitrary settings, documents (ids, metadata of any shape) and prompt overrides. The invariant: either a
`WiMError` raised before any forward pass, or a result that serializes to JSON and renders as HTML. Derandomized, so a
failure reproduces; a few hundred examples in all (seconds)."""

from __future__ import annotations

import json
from collections.abc import Generator
from typing import Any

import pytest
from fake_backend import FakeBackend
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from wim_integrations import PromptSet, WiM, WiMConfig, WiMError, WiMResult
from wim_integrations.backends.base import GenerationRequest

FUZZ = settings(max_examples=120, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
BASE = WiMConfig(segment_tokens=600, margin_max_new_tokens=4, answer_max_new_tokens=4, classification="lexical")

# Pieces text is made of: ordinary characters, and every kind of character that has broken something somewhere.
NASTY = [
    "\x00", "\ud800", "\udfff", "\udc80", "\u202e", "\u202d", "\u2066", "\u2069", "\x1b[31m", "\r\n", "\t", "\x0b",
    "\ufeff", "\u200b", "\U0001f642", "東京", "{{question}}", "{{ margins }}", "{question}", "<|end|>", "<|im_end|>",
    "</p><script>alert(1)</script>", "&amp;", "\\", '"', "  ", "\n\n",
]  # fmt: skip
pieces = st.one_of(st.text(max_size=12), st.sampled_from(NASTY))
texts = st.lists(pieces, max_size=12).map("".join)
prose = texts.map(lambda t: f"The keeper is Mara Voss, since 1999. {t}")  # text with something to read in it
long_texts = st.sampled_from(["The keeper is Mara Voss. " * 80, "word " * 40_000, "x" * 500_000])  # 4 parts; too long
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts),
    lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(texts, inner, max_size=3)),
    max_leaves=6,
)
metadata = st.one_of(st.dictionaries(texts, json_values, max_size=3), json_values, st.just({"o": object()}))
documents = st.one_of(
    prose,
    texts,
    st.fixed_dictionaries(
        {"text": st.one_of(prose, texts)},
        optional={"id": st.one_of(st.none(), texts, st.integers()), "metadata": metadata},
    ),
    st.integers(),
    st.none(),
)
# Valid inputs are listed more than once: most examples then run (on every reading path), the rest are refused.
contexts = st.one_of(
    prose, prose, prose, st.lists(documents, max_size=4), texts, long_texts, st.none(), st.binary(max_size=8)
)
asked = texts.map(lambda t: f"Who {t}?")
questions = st.one_of(st.just("Who keeps the lighthouse?"), asked, asked, texts, st.none(), st.integers())
MODES = ["none", "lexical", "pmi", "segment_pmi", "question_pmi", "calibrated", "same_model", "inline", "auxiliary"]
# Valid settings (so that runs happen, on every reading path) and arbitrary ones (so that refusals are checked).
valid_settings = st.fixed_dictionaries(
    {},
    optional={
        "margin_max_new_tokens": st.integers(1, 8),
        "classification": st.sampled_from(MODES[:-1]),
        "margin_stop": st.sampled_from(["sentence", "line", "eos"]),
        "margin_scope": st.sampled_from(["segment", "so_far"]),
        "margin_batch_size": st.integers(1, 4),
        "classifier_max_new_tokens": st.integers(1, 4),
        "keep_unknown_verdicts": st.booleans(),
        "sampling": st.fixed_dictionaries(
            {"do_sample": st.booleans(), "temperature": st.floats(0.1, 2.0), "seed": st.integers(0, 9)}
        ),
    },
)
setting_values = st.one_of(
    st.integers(min_value=-2, max_value=600),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    texts,
    st.sampled_from(MODES),
    st.sampled_from(["sentence", "line", "eos", "segment", "so_far"]),
    st.dictionaries(st.sampled_from(["temperature", "top_p", "top_k", "do_sample", "seed", "bogus"]), st.floats()),
)
any_settings = st.dictionaries(
    st.sampled_from([f for f in [*WiMConfig.model_fields, "bogus"] if f != "answer_max_new_tokens"]),
    setting_values,
    max_size=3,
)
settings_inputs = st.one_of(valid_settings, valid_settings, valid_settings, any_settings)
# A prompt override: its own placeholders around any text, sometimes one too few or one unknown.
PLACEHOLDER_NAMES = ["question", "margin", "margins", "notes", "instruction", "format", "answer"]
prompt_texts = st.one_of(
    st.lists(st.one_of(texts, st.sampled_from(PLACEHOLDER_NAMES).map(lambda n: "{{" + n + "}}")), max_size=6).map(
        "".join
    ),
    st.none(),
    st.integers(),
)


class WatchedBackend(FakeBackend):
    """The fake backend, noting whether any forward pass started."""

    computed = False

    def prefill(self, cache: list[int], ids: Any) -> None:
        self.computed = True
        super().prefill(cache, ids)

    def generate(self, cache: list[int], request: GenerationRequest) -> Generator[int, None, None]:
        self.computed = True
        return super().generate(cache, request)

    def generate_packed(self, *args: Any, **kwargs: Any) -> Any:
        self.computed = True
        return super().generate_packed(*args, **kwargs)

    def score_rows(self, *args: Any, **kwargs: Any) -> Any:
        self.computed = True
        return super().score_rows(*args, **kwargs)


def _check(call: Any, prompts: PromptSet | None = None, backend: Any = None) -> None:
    """`call(wim)` raises a WiMError before any forward pass, or returns a result that comes out as JSON and HTML.
    `backend`: the fake one (a new `WatchedBackend`) unless given; a given one is watched for the call's duration."""
    backend = backend if backend is not None else WatchedBackend()
    computed = [False]
    watched = {}
    if not isinstance(backend, WatchedBackend):
        for name in ("prefill", "generate", "generate_packed", "score_rows", "prefill_aside"):
            original = getattr(backend, name)
            watched[name] = lambda *a, _f=original, **k: (computed.__setitem__(0, True), _f(*a, **k))[1]
            setattr(backend, name, watched[name])
    try:
        wim = WiM(backend, config=BASE, prompts=prompts, document_cache=None)
        result = call(wim)
    except WiMError as exc:
        event(type(exc).__name__)  # shown by --hypothesis-show-statistics
        started = computed[0] or getattr(backend, "computed", False)
        assert not started, "a WiMError after compute started: the input was not checked up front"
        return
    finally:
        for name in watched:
            delattr(backend, name)
    event("result")
    assert isinstance(result, WiMResult)
    json.loads(result.model_dump_json())
    page = result.to_html()
    assert page.startswith("<!DOCTYPE html>") and "<script>" not in page


@FUZZ
@given(context=contexts, question=questions, settings=settings_inputs)
def test_questions_over_any_context_and_settings(context: Any, question: Any, settings: dict[str, Any]) -> None:
    _check(lambda wim: wim.run(context, question, **settings))


well_formed_docs = st.lists(
    st.fixed_dictionaries(
        {"text": prose}, optional={"id": st.one_of(st.none(), texts), "metadata": st.dictionaries(texts, json_values)}
    ),
    min_size=1,
    max_size=4,
)


@FUZZ
@given(context=st.one_of(prose, well_formed_docs), question=asked, settings=valid_settings)
def test_well_formed_inputs_with_any_characters(context: Any, question: str, settings: dict[str, Any]) -> None:
    """Inputs of the right shapes and any characters: most run (every reading path), lone surrogates are refused."""
    _check(lambda wim: wim.run(context, question, **settings))


@FUZZ
@given(context=contexts, instruction=st.one_of(texts, st.none(), st.integers()), note=st.one_of(st.none(), texts))
def test_summaries_and_analyses_over_any_context(context: Any, instruction: Any, note: Any) -> None:
    _check(lambda wim: wim.summarize(context, instruction))
    _check(lambda wim: wim.analyze(context, instruction, note_instruction=note))


@FUZZ
@given(
    name=st.sampled_from(sorted(PromptSet.default().as_dict())),
    text=prompt_texts,
    context=prose,
)
def test_any_prompt_override(name: str, text: Any, context: str) -> None:
    def call(wim: WiM) -> WiMResult:
        prompts = PromptSet.default().with_overrides({name: text})
        return wim.with_options(prompts=prompts).run(context, "Who keeps the lighthouse?")

    _check(call)


@FUZZ
@given(config=settings_inputs)
def test_any_config_mapping(config: dict[str, Any]) -> None:
    _check(lambda wim: wim.run("The keeper is Mara Voss. She came in 1999.", "Who keeps it?", config=config))


@pytest.mark.slow
@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(context=st.one_of(prose, well_formed_docs, contexts), question=questions, settings=valid_settings)
def test_the_embedded_model_under_the_same_inputs(
    default_wim: WiM, context: Any, question: Any, settings: dict[str, Any]
) -> None:
    """The same invariant on the embedded SmolLM2 (real tokenizer, real forward passes)."""
    _check(lambda wim: wim.run(context, question, **settings), backend=default_wim.backend)
