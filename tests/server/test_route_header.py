"""`ServerBackend(route_header=...)`: every request of a document carries the document's key in that header, so a
router in front of several replicas (vllm-router's consistent_hash policy routes on `x-session-id`) keeps all of a
document's requests, both questions' included, on one replica's prefix cache. Against the fake vLLM server of
fake_engines.py, which logs each request's headers; docs/serving.md has the run through a real router."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from conftest import HARBOR, QUESTION
from fake_engines import FakeVLLM

from wim_integrations import WiM, WiMConfig
from wim_integrations.backends.server import ServerBackend
from wim_integrations.errors import WiMInputError

# Scored relevance and concurrent rows: warm-ups, row requests, scoring requests and the answer request all go out.
CFG = WiMConfig(
    segment_tokens=500,
    margin_max_new_tokens=8,
    answer_max_new_tokens=8,
    margin_stop="eos",
    classification="segment_pmi",
    margin_batch_size=3,
)
OTHER_DOCUMENT = HARBOR[len(HARBOR) // 2 :]  # starts elsewhere: another document as far as its first tokens go
HEADER = "x-session-id"


@pytest.fixture
def engine(tiny_backends) -> Iterator[FakeVLLM]:
    with FakeVLLM(tiny_backends["llama"].tokenizer) as e:
        yield e


def _backend(engine: FakeVLLM, tiny_backends, **options: object) -> ServerBackend:
    return ServerBackend(engine.url, tokenizer=tiny_backends["llama"].tokenizer, engine="vllm", timeout=30, **options)


def _keys(engine: FakeVLLM) -> list[str | None]:
    """The header's value on each completion request (warm-ups, margins, scores, answers), in order."""
    return [
        value
        for (path, _), value in zip(engine.headers, engine.header_values(HEADER), strict=True)
        if path == "/v1/completions"
    ]


# batch 1: the first request holds one segment (fewer than the 1024 tokens the key hashes), later ones more; the key
# must stay the one taken at the first request. batch 3: margins as concurrent row requests.
@pytest.mark.parametrize("batch", [1, 3])
def test_every_request_of_a_document_carries_its_key_and_a_second_question_the_same(
    engine, tiny_backends, batch: int
) -> None:
    backend = _backend(engine, tiny_backends, route_header=HEADER)
    wim = WiM(backend, config=CFG.model_copy(update={"margin_batch_size": batch}))
    try:
        wim.run(HARBOR, QUESTION)
        kinds = {r.kind for r in backend.requests}
        assert kinds == {"warm", "row" if batch > 1 else "generate", "score", "generate"}, kinds  # all kinds sent
        harbor = _keys(engine)
        engine.reset_counts()
        wim.run(HARBOR, "What was damaged in the storm?")
        harbor_again = _keys(engine)
        engine.reset_counts()
        wim.run(OTHER_DOCUMENT, QUESTION)
        other = _keys(engine)
    finally:
        backend.close()
    for keys in (harbor, harbor_again, other):
        assert len(keys) > 5 and None not in keys and len(set(keys)) == 1, keys
    assert harbor_again == [harbor[0]] * len(harbor_again)  # a second question lands where the first left the document
    assert other[0] != harbor[0]


def test_no_header_by_default_and_the_same_run_with_it(engine, tiny_backends) -> None:
    plain = _backend(engine, tiny_backends)
    try:
        without = WiM(plain, config=CFG).run(HARBOR, QUESTION)
    finally:
        plain.close()
    assert _keys(engine) and set(_keys(engine)) == {None}
    routed = _backend(engine, tiny_backends, route_header=HEADER)
    try:
        with_header = WiM(routed, config=CFG).run(HARBOR, QUESTION)
    finally:
        routed.close()
    assert [m.text for m in with_header.margins] == [m.text for m in without.margins]
    assert [m.relevant for m in with_header.margins] == [m.relevant for m in without.margins]
    assert with_header.answer == without.answer


@pytest.mark.parametrize("name", ["", "x session", "x-key\r\nhost: evil", "Authorization", "content-type", 7])
def test_a_bad_route_header_is_refused_before_any_request(engine, tiny_backends, name: object) -> None:
    with pytest.raises(WiMInputError, match="route_header"):
        _backend(engine, tiny_backends, route_header=name)
    assert engine.requests == []


def test_from_server_passes_the_route_header_on(engine, tiny_backends) -> None:
    wim = WiM.from_server(
        engine.url, tokenizer=tiny_backends["llama"].tokenizer, engine="vllm", route_header=HEADER, config=CFG
    )
    try:
        assert isinstance(wim.backend, ServerBackend) and wim.backend.route_header == HEADER
    finally:
        wim.backend.close()  # type: ignore[attr-defined]


def test_the_cli_sends_the_route_header(engine, tiny_model_dirs) -> None:
    import io
    from pathlib import Path

    from wim_integrations.frontends.cli import main

    harbor = str(Path(__file__).parents[2] / "examples" / "harbor_report.txt")
    args = ["ask", "-f", harbor, "-q", QUESTION, "--server", engine.url, "--engine", "vllm"]
    args += ["--tokenizer", str(tiny_model_dirs["llama"]), "--route-header", HEADER, "--segment-tokens", "500"]
    args += ["--margin-tokens", "6", "--answer-tokens", "6", "--classification", "none", "--quiet"]
    out, err = io.StringIO(), io.StringIO()
    assert main(args, stdout=out, stderr=err) == 0, err.getvalue()
    keys = _keys(engine)
    assert len(keys) > 3 and None not in keys and len(set(keys)) == 1, keys
