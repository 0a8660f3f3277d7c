"""ChatWiM: the langchain-tests standard unit suite and its own message convention (tiny random Llama)."""

from __future__ import annotations

import asyncio
import warnings

import pytest
from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.messages import AIMessage, HumanMessage, SystemMessage, get_buffer_string
from langchain_core.runnables import RunnableLambda
from langchain_core.tracers.context import collect_runs
from langchain_tests.unit_tests import ChatModelUnitTests
from test_langchain import DOCS, QUESTION

from wim_integrations import DocumentCache, InputDocument, WiM, WiMInputError
from wim_integrations.langchain import CLASSIFY_RUN, EVENT_NAMES, MARGIN_RUN, ChatWiM, parse_event


class TestChatWiMStandard(ChatModelUnitTests):
    @pytest.fixture(autouse=True)
    def _engine(self, tiny_wim: WiM) -> None:
        type(self).engine = tiny_wim

    @property
    def chat_model_class(self) -> type[ChatWiM]:
        return ChatWiM

    @property
    def chat_model_params(self) -> dict:
        return {"wim": self.engine, "context": DOCS}

    @property
    def returns_usage_metadata(self) -> bool:
        return True


@pytest.fixture(scope="module")
def chat(tiny_wim: WiM) -> ChatWiM:
    return ChatWiM(wim=tiny_wim)


@pytest.fixture(scope="module")
def reference(tiny_wim: WiM):
    docs = [InputDocument(d.page_content, d.id, d.metadata) for d in DOCS]
    return tiny_wim.run(docs, QUESTION)


class Events(BaseCallbackHandler):
    def __init__(self) -> None:
        self.custom: list[tuple[str, dict, object]] = []
        self.tokens: list[str] = []
        self.llm_runs: list[object] = []

    def on_chat_model_start(self, serialized, messages, *, run_id, **kwargs):
        self.llm_runs.append(run_id)

    def on_llm_new_token(self, token, **kwargs):
        self.tokens.append(token)

    def on_custom_event(self, name, data, *, run_id, **kwargs):
        self.custom.append((name, data, run_id))


def test_bound_documents_and_last_human_message_give_the_engine_answer(chat, reference):
    handler = Events()
    msg = chat.with_context(DOCS).invoke([HumanMessage(QUESTION)], {"callbacks": [handler]})
    assert isinstance(msg, AIMessage) and msg.content == reference.answer
    wim = msg.response_metadata["wim"]
    assert wim["question"] == QUESTION and len(wim["margins"]) == reference.n_segments
    assert [m["text"] for m in wim["margins"]] == [m.text for m in reference.margins]
    assert msg.response_metadata["model_name"] == chat.wim.model_name
    t = reference.tokens
    assert msg.usage_metadata["input_tokens"] == t.context + t.prompt + t.answer_prompt
    assert msg.usage_metadata["output_tokens"] == t.margin_generated + t.classifier_generated + t.answer_generated
    # margins as custom events of the chat-model run
    assert {n for n, _, _ in handler.custom} == set(EVENT_NAMES)
    assert {r for _, _, r in handler.custom} == set(handler.llm_runs)
    margins = [parse_event(n, d).margin for n, d, _ in handler.custom if n == "wim_margin_written"]
    assert [m.text for m in margins] == [m.text for m in reference.margins]
    tokens = Events()
    chat.with_context(DOCS).model_copy(update={"streaming": True}).invoke(QUESTION, {"callbacks": [tokens]})
    assert "".join(tokens.tokens) == reference.answer  # streaming=True: invoke streams, handlers get tokens


def test_context_per_call_and_from_the_system_message(chat, reference):
    assert chat.invoke([HumanMessage(QUESTION)], context=DOCS).content == reference.answer
    text = "\n\n".join(d.page_content for d in DOCS)
    from_system = chat.invoke([SystemMessage(text), HumanMessage(QUESTION)])
    expected = chat.wim.run([InputDocument(text, "system")], QUESTION)
    assert from_system.content == expected.answer


