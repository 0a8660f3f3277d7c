import pytest

from wim_integrations.classify import parse_verdict, split_inline


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
