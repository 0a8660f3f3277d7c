"""System names with WiM settings, the CLI's checks before any model loads, task selection and the presets."""

from __future__ import annotations

import pytest

import benchmarks.__main__ as cli
from benchmarks.runner import PRESETS, build_tasks, select_tasks
from benchmarks.tasks import make_tasks
from benchmarks.variants import parse_system, parse_systems, split_names, system_order

BASE = PRESETS["quick"].wim_config()


def test_plain_names_and_canonical_variants():
    assert parse_system("wim", BASE).name == "wim" and parse_system("refine", BASE).overrides == ()
    spec = parse_system(" wim[margin_max_new_tokens=32, classification=none] ", BASE)
    assert spec.name == "wim[classification=none,margin_max_new_tokens=32]"  # sorted, spaces dropped
    assert dict(spec.overrides) == {"classification": "none", "margin_max_new_tokens": 32}
    cfg = spec.config(BASE)
    assert cfg.classification == "none" and cfg.margin_max_new_tokens == 32
    assert cfg.segment_tokens == BASE.segment_tokens  # the preset's other settings stay
    assert parse_system("wim[classification=none,margin_max_new_tokens=32]", BASE) == spec


def test_values_take_the_fields_types():
    spec = parse_system("wim[keep_unknown_verdicts=TRUE,segment_tokens=None,margin_batch_size=1]", BASE)
    assert dict(spec.overrides) == {"keep_unknown_verdicts": True, "segment_tokens": None, "margin_batch_size": 1}
    assert spec.name == "wim[keep_unknown_verdicts=true,margin_batch_size=1,segment_tokens=none]"
    assert parse_system(spec.name, BASE) == spec  # names round-trip


def test_settings_that_need_each_other():
    spec = parse_system("wim[relevance_threshold=2,classification=pmi,margin_scope=segment]", BASE)
    assert spec.name == "wim[classification=pmi,margin_scope=segment,relevance_threshold=2.0]"
    cfg = spec.config(BASE)
    assert (cfg.classification, cfg.relevance_threshold, cfg.margin_scope) == ("pmi", 2.0, "segment")


def test_margin_mode_is_a_variant():
    spec = parse_system("wim[quote_min_tokens=6,margin_mode=quote]", BASE)
    assert spec.name == "wim[margin_mode=quote,quote_min_tokens=6]"
    cfg = spec.config(BASE)
    assert (cfg.margin_mode, cfg.quote_min_tokens) == ("quote", 6) and BASE.margin_mode == "free"
    with pytest.raises(ValueError, match="margin_mode"):
        parse_system("wim[margin_mode=paraphrase]", BASE)
    with pytest.raises(ValueError, match="inline"):
        parse_system("wim[margin_mode=quote,classification=inline]", BASE)


def test_ablations_read_with_the_matching_wim_variant():
    assert parse_system("wim_margins_only", BASE).reads_with == "wim"
    spec = parse_system("rag_classifier[classification=inline]", BASE)
    assert spec.reads_with == "wim[classification=inline]"
    assert parse_system("long_context", BASE).reads_with is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("wimm", "unknown system 'wimm'"),
        ("wim[classifcation=inline]", "WiMConfig has no field 'classifcation'; fields: segment_tokens"),
        ("wim[classification=bogus]", "invalid WiM setting \\(classification: Input should be .*'inline' or 'none'"),
        # checks across fields, on all the overrides together
        ("wim[classification=inline,relevance_threshold=0.5]", "relevance_threshold applies to the score-based"),
        ("wim[classification=lexical,relevance_threshold=3]", "out of range for 'lexical'"),
        ("wim[margin_max_new_tokens=0]", "margin_max_new_tokens: Input should be greater than or equal to 1"),
        ("wim[margin_max_new_tokens=lots]", "margin_max_new_tokens: Input should be a valid integer"),
        ("wim[classification]", "'classification' is not field=value"),
        ("wim[]", "empty \\[...\\]"),
        ("wim[classification=inline,classification=none]", "'classification' is set twice"),
        ("wim[sampling=1]", "'sampling' is a nested setting"),
        ("refine[classification=inline]", "only wim, wim_margins_only, rag_classifier take WiM settings"),
        ("wim[classification=inline", "unknown system"),
    ],
)
def test_bad_names_say_what_is_wrong(name, message):
    with pytest.raises(ValueError, match=message):
        parse_system(name, BASE)