def test_earlier_turns_are_read_as_a_conversation_document(chat, tiny_wim):
    msgs = [SystemMessage("Mary went to the kitchen."), HumanMessage("Where is Mary?"), AIMessage("In the kitchen.")]
    out = chat.invoke([*msgs, HumanMessage(QUESTION)])
    docs = [
        InputDocument("Mary went to the kitchen.", "system"),
        InputDocument("Conversation so far:\nUser: Where is Mary?\nAssistant: In the kitchen.", "conversation"),
    ]
    expected = tiny_wim.run(docs, QUESTION)
    assert out.content == expected.answer
    assert [d["doc_id"] for m in out.response_metadata["wim"]["margins"] for d in m["documents"]] == [
        "system",
        "conversation",
    ]


def test_stream_and_astream_add_up_to_invoke(chat, reference):
    bound = chat.with_context(DOCS)
    chunks = list(bound.stream(QUESTION))
    assert len(chunks) > 2 and chunks[-1].chunk_position == "last" and chunks[-1].content == ""
    full = chunks[0]
    for c in chunks[1:]:
        full = full + c
    assert full.content == reference.answer and full.usage_metadata["output_tokens"] > 0

    async def collect():
        return [c async for c in bound.astream(QUESTION)]

    assert "".join(c.content for c in asyncio.run(collect())) == reference.answer


@pytest.mark.parametrize("where", ["alone", "in_a_chain"])
def test_astream_events_show_margins_while_streaming(chat, reference, where):
    bound = chat.with_context(DOCS)
    runnable = bound if where == "alone" else RunnableLambda(lambda q: [HumanMessage(q)]) | bound

    async def collect():
        return [e async for e in runnable.astream_events(QUESTION, version="v2")]

    events = asyncio.run(collect())
    kinds = [(e["event"], e.get("name")) for e in events]
    first_margin = kinds.index(("on_custom_event", "wim_margin_written"))
    first_token = next(i for i, (k, _) in enumerate(kinds) if k == "on_chat_model_stream")
    assert first_margin < first_token  # margins arrive before the answer streams
    assert kinds.count(("on_custom_event", "wim_margin_written")) == reference.n_segments
    chat_run = next(e for e in events if e["event"] == "on_chat_model_start")
    custom = [e for e in events if e["event"] == "on_custom_event"]
    assert {e["run_id"] for e in custom} == {chat_run["run_id"]}  # events of the chat-model run itself


def test_sync_stream_sends_margins_to_the_chat_run(chat, reference):
    handler = Events()
    chunks = list(chat.with_context(DOCS).stream(QUESTION, {"callbacks": [handler]}))
    assert "".join(c.content for c in chunks) == reference.answer
    assert {r for _, _, r in handler.custom} == set(handler.llm_runs) and len(handler.llm_runs) == 1
    names = [n for n, _, _ in handler.custom]
    assert names.count("wim_margin_written") == reference.n_segments and names[-1] == "wim_finished"


def test_stop_sequences_cut_the_answer(chat, reference):
    stop = reference.answer[3:6]
    assert stop and reference.answer.find(stop) == 3
    cut = chat.with_context(DOCS).invoke(QUESTION, stop=[stop])
    assert cut.content.strip() == reference.answer[:3].strip()  # text before the stop may end in a space
    streamed = "".join(c.content for c in chat.with_context(DOCS).bind(stop=[stop]).stream(QUESTION))
    assert streamed.strip() == reference.answer[:3].strip() and streamed == cut.content


def test_a_stop_sequence_ends_the_answers_decoding(tiny_wim):
    long = ChatWiM(wim=tiny_wim, context=DOCS, max_tokens=40, classification="none")
    full = long.invoke(QUESTION)
    assert full.response_metadata["wim"]["tokens"]["answer_generated"] == 40  # the answer uses its whole budget
    stop = full.content[8:11]
    assert full.content.find(stop) == 8
    cut = long.invoke(QUESTION, stop=[stop])
    assert cut.content == full.content[:8]
    assert cut.response_metadata["wim"]["tokens"]["answer_generated"] < 40


def test_standard_parameters_map_to_wim_settings(tiny_wim, reference):
    short = ChatWiM(wim=tiny_wim, context=DOCS, max_tokens=2).invoke(QUESTION)
    assert short.response_metadata["wim"]["tokens"]["answer_generated"] <= 2
    params = ChatWiM(wim=tiny_wim, max_tokens=7, temperature=0.5, stop=["x"])._get_ls_params()
    assert (params["ls_max_tokens"], params["ls_temperature"], params["ls_stop"]) == (7, 0.5, ["x"])
    with pytest.raises(ValueError, match="disagree"), pytest.warns(DeprecationWarning):
        ChatWiM(wim=tiny_wim, max_tokens=7, answer_max_new_tokens=8)


