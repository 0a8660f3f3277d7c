"""WiMLLM on the tiny random model: generation settings, async calls that leave the event loop free, no OpenAI."""

from __future__ import annotations

import asyncio
import time

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.llms import ChatMessage
from llama_index.core.node_parser import SentenceSplitter
from test_llamaindex import QUESTION, TEXTS, HashEmbedding

from wim_integrations import WiMInputError
from wim_integrations.llamaindex import WiMLLM, WiMNodePostprocessor, WiMQueryEngine, WiMSynthesizer

# The tiny Llama writes to any budget after this prompt (greedy; found by trying the test corpus): a long call.
LONG_PROMPT = "Tell me a long story."


@pytest.fixture
def requests(tiny_wim, monkeypatch):
    """The GenerationRequests WiMLLM hands the backend (the backend still generates)."""
    seen = []
    backend = tiny_wim.backend
    generate = backend.generate

    def spy(cache, request):
        seen.append(request)
        return generate(cache, request)

    monkeypatch.setattr(backend, "generate", spy)
    return seen


def test_settings_come_from_call_then_fields_then_generation_config(tiny_wim, requests, monkeypatch):
    gen = tiny_wim.backend.model.generation_config
    llm = WiMLLM(tiny_wim)
    llm.complete("Hi")
    assert requests[-1].max_new_tokens == 256 and not requests[-1].sampling.do_sample  # the model's config: greedy
    monkeypatch.setattr(gen, "do_sample", True)
    monkeypatch.setattr(gen, "temperature", 0.7)
    monkeypatch.setattr(gen, "top_k", 20)
    monkeypatch.setattr(gen, "max_new_tokens", 5)
    llm.complete("Hi")
    s = requests[-1].sampling
    assert (requests[-1].max_new_tokens, s.do_sample, s.temperature, s.top_k) == (5, True, 0.7, 20)
    llm = WiMLLM(tiny_wim, temperature=0, max_tokens=4, top_p=0.5)  # fields override the model's config
    assert llm.metadata.num_output == 4
    llm.complete("Hi")
    s = requests[-1].sampling
    assert (requests[-1].max_new_tokens, s.do_sample, s.top_p, s.top_k) == (4, False, 0.5, 20)
    llm.chat([ChatMessage(role="user", content="Hi")], max_tokens=3, temperature=0.9, seed=1)  # the call wins
    s = requests[-1].sampling
    assert (requests[-1].max_new_tokens, s.do_sample, s.temperature, s.seed) == (3, True, 0.9, 1)
    list(llm.stream_complete("Hi", max_tokens=2, do_sample=False, temperature=0.9))
    assert requests[-1].max_new_tokens == 2 and not requests[-1].sampling.do_sample


def test_settings_change_what_is_generated(tiny_wim):
    llm = WiMLLM(tiny_wim, max_tokens=40)
    greedy = llm.complete(LONG_PROMPT).text
    five = llm.complete(LONG_PROMPT, max_tokens=5).text
    assert five == WiMLLM(tiny_wim, max_tokens=5).complete(LONG_PROMPT).text
    assert len(five) < len(greedy) and greedy.startswith(five.rstrip("\ufffd"))  # the same greedy start, cut short
    sampled = [llm.complete(LONG_PROMPT, temperature=1.5, seed=s).text for s in (1, 1, 2)]
    assert sampled[0] == sampled[1] and greedy not in sampled  # seeded sampling: reproducible, not greedy


def test_bad_settings_are_named(tiny_wim):
    llm = WiMLLM(tiny_wim)
    with pytest.raises(WiMInputError, match=r"stop_sequence.*temperature"):
        llm.complete("Hi", stop_sequence=["x"])
    with pytest.raises(WiMInputError, match="not both"), pytest.warns(DeprecationWarning):
        llm.complete("Hi", max_tokens=3, max_new_tokens=3)
    with pytest.raises(WiMInputError, match="temperature=0"):
        llm.complete("Hi", temperature=0, do_sample=True)
    with pytest.raises(WiMInputError, match="top_p"):
        llm.complete("Hi", top_p=2.0)
    with pytest.raises(WiMInputError, match="at least 1"):
        llm.complete("Hi", max_tokens=0)
    with pytest.raises(WiMInputError, match="unknown"):  # a stream refuses before its first token
        llm.stream_chat([ChatMessage(role="user", content="Hi")], foo=1)


async def _worst_gap(call) -> tuple[float, float]:
    """(worst gap between 5 ms heartbeats while `call` runs, the call's duration)."""
    gaps: list[float] = []
    running = True

    async def heartbeat() -> None:
        last = time.perf_counter()
        while running:
            await asyncio.sleep(0.005)
            now = time.perf_counter()
            gaps.append(now - last)
            last = now

    beat = asyncio.create_task(heartbeat())
    await asyncio.sleep(0.02)
    gaps.clear()
    t0 = time.perf_counter()
    await call()
    duration = time.perf_counter() - t0
    running = False
    await beat
    return max(gaps), duration


