"""`WiM.read_margins`: the margins of a full run, and no answer decoded."""

from __future__ import annotations

import asyncio

import pytest

from wim_integrations import WiM
from wim_integrations.events import AnswerStarted, MarginWritten

TEXT = "Mary went to the kitchen. The secret code is 4417. Paris is the capital of France. " * 12
QUESTION = "What is the secret code?"
BUDGET = 7  # an answer budget no other request of the run uses


@pytest.fixture
def answer_requests(tiny_wim: WiM, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Prompt lengths of the answer generations the backend was asked for."""
    backend, seen = tiny_wim.backend, []
    generate = backend.generate

    def spy(cache, request):
        if request.max_new_tokens == BUDGET:
            seen.append(len(request.prompt_ids))
        return generate(cache, request)

    monkeypatch.setattr(backend, "generate", spy)
    return seen


@pytest.mark.parametrize("batch", [1, 4])
def test_margins_of_a_full_run_and_no_answer(tiny_wim, answer_requests, batch):
    full = tiny_wim.run(TEXT, QUESTION, answer_max_new_tokens=BUDGET, margin_batch_size=batch)
    assert len(answer_requests) == 1 and full.n_segments >= 2  # the spy sees a full run's answer
    events = []
    margins = tiny_wim.read_margins(
        TEXT, QUESTION, on_event=events.append, answer_max_new_tokens=BUDGET, margin_batch_size=batch
    )
    assert margins == [m.model_copy(update={"seconds": x.seconds}) for m, x in zip(full.margins, margins, strict=True)]
    assert len(answer_requests) == 1  # no answer was decoded
    assert [e.margin for e in events if isinstance(e, MarginWritten)] == margins
    assert not any(isinstance(e, AnswerStarted) for e in events)

    seen = []

    async def on_event(event):
        seen.append(event.type)

    margins_async = asyncio.run(tiny_wim.aread_margins(TEXT, QUESTION, on_event=on_event, answer_max_new_tokens=BUDGET))
    assert [m.text for m in margins_async] == [m.text for m in full.margins] and len(answer_requests) == 1
    assert seen.count("margin_written") == len(full.margins) and "answer_started" not in seen