BAD = [
    ([HumanMessage(QUESTION)], "no context to read"),
    ([SystemMessage("text"), AIMessage("hi")], "last message is AIMessage"),
    ([], "last message is nothing"),
]


@pytest.mark.parametrize(("messages", "needle"), BAD)
def test_bad_messages_raise_clear_errors(chat, messages, needle):
    with pytest.raises(WiMInputError, match=needle):
        chat.invoke(messages)


def test_unknown_call_kwargs_and_fields_are_rejected(chat, tiny_wim):
    with pytest.raises(WiMInputError, match=r"unknown ChatWiM call keyword argument \['max_new_tokens'\]"):
        chat.invoke(QUESTION, context=DOCS, max_new_tokens=3)
    with pytest.raises(ValueError, match="margin_max_new_tokens"):
        ChatWiM(wim=tiny_wim, margin_tokens=3)


def test_document_cache_reads_are_reported_as_cache_read(tiny_wim):
    chat = ChatWiM(wim=tiny_wim.with_options(document_cache=DocumentCache()), context=DOCS)
    miss, hit = chat.invoke(QUESTION), chat.invoke(QUESTION)
    assert (miss.response_metadata["wim"]["timings"]["context_cache"], hit.response_metadata["wim"]["timings"]
            ["context_cache"]) == ("miss", "hit")  # fmt: skip
    assert hit.content == miss.content
    # input_tokens is the whole prompt either way; the hit says how much of it the document cache supplied
    assert hit.usage_metadata["input_tokens"] == miss.usage_metadata["input_tokens"]
    assert "input_token_details" not in miss.usage_metadata
    tokens = hit.response_metadata["wim"]["tokens"]
    assert hit.usage_metadata["input_token_details"]["cache_read"] == tokens["cache_read"] > tokens["context"]
    computed = tokens["prompt"] + tokens["answer_prompt"]
    assert hit.usage_metadata["input_tokens"] == computed + tokens["cache_read"]


def test_token_counts_use_the_models_tokenizer(chat, tiny_wim):
    text = "The secret code is 4417."
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "fallback GPT-2 tokenizer" warning
        assert chat.get_num_tokens(text) == len(tiny_wim.backend.encode_text(text)) > 0
        messages = [SystemMessage(text), HumanMessage(QUESTION)]
        expected = sum(len(tiny_wim.backend.encode_text(get_buffer_string([m]))) for m in messages)
        assert chat.get_num_tokens_from_messages(messages) == expected
    assert ChatWiM(wim=tiny_wim, custom_get_token_ids=lambda t: [1, 2]).get_num_tokens(text) == 2
    with pytest.raises(WiMInputError, match="text must be a string"):
        chat.get_num_tokens(3)


@pytest.mark.parametrize("how", ["invoke", "stream", "ainvoke", "astream"])
def test_margin_child_runs_under_the_chat_run(chat, reference, how):
    """As WiMChain's: a wim_margin (and wim_classify) child run per segment, seen by LangChain's own run collector;
    no answer child run (the chat run is the answer)."""
    bound = chat.with_context(DOCS)

    async def consume():
        return [c async for c in bound.astream(QUESTION)]

    with collect_runs() as collector:
        if how == "invoke":
            bound.invoke(QUESTION)
        elif how == "stream":
            list(bound.stream(QUESTION))
        elif how == "ainvoke":
            asyncio.run(bound.ainvoke(QUESTION))
        else:
            asyncio.run(consume())
    [run] = collector.traced_runs
    assert run.run_type == "llm" and run.name == "ChatWiM"
    children = sorted(run.child_runs, key=lambda r: r.dotted_order)
    assert [c.name for c in children] == [MARGIN_RUN, CLASSIFY_RUN] * reference.n_segments
    margins = [c for c in children if c.name == MARGIN_RUN]
    assert [c.outputs["generations"][0][0]["text"] for c in margins] == [m.text for m in reference.margins]