def test_split_and_order():
    names = split_names(["rag_classifier,wim[classification=none,margin_max_new_tokens=32]", "long_context", "wim"])
    assert names == ["rag_classifier", "wim[classification=none,margin_max_new_tokens=32]", "long_context", "wim"]
    specs = parse_systems([*names, "wim"], BASE)  # duplicates dropped; WiM variants before the ablations
    assert [s.name for s in specs] == [
        "long_context",
        "wim[classification=none,margin_max_new_tokens=32]",
        "wim",
        "rag_classifier",
    ]
    with pytest.raises(ValueError, match="no systems"):
        parse_systems([], BASE)
    # Reports order recorded names by base system, plain name first, even names this version cannot validate.
    assert system_order(["wim[x=1]", "refine", "wim", "long_context", "wim[a=2]"]) == [
        "long_context",
        "wim",
        "wim[a=2]",
        "wim[x=1]",
        "refine",
    ]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--systems", "wim[classification=bogus]"], "invalid WiM setting"),
        (["--systems", "long_context,nope"], "unknown system 'nope'"),
        (["--tasks", "needle,haystack"], "unknown task kind"),
        (["--systems", "wim[classification=auxiliary]"], "classify with an auxiliary model: pass --classifier-model"),
    ],
)
def test_cli_rejects_bad_input_before_loading_a_model(argv, message, monkeypatch, capsys):
    monkeypatch.setattr(cli, "_load_backend", lambda _m: pytest.fail("the model must not load for bad input"))
    with pytest.raises(SystemExit) as exc:
        cli.main(["run", "--preset", "medium", *argv])
    assert exc.value.code == 2 and message in capsys.readouterr().err


def test_cli_runs_the_selected_tasks_and_systems(monkeypatch, tmp_path):
    calls = {}

    def load(model: str) -> _FakeBackend:
        calls["model"] = model
        return _FakeBackend()

    monkeypatch.setattr(cli, "_load_backend", load)
    monkeypatch.setattr(
        cli, "run_benchmark", lambda backend, tasks, out, **kw: calls.update(tasks=tasks, out=out, **kw)
    )
    argv = ["run", "--preset", "medium", "--ids", "multihop-*", "needle-L4608-d0.25-s1", "--no-progress"]
    argv += ["--systems", "long_context", "wim[classification=inline]", "--out", str(tmp_path / "r.jsonl")]
    assert cli.main(argv) == 0
    assert [t.id for t in calls["tasks"]] == [  # in the preset's order
        "multihop-L4608-s0",
        "needle-L4608-d0.25-s1",
        "multihop-L4608-s1",
        "multihop-L4608-s2",
    ]
    assert calls["systems"] == ["long_context", "wim[classification=inline]"] and calls["preset_name"] == "medium"
    assert calls["model"] == "default" and calls["out"] == tmp_path / "r.jsonl"


class _FakeBackend:
    name = "fake"

    @staticmethod
    def encode_text(text: str) -> list[str]:
        return text.split()


def _words(text: str) -> int:
    return len(text.split())


def test_select_tasks_by_id_or_pattern():
    tasks = make_tasks(_words, [500], [0.25, 0.75], seeds=[0, 1])
    assert [t.id for t in select_tasks(tasks, ["needle-L500-d0.75-s1"])] == ["needle-L500-d0.75-s1"]
    assert [t.id for t in select_tasks(tasks, ["*-s0", "location-*"])] == [
        "needle-L500-d0.25-s0",
        "needle-L500-d0.75-s0",
        "multihop-L500-s0",
        "location-L500-s0",
        "cwe-L500-s0",
        "location-L500-s1",
    ]
    with pytest.raises(ValueError, match=r"no task id matches \['needle-L999-\*'\]; this preset's ids: needle-L500"):
        select_tasks(tasks, ["needle-L999-*"])


def test_medium_preset_shape():
    preset = PRESETS["medium"]
    tasks = build_tasks(_FakeBackend(), preset)
    assert len(tasks) == 12 and {t.seed for t in tasks} == {0, 1, 2}
    assert {t.kind for t in tasks} == {"needle", "multihop", "location"}
    assert sorted({t.depth for t in tasks if t.kind == "needle"}) == [0.25, 0.75]
    assert all(4000 <= t.n_tokens <= 6000 for t in tasks)
    assert preset.wim_config().segment_tokens is None  # the model's default segment size (1024 for SmolLM2)
