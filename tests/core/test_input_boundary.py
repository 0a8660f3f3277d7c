"""The input boundary: every bad instruction, document id/metadata, prompt override, setting, cache size and report
path is refused with the library's own error (a `WiMInputError`, still a `ValueError`) before any forward pass, and
what is accepted can always be written out (JSON and HTML). On the pure-Python fake backend: fast."""

from __future__ import annotations

import io
import json
import math

import pytest
from fake_backend import FakeBackend

from wim_integrations import Analysis, DocumentCache, PromptSet, SamplingConfig, WiM, WiMConfig, WiMInputError
from wim_integrations.errors import SettingsError
from wim_integrations.frontends.cli import main
from wim_integrations.frontends.html import render_page

CFG = WiMConfig(segment_tokens=600, margin_max_new_tokens=6, answer_max_new_tokens=6, classification="lexical")
TEXT = "The keeper of the lighthouse is Mara Voss. She came in 1999.\n\nThe harbour has 12 boats."
Q = "Who keeps the lighthouse?"


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> WiM:
    """A WiM on the fake backend that fails the test if any forward pass starts."""
    backend = FakeBackend()

    def boom(*a: object, **k: object) -> None:
        raise AssertionError("compute started before validation")

    for name in ("prefill", "generate", "generate_packed", "score_rows"):
        monkeypatch.setattr(backend, name, boom)
    return WiM(backend, config=CFG)


@pytest.fixture
def wim() -> WiM:
    return WiM(FakeBackend(), config=CFG)


# -- instructions ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda w: w.summarize(TEXT, "sum\udcffmarise"), "instruction contains a lone surrogate"),
        (lambda w: w.analyze(TEXT, "List names.", note_instruction="\ud800"), "note_instruction contains a lone"),
        (lambda w: w.analyze(TEXT, "x\udc80"), "instruction contains a lone surrogate"),
        (lambda w: w.stream(TEXT, Analysis.summary(note_instruction="n\udcff")), "note_instruction contains"),
    ],
)
def test_a_surrogate_in_an_instruction_is_refused_before_compute(no_compute: WiM, call, message: str) -> None:
    with pytest.raises(WiMInputError, match=message):
        call(no_compute)


def test_wim_summarize_refuses_a_surrogate_instruction_before_loading_the_model(tmp_path) -> None:
    doc = tmp_path / "doc.txt"
    doc.write_text(TEXT)
    out, err = io.StringIO(), io.StringIO()
    code = main(["summarize", "-f", str(doc), "-i", "\udcff"], stdout=out, stderr=err)  # what `-i $'\xff'` gives
    assert code == 2 and "instruction contains a lone surrogate" in err.getvalue(), err.getvalue()
    assert "Loading" not in err.getvalue()


# -- documents ---------------------------------------------------------------------------------------------------
class _Opaque:
    pass


def _cyclic() -> dict[str, object]:
    d: dict[str, object] = {}
    d["self"] = d
    return d


@pytest.mark.parametrize(
    "document, message",
    [
        ({"text": TEXT, "id": "doc-\ud800"}, "document id contains a lone surrogate"),
        ({"text": TEXT, "metadata": {"source": "a\udc80b"}}, "metadata cannot be written out as JSON"),
        ({"text": TEXT, "metadata": {"\udc80": 1}}, "metadata cannot be written out as JSON"),
        ({"text": TEXT, "metadata": {"tags": ["ok", "\ud83d"]}}, "metadata cannot be written out as JSON"),
        ({"text": TEXT, "metadata": {"blob": b"\xff"}}, "metadata cannot be written out as JSON"),
        ({"text": TEXT, "metadata": {"obj": _Opaque()}}, "metadata cannot be written out as JSON"),
        ({"text": TEXT, "metadata": _cyclic()}, "metadata cannot be written out as JSON"),
    ],
)
def test_a_document_id_or_metadata_that_cannot_be_written_out_is_refused(
    no_compute: WiM, document: dict[str, object], message: str
) -> None:
    with pytest.raises(WiMInputError, match=f"context item 0: (document )?{message}"):
        no_compute.stream([document], Q)


def test_an_accepted_document_comes_out_as_json_and_html(wim: WiM) -> None:
    docs = [{"text": TEXT, "id": "d-1 <b>", "metadata": {"source": "x.txt", "n": 3, "tags": ["a", None], "f": 1.5}}]
    result = wim.run(docs, Q)
    assert json.loads(result.model_dump_json())["documents"][0]["id"] == "d-1 <b>"
    assert "d-1 &lt;b&gt;" in result.to_html()


