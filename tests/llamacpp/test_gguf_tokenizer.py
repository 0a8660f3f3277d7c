"""The GGUF's own tokenizer and chat template (llama.cpp + jinja2) against the transformers path on the same model:
the same token ids, offsets, texts and rendered prompts, so WiM builds the same prompts on either backend."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.slow

TEXTS = [
    "Café, naïve, façade — résumé of Zoë's piñata.",
    "東京は日本の首都です。北京是中国的首都。서울은 한국의 수도입니다.",
    "Emoji 🙂👍🏽🇫🇷 and a family 👨‍👩‍👧 in text.",
    'def f(x: int) -> dict[str, int]:\n    return {"x": x ** 2}  # squares\n\tif a != b: pass\n',
    "  leading spaces,\ttabs,\n\nnew lines and trailing   ",
    "Special strings stay text here: <|im_start|>user <|im_end|> <|endoftext|>",
    "Numbers 12345678901234567890 and 3.14159, URLs https://example.org/a?b=c&d=e.",
]


@pytest.fixture(scope="module")
def hf(served_model):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(served_model[1])


@pytest.fixture(scope="module")
def hf_tokens(hf):
    from wim_integrations.backends.tokenizer import HFTokenizer

    return HFTokenizer(hf)


@pytest.fixture(scope="module")
def gguf(llamacpp_backend):
    return llamacpp_backend.tokens


@pytest.mark.parametrize("text", TEXTS)
def test_token_ids_offsets_and_text_equal_the_transformers_tokenizer(gguf, hf_tokens, text):
    ids = gguf.encode_text(text)
    assert ids == hf_tokens.encode_text(text)
    assert gguf.encode_with_offsets(text) == hf_tokens.encode_with_offsets(text)
    assert gguf.decode(ids) == hf_tokens.decode(ids) == text
    step = gguf.stream_decoder()
    assert "".join(s for t in ids if (s := step(t)) is not None) == text


def test_template_text_parses_special_tokens_as_transformers_does(gguf, hf_tokens):
    text = "<|im_start|>user\nHello 世界<|im_end|>\n<|im_start|>assistant\n"
    assert gguf.encode_template(text) == hf_tokens.encode_template(text)
    assert gguf.encode_text(text) == hf_tokens.encode_text(text)
    assert gguf.encode_template(text) != gguf.encode_text(text)


def test_chat_template_from_the_gguf_renders_as_transformers(gguf, hf, hf_tokens):
    assert gguf.chat_template == hf.chat_template
    assert gguf.chat_frame() == hf_tokens.chat_frame()
    for messages in (
        [{"role": "user", "content": "Où est 東京? 🙂"}],
        [
            {"role": "system", "content": "You read documents."},
            {"role": "user", "content": "def f(): pass"},
            {"role": "assistant", "content": "A function."},
            {"role": "user", "content": "And?"},
        ],
    ):
        assert gguf.render_chat(messages) == hf_tokens.render_chat(messages)


def test_stop_ids_and_lower_bound(llamacpp_backend, gguf, hf):
    assert hf.convert_tokens_to_ids("<|im_end|>") in llamacpp_backend.stop_ids
    text = TEXTS[1] * 3
    bound = gguf.min_tokens(len(text.encode()))
    assert bound is not None and 0 < bound <= len(gguf.encode_text(text))
