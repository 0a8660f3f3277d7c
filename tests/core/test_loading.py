"""Loading options (models.py, WiM.from_pretrained / from_model_id) and the shared default WiM, on the tiny models."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from wim_integrations import WiM, WiMConfig, WiMInputError, engine, models
from wim_integrations.models import load_backend, load_model_and_tokenizer, resolve_device

CFG = WiMConfig(segment_tokens=160, margin_max_new_tokens=6, answer_max_new_tokens=6, classification="none")
TEXT = "Mary went to the kitchen. The secret code is 4417. " * 8


def test_dtype_auto_keeps_the_checkpoint_dtype_but_bf16_on_cpu_falls_back(tiny_model_dirs, tmp_path):
    llama = tiny_model_dirs["llama"]
    model, _ = load_model_and_tokenizer(llama)
    assert model.dtype == torch.float32
    bf16_dir = tmp_path / "bf16"
    AutoModelForCausalLM.from_pretrained(llama, dtype=torch.bfloat16).save_pretrained(bf16_dir)
    for f in llama.glob("*token*"):
        shutil.copy(f, bf16_dir)
    auto, _ = load_model_and_tokenizer(bf16_dir)  # "auto": bf16 checkpoint, measured slow to decode on the CPU
    assert auto.dtype == torch.float32
    kept, _ = load_model_and_tokenizer(bf16_dir, dtype="bfloat16")  # an explicit dtype is used as given
    assert kept.dtype == torch.bfloat16
    half, _ = load_model_and_tokenizer(llama, dtype=torch.float16)
    assert half.dtype == torch.float16


def test_loading_options_follow_the_hf_conventions(tiny_model_dirs):
    llama = tiny_model_dirs["llama"]
    assert resolve_device(-1) == "cpu" and resolve_device(0) == "cuda:0" and resolve_device("cpu") == "cpu"
    with pytest.raises(WiMInputError, match="-1"):
        resolve_device(-2)
    model, tok = load_model_and_tokenizer(
        llama, device=-1, model_kwargs={"attn_implementation": "eager"}, tokenizer_kwargs={"model_max_length": 77}
    )
    assert model.device.type == "cpu" and model.config._attn_implementation == "eager"
    assert tok.model_max_length == 77
    wim = WiM.from_model_id(str(llama), device=-1, model_kwargs={"attn_implementation": "eager"}, config=CFG)
    assert wim.backend.model.config._attn_implementation == "eager" and wim.config == CFG
    with pytest.raises(WiMInputError, match="not both"):
        load_model_and_tokenizer(llama, device="cpu", device_map="cpu")
    with pytest.raises(WiMInputError, match="own options"):
        load_model_and_tokenizer(llama, model_kwargs={"torch_dtype": torch.float16})
    with pytest.raises(WiMInputError, match="not a torch dtype"):
        load_model_and_tokenizer(llama, dtype="float99")


def test_an_already_loaded_model_and_tokenizer(tiny_model_dirs, tiny_backends):
    llama = tiny_model_dirs["llama"]
    model = AutoModelForCausalLM.from_pretrained(llama)
    tokenizer = AutoTokenizer.from_pretrained(llama)
    wim = WiM.from_pretrained(model, tokenizer=tokenizer, config=CFG)
    assert wim.backend.model is model and wim.backend.tokenizer is tokenizer
    reference = WiM(tiny_backends["llama"], config=CFG).run(TEXT, "What is the code?")
    result = wim.run(TEXT, "What is the code?")
    assert (result.answer, [m.text for m in result.margins]) == (
        reference.answer,
        [m.text for m in reference.margins],
    )
    with pytest.raises(WiMInputError, match="tokenizer"):
        load_backend(model)
    with pytest.raises(WiMInputError, match="used as it is"):
        load_backend(model, tokenizer=tokenizer, dtype="bfloat16")
    # A directory with a tokenizer from elsewhere (here: the same one, by path).
    assert WiM.from_pretrained(str(llama), tokenizer=str(llama)).backend.tokenizer.vocab_size == tokenizer.vocab_size


@pytest.fixture
def fake_default(monkeypatch, tiny_backends):
    """`WiM.default()` on the tiny Llama, counting loads; the process registry is emptied around the test."""
    loads: list[dict] = []

    def load(progress=None, **options):
        loads.append(options)
        return tiny_backends["llama"] if not options else load_backend(tiny_backends["llama"].model.name_or_path)

    monkeypatch.setattr(models, "load_default_backend", load)
    monkeypatch.setattr(engine, "_default_wims", {})
    monkeypatch.setattr(engine, "_default_backends", {})
    return loads


def test_default_is_one_shared_wim_per_settings(fake_default):
    a = WiM.default()
    assert WiM.default() is a and WiM.default(config=WiMConfig()) is a
    other = WiM.default(config=CFG)
    assert other is not a and other.backend is a.backend and other.config == CFG  # same weights, other settings
    assert len(fake_default) == 1
    assert WiM.default(dtype="float32") is not a and len(fake_default) == 2  # other load options: another load


def test_default_loads_once_under_concurrency(fake_default):
    got: list[WiM] = []
    threads = [threading.Thread(target=lambda: got.append(WiM.default())) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(got) == 6 and all(w is got[0] for w in got) and len(fake_default) == 1


def test_adapters_share_the_default(fake_default):
    from wim_integrations.llamaindex import WiMLLM, WiMNodePostprocessor, WiMSynthesizer

    shared = WiM.default()
    assert WiMLLM().wim is shared and WiMSynthesizer().wim is shared and WiMNodePostprocessor().wim is shared
    assert len(fake_default) == 1


def test_with_options_shares_the_model(tiny_wim):
    from wim_integrations import DocumentCache

    cache = DocumentCache()
    other = tiny_wim.with_options(config=CFG, document_cache=cache)
    assert other.backend is tiny_wim.backend and other.config == CFG and other.document_cache is cache
    assert other.prompts is tiny_wim.prompts and tiny_wim.config != CFG  # the original is unchanged


@pytest.mark.slow
def test_embedded_default_is_shared_across_adapters():
    from wim_integrations.llamaindex import WiMLLM, WiMSynthesizer

    wim = WiM.default()
    assert WiM.default() is wim and WiMLLM().wim is wim and WiMSynthesizer().wim is wim
    assert wim.backend.model.dtype == torch.float32
