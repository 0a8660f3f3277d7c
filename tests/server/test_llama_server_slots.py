"""A second question on the same document over a real llama-server: the backend saves the slot's document to a file
on the server before the second question's first margin request cuts the slot back, restores it for each later
segment, and the answer request finds the whole document cached (backends/slot_states.py); the greedy tokens equal
the same requests sent cold. On a server started without --slot-save-path it turns itself off."""

from __future__ import annotations

import pytest
from conftest import HARBOR, QUESTION, SERVER_CFG, assert_same_run
from llama_cpp_agreement import require_llama_server

from wim_integrations import WiM
from wim_integrations.backends.llama_server import LlamaServer
from wim_integrations.backends.server import RequestRecord, ServerBackend

pytestmark = pytest.mark.slow

SECOND = "What was damaged in the storm?"


def two_questions(backend: ServerBackend) -> tuple[list[RequestRecord], object]:
    """The first question, then the second on the same document: the second's requests and result."""
    wim = WiM(backend, config=SERVER_CFG)
    wim.run(HARBOR, QUESTION)
    before = len(backend.requests)
    second = wim.run(HARBOR, SECOND)
    return list(backend.requests)[before:], second


def warm_computed(records: list[RequestRecord]) -> int:
    """Prompt tokens the warm-ups computed: the document's segments that were not in the slot."""
    return sum(r.computed_tokens or 0 for r in records if r.kind == "warm")


def test_the_second_question_finds_the_document_in_the_servers_cache(llama_server, served_model):
    plan = WiM.from_server(llama_server.url, tokenizer=served_model[1], config=SERVER_CFG).plan(HARBOR, SECOND)
    n = plan.n_segments
    llama_server.erase_slots()
    backend = ServerBackend(llama_server.url, tokenizer=served_model[1], engine="llama.cpp")
    records, second = two_questions(backend)
    keeper = backend.slot_keeper
    assert keeper is not None and keeper.enabled
    # Saved once (before the first margin request cut the slot back), restored for each later segment.
    assert keeper.saves == 1 and keeper.restores >= n - 1  # (and the answer, where its prompt starts as the first)
    # llama.cpp evaluates at least one prompt token per request: one per warm-up, nothing of the document.
    assert warm_computed(records) <= n
    answer = [r for r in records if r.kind == "generate"][-1]
    assert answer.cached_tokens is not None and answer.cached_tokens >= answer.prefix_tokens
    assert answer.computed_tokens is not None and answer.computed_tokens < answer.prompt_tokens - plan.context.n_tokens

    # The same two questions without slot files: the second computes the document again (what the keeper spares).
    llama_server.erase_slots()
    plain = ServerBackend(llama_server.url, tokenizer=served_model[1], engine="llama.cpp", save_slots=False)
    plain_records, _ = two_questions(plain)
    assert plain.slot_keeper is None
    assert warm_computed(plain_records) > 0.8 * (plan.context.n_tokens - len(plan.context.segments[0].token_ids))

    # Greedy tokens from the restored slot equal the same requests sent cold (up to llama.cpp's near-ties).
    cold_backend = ServerBackend(llama_server.url, tokenizer=served_model[1], engine="llama.cpp", reuse_prefix=False)
    cold = WiM(cold_backend, config=SERVER_CFG).run(HARBOR, SECOND)
    assert all(r.cached_tokens == 0 for r in cold_backend.requests if r.cached_tokens is not None)
    assert_same_run(llama_server.url, WiM(backend, config=SERVER_CFG), plan, second, cold)
    for b in (backend, plain, cold_backend):
        b.close()


def test_a_server_without_slot_files_is_read_as_before(served_model):
    """A user's server started without --slot-save-path refuses the slot actions: the backend stops asking after the
    first refusal, and both questions are answered, the second computing the document again."""
    require_llama_server()
    args = ("--cache-ram", "0", "--batch-size", "2048", "--ubatch-size", "512")
    with LlamaServer(served_model[0], context=4096, threads=2, extra_args=args, slot_files=False) as server:
        backend = ServerBackend(server.url, tokenizer=served_model[1], engine="llama.cpp")
        records, second = two_questions(backend)
        keeper = backend.slot_keeper
        assert keeper is not None and not keeper.enabled and keeper.saves == keeper.restores == 0
        assert "--slot-save-path" in (keeper.disabled_because or "")
        assert second.answer and warm_computed(records) > 0
        backend.close()
