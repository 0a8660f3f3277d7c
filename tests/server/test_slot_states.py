"""`SlotKeeper`'s decisions and how it recovers from a wrong picture of the slot, against a stand-in for llama.cpp's
slot actions that behaves as the server's source does (tools/server/server-context.cpp: a save writes the slot's
tokens, a restore replaces them, a server without --slot-save-path answers 501). Fast; the real server's behaviour
is tests/server/test_llama_server_slots.py's."""

from __future__ import annotations

from typing import Any

from wim_integrations.backends.server import held_first
from wim_integrations.backends.slot_states import SlotKeeper
from wim_integrations.errors import ServerResponseError

DOC = list(range(1000, 1600))  # a 600-token document


class Slots:
    """llama.cpp's slot actions on files: `held` is what slot 0 holds, `files` what each saved file holds."""

    def __init__(self, supported: bool = True) -> None:
        self.supported = supported
        self.held: list[int] = []
        self.files: dict[str, list[int]] = {}
        self.calls: list[str] = []

    def post(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        action = path.split("action=")[1]
        self.calls.append(action)
        if not self.supported:
            raise ServerResponseError(
                f"llama.cpp server at http://x{path} answered HTTP 501: 'This server does not support slots action. "
                "Start it with `--slot-save-path`'"
            )
        if action == "save":
            self.files[body["filename"]] = list(self.held)
            return {"n_saved": len(self.held), "timings": {"save_ms": 1.0}}
        self.held = list(self.files.get(body["filename"], []))
        return {"n_restored": len(self.held), "timings": {"restore_ms": 2.0}}

    def request(self, keeper: SlotKeeper, prompt: list[int]) -> int:
        """One request through the keeper: the tokens the slot had cached for it (what llama.cpp reports)."""
        prepared = keeper.prepare(0, prompt)
        cached = next((i for i, (a, b) in enumerate(zip(self.held, prompt, strict=False)) if a != b), None)
        cached = min(len(self.held), len(prompt)) if cached is None else cached
        self.held = list(prompt)
        keeper.sent(0, prompt, prepared, cached)
        return cached


def read_in_order(slots: Slots, keeper: SlotKeeper, question: int) -> list[int]:
    """A WiM run's requests on a 3-segment document: per segment a warm-up, then a margin; then the answer."""
    cached = []
    for end in (200, 400, 600):
        cached.append(slots.request(keeper, DOC[:end]))
        cached.append(slots.request(keeper, [*DOC[:end], question, 7, 7]))
    cached.append(slots.request(keeper, [*DOC, question, 9, 9]))
    return cached


def test_the_second_question_restores_the_document_the_first_left_in_the_slot():
    slots = Slots()
    keeper = SlotKeeper(slots.post)
    first = read_in_order(slots, keeper, 1)
    assert slots.calls == []  # a run gives up only its previous margin: nothing saved or restored
    second = read_in_order(slots, keeper, 2)
    assert slots.calls == ["save", "restore", "restore"]  # saved at segment 1, restored for segments 2 and 3
    assert (keeper.saves, keeper.restores, keeper.action_ms) == (1, 2, 5.0)
    warm_ups = second[0::2][:3]
    assert warm_ups == [200, 400, 600] and first[0::2][:3] == [0, 200, 400]  # the document is not computed again
    assert second[-1] >= 600  # and the answer finds it whole


def test_a_server_without_slot_files_turns_the_keeper_off_and_requests_go_as_before():
    slots = Slots(supported=False)
    keeper = SlotKeeper(slots.post)
    read_in_order(slots, keeper, 1)
    second = read_in_order(slots, keeper, 2)
    assert slots.calls == ["save"] and not keeper.enabled and "--slot-save-path" in (keeper.disabled_because or "")
    assert second[0::2][:3] == [200, 200, 400]  # the document computed again, as without the keeper


def test_a_file_that_no_longer_holds_the_document_is_forgotten():
    slots = Slots()
    keeper = SlotKeeper(slots.post)
    read_in_order(slots, keeper, 1)
    slots.request(keeper, DOC[:200])  # saves the document
    [name] = slots.files
    slots.files[name] = DOC[:300] + [5] * 303  # another client overwrote the file (same length)
    slots.request(keeper, DOC[:400])  # restored, but the server found only 300 tokens: the file is forgotten
    assert keeper.restores == 1 and keeper.saved == []
    slots.request(keeper, DOC[:200])
    slots.request(keeper, DOC[:600])
    assert keeper.restores == 1  # not restored again


def test_a_slot_that_did_not_hold_what_the_keeper_thought_is_not_kept():
    slots = Slots()
    keeper = SlotKeeper(slots.post)
    read_in_order(slots, keeper, 1)
    slots.held = []  # emptied behind the keeper's back (erase action, restart)
    slots.request(keeper, DOC[:200])  # the keeper saves, the server saves 0 tokens: nothing kept
    assert keeper.saves == 0 and keeper.saved == []
    keeper.forget_slots()
    slots.request(keeper, [5, 6])
    assert slots.calls == ["save"]  # after forget_slots, nothing is believed to be lost


def test_at_most_max_states_files_are_written():
    slots = Slots()
    keeper = SlotKeeper(slots.post, max_states=2)
    for doc in range(4):  # four documents in turn, each given up for the next
        slots.request(keeper, [doc, *DOC])
    assert keeper.saves == 3 and len(slots.files) == 2 and [s.tokens[0] for s in keeper.saved] == [1, 2]


def test_after_forget_saved_nothing_saved_is_restored_and_the_names_are_reused():
    slots = Slots()
    keeper = SlotKeeper(slots.post)
    read_in_order(slots, keeper, 1)
    read_in_order(slots, keeper, 2)  # saves the document at segment 1 (one file)
    names = set(slots.files)
    slots.held = []  # the slot emptied from outside (a benchmark's cold run)
    keeper.forget_slots()
    keeper.forget_saved()
    calls = len(slots.calls)
    cold = read_in_order(slots, keeper, 3)
    assert "restore" not in slots.calls[calls:]  # the document is computed again: nothing restored
    assert cold[0::2][:3] == [0, 200, 400]
    read_in_order(slots, keeper, 4)  # saves again: over the old file, not beside it
    assert set(slots.files) == names


def test_a_lane_sends_first_the_row_its_slot_holds_most_of_and_else_keeps_the_longest_first():
    keeper = SlotKeeper(Slots().post)
    # Three margin rows of one lane, longest prefix first, each its segment's end then the margin instruction.
    prompts = [[*DOC[:end], 50, 51, 52, 60 + i] for i, end in enumerate((600, 400, 200))]
    assert held_first(keeper, 0, [0, 1, 2], prompts) == [0, 1, 2]  # the slot holds none of them: a first read
    keeper.held[0] = [*DOC[:400], 50, 51, 52, 70, 8, 8]  # the first question's row 1 and its margin
    # Row 1 finds its prefix and the instruction's shared start; row 0 only the document up to row 1's segment end.
    assert held_first(keeper, 0, [0, 1, 2], prompts) == [1, 0, 2]
    assert held_first(keeper, 0, [2], prompts) == [2]