@pytest.mark.parametrize("method", ["acomplete", "achat", "astream_complete", "astream_chat"])
def test_async_calls_leave_the_event_loop_free(tiny_wim, method):
    llm = WiMLLM(tiny_wim, max_tokens=600)
    messages = [ChatMessage(role="user", content=LONG_PROMPT)]

    async def call() -> None:
        if method == "acomplete":
            assert (await llm.acomplete(LONG_PROMPT)).text
        elif method == "achat":
            assert (await llm.achat(messages)).message.content
        else:
            gen = await (
                llm.astream_complete(LONG_PROMPT) if method == "astream_complete" else llm.astream_chat(messages)
            )
            assert [r async for r in gen]

    worst, duration = asyncio.run(_worst_gap(call))
    # A call that blocked the loop would leave one gap as long as itself.
    # (A short call, where the tiny model stops early, still allows 50 ms: a loaded machine delays heartbeats too.)
    assert worst < max(0.05, min(0.25, duration / 4)), f"event loop blocked for {worst:.3f}s of a {duration:.3f}s call"


def test_wim_paths_never_look_for_openai(index_for_openai, tiny_wim, monkeypatch):
    import llama_index.core.settings as li_settings

    def no_default(llm, *args, **kwargs):
        raise AssertionError(f"LlamaIndex resolved its default LLM ({llm!r}): that would be OpenAI")

    monkeypatch.setattr(li_settings, "resolve_llm", no_default)
    monkeypatch.setattr(Settings, "_llm", None)
    assert WiMQueryEngine.from_index(index_for_openai, tiny_wim).query(QUESTION).response is not None
    assert WiMSynthesizer(tiny_wim).get_response(QUESTION, TEXTS[:1])
    engine = index_for_openai.as_query_engine(
        llm=WiMLLM(tiny_wim, max_tokens=4),
        response_synthesizer=WiMSynthesizer(tiny_wim),
        node_postprocessors=[WiMNodePostprocessor(tiny_wim, classification="none")],
    )
    assert engine.query(QUESTION).metadata["wim"]["margins"]
    with pytest.raises(AssertionError, match="OpenAI"):  # the probe works: LlamaIndex's own lookup is caught
        index_for_openai.as_query_engine(response_synthesizer=WiMSynthesizer(tiny_wim))


@pytest.fixture(scope="module")
def index_for_openai() -> VectorStoreIndex:
    docs = [Document(text=t, id_=f"doc{i}") for i, t in enumerate(TEXTS)]
    return VectorStoreIndex.from_documents(
        docs, embed_model=HashEmbedding(), transformations=[SentenceSplitter(chunk_size=48, chunk_overlap=0)]
    )


def test_stop_sequences_end_the_text_and_the_decoding(tiny_wim, monkeypatch):
    llm = WiMLLM(tiny_wim, max_tokens=40)
    greedy = llm.complete(LONG_PROMPT).text
    stop = greedy[len(greedy) // 2 : len(greedy) // 2 + 3]
    expected = greedy[: greedy.index(stop)]
    decoded: list[int] = []
    generate = tiny_wim.backend.generate

    def counting(cache, request):
        for tok in generate(cache, request):
            decoded.append(tok)
            yield tok

    monkeypatch.setattr(tiny_wim.backend, "generate", counting)
    full = len(tiny_wim.backend.encode_text(greedy))
    assert llm.complete(LONG_PROMPT, stop=[stop, "never there"]).text == expected.strip()
    assert len(decoded) < full  # decoding ended at the stop sequence, not at the budget
    assert WiMLLM(tiny_wim, max_tokens=40, stop=[stop]).complete(LONG_PROMPT).text == expected.strip()
    streamed = list(llm.stream_complete(LONG_PROMPT, stop=stop))
    assert "".join(r.delta for r in streamed) == streamed[-1].text and streamed[-1].text.strip() == expected.strip()
    chat = llm.chat([ChatMessage(role="user", content=LONG_PROMPT)], stop=[stop]).message.content
    assert stop not in chat
    with pytest.raises(WiMInputError, match="stop must be"):
        llm.complete(LONG_PROMPT, stop=[1])


def test_max_new_tokens_is_a_deprecated_alias_of_max_tokens(tiny_wim):
    expected = WiMLLM(tiny_wim, max_tokens=5).complete(LONG_PROMPT).text
    with pytest.warns(DeprecationWarning, match="use max_tokens"):
        old_field = WiMLLM(tiny_wim, max_new_tokens=5)
    assert old_field.max_tokens == 5 and old_field.complete(LONG_PROMPT).text == expected
    with pytest.warns(DeprecationWarning, match="use max_tokens"):
        assert WiMLLM(tiny_wim).complete(LONG_PROMPT, max_new_tokens=5).text == expected
