"""WiMChain: strict settings, composable output, and LangSmith-grade child runs (tiny random Llama)."""

from __future__ import annotations

import asyncio
from operator import itemgetter

import pytest
from langchain_core.callbacks import BaseCallbackHandler, UsageMetadataCallbackHandler
from langchain_core.runnables import RunnableLambda
from langchain_core.tracers.context import collect_runs
from test_langchain import DOCS, QUESTION

from wim_integrations import WiM, WiMConfig, WiMInputError
from wim_integrations.langchain import ANSWER_RUN, CLASSIFY_RUN, MARGIN_RUN, RecordingClient, WiMChain, langsmith_tracer

X = {"question": QUESTION, "context": DOCS}


@pytest.fixture(scope="module")
def chain(tiny_wim: WiM) -> WiMChain:
    return WiMChain(wim=tiny_wim)


@pytest.fixture(scope="module")
def reference(tiny_wim: WiM):
    return WiMChain(wim=tiny_wim).with_margins().invoke(X)["result"]


# -- settings: one source of truth, strict -------------------------------------------------------------------
def test_every_wimconfig_field_is_a_chain_setting(chain):
    for name, info in WiMConfig.model_fields.items():
        assert name in WiMChain.model_fields, name
        assert getattr(chain, name) is None  # None keeps the engine's setting
        default = info.get_default(call_default_factory=True)
        shown = default.model_dump() if hasattr(default, "model_dump") else default
        assert f"(WiMConfig: {shown!r})" in (WiMChain.model_fields[name].description or "")


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"max_new_tokens": 10}, "max_new_tokens"),
        ({"document_cache": object()}, "document_cache belongs to the engine"),
        ({"segment_tokens": 100, "classifer": "none"}, "classifer"),
    ],
)
def test_unknown_settings_are_rejected_naming_the_valid_ones(tiny_wim, kwargs, needle):
    with pytest.raises(ValueError, match=needle) as info:
        WiMChain(wim=tiny_wim, **kwargs)
    assert "margin_max_new_tokens" in str(info.value)  # the valid names are listed


def test_default_rejects_unknown_arguments_before_loading(monkeypatch):
    monkeypatch.setattr(WiM, "default", classmethod(lambda cls, **kw: pytest.fail("loaded a model")))
    with pytest.raises(WiMInputError, match="document_cache belongs to the engine"):
        WiMChain.default(document_cache=object())


def test_invoke_kwargs_are_per_call_settings_and_unknown_ones_are_rejected(chain, reference):
    with pytest.raises(WiMInputError, match=r"unknown invoke keyword argument \['max_new_tokens'\]. Valid: "):
        chain.invoke(X, max_new_tokens=4)
    with pytest.raises(WiMInputError, match="max_new_tokens"):
        list(chain.stream(X, max_new_tokens=4))
    short = chain.with_margins().invoke(X, margin_max_new_tokens=1, classification="none")["result"]
    assert all(m.n_tokens <= 1 for m in short.margins) and {m.verdict for m in short.margins} == {"unclassified"}
    assert chain.invoke(X) == reference.answer  # the per-call settings did not stick
    assert chain.batch([X], margin_max_new_tokens=1, classification="none") == [short.answer]


# -- composable output ---------------------------------------------------------------------------------------
def test_with_margins_output_works_with_pick_assign_and_itemgetter(chain, reference):
    picked = chain.with_margins().pick(["answer", "margins"]).invoke(X)
    assert picked["answer"] == reference.answer
    assert [m.model_dump(exclude={"seconds"}) for m in picked["margins"]] == [
        m.model_dump(exclude={"seconds"}) for m in reference.margins
    ]
    n_relevant = RunnableLambda(lambda out: sum(m.relevant for m in out["margins"]))
    assigned = chain.with_margins().assign(n_relevant=n_relevant).invoke(X)
    assert assigned["n_relevant"] == len(reference.relevant_margins) and assigned["answer"] == reference.answer
    assert (chain.with_margins() | itemgetter("answer")).invoke(X) == reference.answer


# -- child runs ----------------------------------------------------------------------------------------------
def _usage(run: dict) -> dict:
    """A child run's token usage: its output message's usage_metadata (what LangSmith and usage handlers read)."""
    return run["outputs"]["generations"][0][0]["message"]["kwargs"]["usage_metadata"]