# -- prompt overrides --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "override, message",
    [
        ({"final_answer": None}, "prompt 'final_answer' must be a string, not NoneType"),
        ({"final_answer": "{{margins}} {{question}} {{answer}}"}, r"unknown placeholder\(s\) \['\{\{answer\}\}'\]"),
        ({"final_answer": "Answer: {{question}}"}, r"'final_answer' lacks the placeholder\(s\) \['\{\{margins\}\}'\]"),
        ({"final_answer": "{{margins}}"}, r"lacks the placeholder\(s\) \['\{\{question\}\}'\]"),
        ({"margin_instruction_segment": "Note the facts."}, r"lacks the placeholder\(s\) \['\{\{question\}\}'\]"),
        ({"classification": "Is it relevant? {{question}}"}, r"lacks the placeholder\(s\) \['\{\{margin\}\}'\]"),
        ({"final_report": "{{notes}}"}, r"lacks the placeholder\(s\) \['\{\{instruction\}\}'\]"),
        ({"context_opening": "Read {{question}}:"}, "it can use: none"),
        ({"no_margins": "none \ud800"}, "prompt 'no_margins' contains a lone surrogate"),
    ],
)
def test_prompt_overrides_are_checked_against_what_each_prompt_is_filled_with(
    override: dict[str, object], message: str
) -> None:
    with pytest.raises(WiMInputError, match=message):
        PromptSet.default().with_overrides(override)  # type: ignore[arg-type]
    fields = {**PromptSet.default().as_dict(), **override}
    with pytest.raises(WiMInputError, match=message):
        PromptSet(**fields)  # type: ignore[arg-type]


def test_a_valid_override_is_used_as_given(wim: WiM) -> None:
    prompts = PromptSet.default().with_overrides(final_answer="Q: {{ question }}\n{{margins}}\nA:")
    plan_ids = wim.with_options(prompts=prompts).final_prompt_ids(Q, [], 1)
    assert wim.backend.decode(plan_ids).startswith(f"Q: {Q}\n")


# -- settings ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "settings, message",
    [
        ({"margin_batch_size": True}, "margin_batch_size: a whole number is needed, not True"),
        ({"segment_tokens": False}, "segment_tokens: a whole number is needed, not False"),
        ({"margin_batch_size": 0}, "margin_batch_size: Input should be greater than or equal to 1"),
        ({"sampling": {"temperature": math.inf}}, "sampling.temperature: Input should be a finite number"),
        ({"sampling": {"top_p": math.nan}}, "sampling.top_p: Input should be a finite number"),
        ({"sampling": {"top_k": True}}, "sampling.top_k: a whole number is needed"),
        ({"relevance_threshold": math.inf}, "relevance_threshold: Input should be a finite number"),
        ({"classification": "vibes"}, "classification: Input should be"),
        ({"margin_batch": 4}, r"margin_batch: Extra inputs are not permitted"),
        ({"classification": "none", "relevance_threshold": 0.5}, "relevance_threshold applies to the score-based"),
    ],
)
def test_bad_settings_are_settings_errors_naming_the_field(
    no_compute: WiM, settings: dict[str, object], message: str
) -> None:
    for attempt in (
        lambda: WiMConfig(**settings),  # type: ignore[arg-type]
        lambda: WiMConfig.model_validate(settings),
        lambda: CFG.with_updates(**settings),
        lambda: no_compute.stream(TEXT, Q, **settings),
        lambda: no_compute.stream(TEXT, Q, config=settings),
    ):
        with pytest.raises(SettingsError, match=message) as info:
            attempt()
        assert isinstance(info.value, WiMInputError) and isinstance(info.value, ValueError)
        assert info.value.problems


def test_sampling_config_itself_refuses_infinite_temperature() -> None:
    with pytest.raises(SettingsError, match="invalid SamplingConfig settings: temperature: Input should be a finite"):
        SamplingConfig(do_sample=True, temperature=math.inf)


def test_whole_numbers_given_as_text_are_still_read() -> None:
    assert WiMConfig.model_validate({"margin_batch_size": "4"}).margin_batch_size == 4  # e.g. from an env variable


# -- the document cache and the report path --------------------------------------------------------------------
@pytest.mark.parametrize(
    "options", [{"max_bytes": -1}, {"max_bytes": "1GB"}, {"max_bytes": True}, {"wait_seconds": -1}]
)
def test_a_bad_document_cache_size_is_an_input_error(options: dict[str, object]) -> None:
    with pytest.raises(WiMInputError, match=r"max_bytes|wait_seconds"):
        DocumentCache(**options)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ["a\x00b.html", ""])
def test_a_report_path_with_a_nul_character_is_an_input_error(wim: WiM, path: str) -> None:
    result = wim.run(TEXT, Q)
    with pytest.raises(WiMInputError, match="empty or contains a NUL character"):
        result.to_html(path)


def test_a_report_path_the_file_system_refuses_is_an_input_error(wim: WiM, tmp_path) -> None:
    result = wim.run(TEXT, Q)
    with pytest.raises(WiMInputError, match=r"cannot write the HTML report to .*File name too long"):
        result.to_html(tmp_path / ("x" * 300 + ".html"))  # refused by the file system, whoever runs this


# -- the report shows bidi controls, inert --------------------------------------------------------------------------
def test_bidi_controls_cannot_reorder_the_report(wim: WiM) -> None:
    spoof = "Pay \u202eevil.exe\u202c and \u2067isolated\u2069 text"
    result = wim.run([{"text": f"{TEXT} {spoof}", "id": "doc \u202ex", "metadata": {"k": "\u202dv"}}], f"{Q} \u2066?")
    page = render_page(result)
    assert not any(c in page for c in "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
    assert "Pay [U+202E]evil.exe[U+202C] and [U+2067]isolated[U+2069] text" in page
    assert "doc [U+202E]x" in page and "[U+202D]v" in page and "[U+2066]?" in page
