"""`WiMChain` summary / analysis inputs on the tiny random Llama: the engine's result through every chain method."""

from __future__ import annotations

import asyncio

import pytest
from langchain_core.documents import Document
from langchain_core.tracers.context import collect_runs
from pydantic import BaseModel

from wim_integrations import Analysis, InputDocument, WiM, WiMInputError, WiMSummary
from wim_integrations.langchain import ANSWER_RUN, WiMChain

DOCS = [
    Document(page_content="Mary went to the kitchen. The quick brown fox jumps. " * 8, id="d1", metadata={"n": 1}),
    Document(page_content="The secret code is 4417. Paris is the capital of France. " * 8, id="d2"),
]


class Code(BaseModel):
    code: str


@pytest.fixture(scope="module")
def chain(tiny_wim: WiM) -> WiMChain:
    return WiMChain(wim=tiny_wim)


@pytest.fixture(scope="module")
def reference(tiny_wim: WiM) -> WiMSummary:
    result = tiny_wim.summarize([InputDocument(d.page_content, d.id, d.metadata) for d in DOCS])
    assert result.n_segments >= 2 and result.summary
    return result


def test_summarize_input_gives_the_engine_summary(chain, reference):
    assert chain.invoke({"context": DOCS, "summarize": True}) == reference.summary
    assert chain.invoke({"context": DOCS, "question": Analysis.summary()}) == reference.summary
    full = chain.with_margins().invoke({"context": DOCS, "summarize": True})["result"]
    assert isinstance(full, WiMSummary) and [n.text for n in full.notes] == [n.text for n in reference.notes]
    assert {d.doc_id for n in full.notes for d in n.documents} == {"d1", "d2"}
    streamed = "".join(chain.stream({"context": DOCS, "summarize": True}))
    assert streamed.strip() == reference.summary
    assert asyncio.run(chain.ainvoke({"context": DOCS, "summarize": True})) == reference.summary


def test_instructions_and_schema_reach_the_engine(chain, tiny_wim):
    docs = [InputDocument(d.page_content, d.id, d.metadata) for d in DOCS]
    value = {"context": DOCS, "analyze": "List the codes.", "note_instruction": "Copy numbers."}
    expected = tiny_wim.analyze(docs, "List the codes.", note_instruction="Copy numbers.")
    assert chain.invoke(value) == expected.summary
    custom = tiny_wim.summarize(docs, "Two lines.")
    assert chain.invoke({"context": DOCS, "summarize": "Two lines."}) == custom.summary
    roomy = WiMChain(wim=tiny_wim, context=DOCS, return_margins=True, margin_max_new_tokens=20, segment_tokens=300)
    result = roomy.invoke({"analyze": "List the codes.", "schema": Code})["result"]
    assert result.schema_name == "Code" and result.n_segments == len(result.notes)
    assert all((n.data is None) != (n.parse_error is None) for n in result.notes)  # each note validated or reported


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ({"context": DOCS, "summarize": True, "analyze": "x"}, "both 'summarize' and 'analyze'"),
        ({"context": DOCS, "summarize": " "}, "instruction is empty"),
        ({"context": DOCS, "analyze": "x", "schema": dict}, "pydantic model class"),
        ({"context": DOCS, "analyze": "x", "schema": Code}, "too small for notes"),
        ({"summarize": True}, "no context"),
    ],
)
def test_bad_summary_inputs(chain, value, message):
    with pytest.raises(WiMInputError, match=message):
        chain.invoke(value)


def test_summary_keys_are_accepted_but_the_input_schema_stays_a_question(chain):
    # The schema is what tools and agents see (`as_tool`): a question. Summary inputs are a documented dict shape.
    schema = chain.get_input_jsonschema()
    assert not {"summarize", "analyze", "note_instruction"} & set(schema["properties"])
    assert "question" in schema["required"]
    assert chain.invoke({"context": DOCS, "summarize": True, "note_instruction": "Copy numbers."})


def test_trace_of_a_summary_shows_the_prompt_the_model_read(chain, tiny_wim, reference):
    # The answer run's prompt is the summary prompt appended after the context (notes + instruction), not a
    # question prompt rebuilt by the adapter.
    with collect_runs() as cb:
        chain.invoke({"context": DOCS, "summarize": True})
    [root] = cb.traced_runs
    [answer] = [r for r in root.child_runs if r.name == ANSWER_RUN]
    read = tiny_wim.final_prompt_ids(Analysis.summary(), reference.notes, reference.n_segments)
    assert answer.inputs["prompts"] == [tiny_wim.backend.decode(read)]