def _children(client: RecordingClient) -> list[dict]:
    root = next(r for r in client.recorded.values() if r.get("parent_run_id") is None)
    return client.children(root["id"])


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_child_runs_carry_ls_metadata_params_usage_and_the_final_prompt(chain, reference, mode):
    client = RecordingClient()
    tracer = langsmith_tracer(client=client)
    cfg = {"callbacks": [tracer]}
    if mode == "sync":
        chain.invoke(X, cfg)
    else:
        asyncio.run(chain.ainvoke(X, cfg))
    tracer.wait_for_futures()
    children = _children(client)
    assert [c["name"] for c in children] == [MARGIN_RUN, CLASSIFY_RUN] * reference.n_segments + [ANSWER_RUN]
    model = chain.wim.model_name
    for run in children:
        meta = run["extra"]["metadata"]
        assert (meta["ls_provider"], meta["ls_model_name"], meta["ls_model_type"]) == ("huggingface", model, "llm")
        params = run["extra"]["invocation_params"]
        assert params["model"] == model and params["classification"] == chain.wim.config.classification
        usage = _usage(run)  # where LangSmith reads token counts (cost tracking)
        assert usage["total_tokens"] == usage["input_tokens"] + usage["output_tokens"] > 0
    margins, answer = children[:-1:2], children[-1]
    assert [_usage(r)["output_tokens"] for r in margins] == [m.n_tokens for m in reference.margins]
    assert margins[0]["extra"]["invocation_params"]["max_new_tokens"] == chain.wim.config.margin_max_new_tokens
    # margins read the whole context once (segments + chat head) plus one margin prompt each
    assert sum(_usage(r)["input_tokens"] for r in margins) == (reference.tokens.context + reference.tokens.prompt)
    a_usage = _usage(answer)
    assert (a_usage["input_tokens"], a_usage["output_tokens"]) == (
        reference.tokens.answer_prompt,
        reference.tokens.answer_generated,
    )
    [prompt] = answer["inputs"]["prompts"]
    assert QUESTION in prompt and all(m.text in prompt for m in reference.relevant_margins)
    assert answer["extra"]["metadata"]["wim_question"] == QUESTION
    for classify, m in zip(children[1::2], reference.margins, strict=True):
        assert m.text in classify["inputs"]["prompts"][0]
        assert _usage(classify)["output_tokens"] >= 1


def test_usage_metadata_handler_sums_the_child_runs(chain, reference):
    handler = UsageMetadataCallbackHandler()
    chain.invoke(X, {"callbacks": [handler]})
    [usage] = handler.usage_metadata.values()
    generated = reference.tokens
    assert usage["output_tokens"] >= generated.margin_generated + generated.answer_generated


def test_collect_runs_sees_every_child_run(chain, reference):
    with collect_runs() as cb:
        chain.invoke(X)
    [root] = cb.traced_runs  # the collector keeps root runs; their child runs hang below
    assert root.name == "WiMChain"
    names = [r.name for r in root.child_runs]
    assert names == [MARGIN_RUN, CLASSIFY_RUN] * reference.n_segments + [ANSWER_RUN]
    assert root.child_runs[-1].outputs["generations"][0][0]["text"] == reference.answer


class Inherited(BaseCallbackHandler):
    def __init__(self) -> None:
        self.llm_runs: list[str] = []

    def on_llm_start(self, serialized, prompts, *, name=None, **kwargs):
        self.llm_runs.append(name)


def test_inheritable_handler_of_an_outer_chain_sees_child_runs(chain, reference):
    handler = Inherited()
    outer = RunnableLambda(lambda x: x) | chain
    outer.invoke(X, {"callbacks": [handler]})
    assert handler.llm_runs.count(MARGIN_RUN) == reference.n_segments and handler.llm_runs[-1] == ANSWER_RUN


def test_score_based_settings_from_the_core_work_and_are_checked(chain, tiny_wim):
    assert {"relevance_threshold", "margin_scope"} <= set(WiMChain.model_fields)  # added to WiMConfig, not here
    scored = WiMChain(wim=tiny_wim, classification="lexical", relevance_threshold=0.0).with_margins().invoke(X)
    margins = scored["margins"]
    assert margins and all(m.score is not None and m.relevant for m in margins)
    with pytest.raises(ValueError, match="relevance_threshold applies to the score-based"):
        WiMChain(wim=tiny_wim, relevance_threshold=0.5)  # the engine's mode (same_model) has no threshold
    with pytest.raises(ValueError, match="relevance_threshold applies"):  # WiMConfig's own check
        chain.invoke(X, relevance_threshold=0.5)


def test_max_tokens_is_the_answer_budget_and_answer_max_new_tokens_a_deprecated_alias(chain):
    short = WiMChain(wim=chain.wim, max_tokens=2, return_margins=True).invoke(X)["result"]
    assert short.tokens.answer_generated <= 2 < chain.wim.config.answer_max_new_tokens
    assert chain.invoke(X, max_tokens=2) == short.answer
    with pytest.warns(DeprecationWarning, match="answer_max_new_tokens is deprecated, use max_tokens"):
        old = WiMChain(wim=chain.wim, answer_max_new_tokens=2)
    assert old.max_tokens == 2 and old.invoke(X) == short.answer
    with pytest.warns(DeprecationWarning, match="use max_tokens"):
        assert chain.invoke(X, answer_max_new_tokens=2) == short.answer


def test_a_segment_read_but_not_annotated_ends_as_stopped(tiny_wim):
    # answer_now() right after the second segment is read: its margin is never written; its child run ends as
    # stopped (an error), the answer run follows.
    from wim_integrations.langchain.chain import to_engine_context
    from wim_integrations.langchain.events import EventRelay

    def drive(x, config):
        stream = tiny_wim.stream(to_engine_context(DOCS), QUESTION)
        relay = EventRelay(config, stream)
        for ev in stream:
            relay(ev)
            if ev.type == "segment_read" and ev.segment_index == 1:
                stream.answer_now()
        return stream.result.answer

    with collect_runs() as cb:
        answer = RunnableLambda(drive).invoke("x")
    [root] = cb.traced_runs
    assert [(r.name, r.error is not None) for r in root.child_runs] == [
        (MARGIN_RUN, False), (CLASSIFY_RUN, False), (MARGIN_RUN, True), (ANSWER_RUN, False),
    ]  # fmt: skip
    assert root.child_runs[-1].outputs["generations"][0][0]["text"] == answer
