import pytest

from wim_integrations.verdicts import parse_verdict, split_inline, verdict_is_settled


@pytest.mark.parametrize(
    "reply, verdict",
    [
        ("YES", "yes"),
        ("yes", "yes"),
        ("  Yes.", "yes"),
        ("**YES**", "yes"),
        ("`yes`", "yes"),
        ("Answer: yes, because the note names the keeper", "yes"),
        ("# Yes", "yes"),
        ("Relevant", "yes"),
        ("NO", "no"),
        ("no.", "no"),
        ("**No** - it is about boats", "no"),
        ("Not relevant", "no"),
        ("Irrelevant.", "no"),
        ("> no", "no"),
        ("Verdict: NO", "no"),
        ("", "unknown"),
        ("The note is about boats", "unknown"),
        ("Maybe", "unknown"),
        ("nobody knows", "unknown"),
        ("yesterday it rained", "unknown"),
    ],
)
def test_parse_verdict(reply, verdict):
    assert parse_verdict(reply) == verdict


@pytest.mark.parametrize(
    "margin, verdict, text",
    [
        ("YES# The keeper is Ines.", "yes", "The keeper is Ines."),
        ("yes #The keeper is Ines.", "yes", "The keeper is Ines."),
        ("**YES#** The keeper is Ines.", "yes", "The keeper is Ines."),
        ("NO#", "no", ""),
        ("No# nothing here", "no", "nothing here"),
        ("Yes: the keeper is Ines.", "yes", "the keeper is Ines."),
        ("The keeper is Ines.", "unknown", "The keeper is Ines."),
    ],
)
def test_split_inline(margin, verdict, text):
    assert split_inline(margin) == (verdict, text)


@pytest.mark.parametrize(
    "reply, settled",
    [
        ("NO,", True),
        ("Yes.", True),
        ("no\n", True),
        ("**YES** because", True),
        ("Answer: no ", True),
        ("No", False),  # could still become "Nothing"
        ("YES", False),
        ("Not", False),  # "Not relevant" or "Nothing"?
        ("Not relevant", False),
        ("Not relevant.", True),
        ("The note", False),
        ("", False),
    ],
)
def test_verdict_is_settled(reply, settled):
    assert verdict_is_settled(reply) is settled


@pytest.mark.parametrize("reply", ["NO, it is about boats", "Yes. The keeper", "not relevant at all", "**No**\nreason"])
def test_a_settled_prefix_has_the_verdict_of_the_whole_reply(reply):
    prefixes = [reply[:i] for i in range(len(reply) + 1)]
    first = next(p for p in prefixes if verdict_is_settled(p))
    assert parse_verdict(first) == parse_verdict(reply) != "unknown"
    assert all(parse_verdict(p) == parse_verdict(reply) for p in prefixes[len(first) :])
