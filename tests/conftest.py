"""Session fixtures: tiny random-weight Llama / Qwen2 / Phi-3 models with a small BPE tokenizer and a chat
template, built offline in a few seconds. They write nonsense, which is all the equivalence tests need."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    Phi3Config,
    Phi3ForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

CORPUS = [
    "The quick brown fox jumps over the lazy dog. Where is Mary? Mary went to the kitchen.",
    "A long document is split into segments. After each segment the model writes a margin note.",
    "Question: what is the secret code? Answer: the secret code is 4417. YES# NO# relevant irrelevant",
    "Paris is the capital of France. Berlin is the capital of Germany. Numbers 0 1 2 3 4 5 6 7 8 9.",
    "Read the text carefully, part by part; then answer the question using the margin notes.",
    "Café, naïve, 東京, emoji 🙂 — unicode text must survive segmentation exactly.",
]

MODEL_KINDS = ("llama", "qwen2", "phi3")


def _build_tokenizer(path: Path) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1000, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    # The summary templates came later: leaving them out keeps this tokenizer, and so every tiny model's greedy
    # output that other tests pin down, as it was.
    later = {"note_instruction", "final_report", "no_notes"}
    templates = [
        f.read_text() for f in sorted((Path(__file__).parents[1] / "templates").glob("*.txt")) if f.stem not in later
    ]
    tok.train_from_iterator((CORPUS + templates) * 20, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        bos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=SPECIALS[1:],
    )
    fast.chat_template = CHATML
    fast.save_pretrained(path)
    return fast


def _build_model(kind: str, vocab: int, eos_ids: list[int], path: Path) -> None:
    torch.manual_seed({"llama": 0, "qwen2": 1, "phi3": 2}[kind])
    # A large init range makes logits peaked, so greedy decoding has no near-ties that float noise could flip.
    common = dict(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        initializer_range=0.2,
        tie_word_embeddings=False,
        eos_token_id=eos_ids,
        bos_token_id=eos_ids[-1],
        pad_token_id=eos_ids[-1],
    )
    if kind == "llama":
        model = LlamaForCausalLM(LlamaConfig(**common))
    elif kind == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**common, use_sliding_window=False))
    else:
        model = Phi3ForCausalLM(Phi3Config(**common, sliding_window=None, pad_token_id_=None))
    model.generation_config = GenerationConfig(
        eos_token_id=eos_ids, bos_token_id=eos_ids[-1], pad_token_id=eos_ids[-1], do_sample=False
    )
    model.save_pretrained(path)


@pytest.fixture(scope="session")
def tiny_model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """{kind: directory} of saved tiny models sharing one tokenizer; two eos ids (<|im_end|>, <|endoftext|>)."""
    root = tmp_path_factory.mktemp("tiny-models")
    dirs = {}
    for kind in MODEL_KINDS:
        d = root / kind
        tok = _build_tokenizer(d)
        eos = [tok.convert_tokens_to_ids("<|im_end|>"), tok.convert_tokens_to_ids("<|endoftext|>")]
        _build_model(kind, len(tok), eos, d)
        dirs[kind] = d
    return dirs


@pytest.fixture(scope="session")
def tiny_backends(tiny_model_dirs: dict[str, Path]):
    from wim_integrations.models import load_backend

    return {kind: load_backend(path) for kind, path in tiny_model_dirs.items()}


@pytest.fixture(params=MODEL_KINDS)
def tiny_backend(request: pytest.FixtureRequest, tiny_backends):
    return tiny_backends[request.param]


@pytest.fixture(scope="session")
def tiny_wim(tiny_backends):
    """A WiM on the tiny Llama with small budgets, for fast adapter tests."""
    from wim_integrations import WiM, WiMConfig

    # The adapter tests follow a model-judged run (classification child runs, verdict replies); score-based
    # classification (the default) is tested in tests/core/test_relevance.py and where an adapter sets it.
    cfg = WiMConfig(
        segment_tokens=160,
        margin_max_new_tokens=8,
        answer_max_new_tokens=8,
        classifier_max_new_tokens=3,
        classification="same_model",
        margin_batch_size=1,  # the step-by-step loop: one child run after another (groups: test_grouped_runs.py)
    )
    # Adapter tests compare with an engine run on the same document: a document cache would make the second a hit
    # (same margins and answer, fewer prompt tokens). Adapters with a document cache are tested where they set one.
    return WiM(tiny_backends["llama"], config=cfg, document_cache=None)


@pytest.fixture(scope="session")
def default_wim():
    """WiM on the embedded SmolLM2 (slow tests only)."""
    from wim_integrations import WiM

    return WiM.default()


@pytest.fixture(scope="session")
def served_model():
    """(GGUF file a llama.cpp server loads, local tokenizer directory WiM encodes with): the embedded SmolLM2."""
    from wim_integrations.models import default_gguf_path, ensure_default_converted

    return default_gguf_path(), ensure_default_converted()


@pytest.fixture(scope="session")
def llama_server(served_model):
    """A real `llama-server` (scripts/build_llama_server.sh) serving the embedded model on 127.0.0.1 for the session.
    Without the binary its tests skip, unless WIM_REQUIRE_LLAMA_SERVER=1 (CI) makes that a failure."""
    from llama_cpp_agreement import require_llama_server

    from wim_integrations.backends.llama_server import LlamaServer

    require_llama_server()
    # One slot: every request of a run goes to it, so prefix reuse is as WiM plans it; no RAM prompt cache, so a
    # prefix is either in the slot or computed again (never restored from host memory); two threads and llama.cpp's
    # default batch sizes named, so the kernels and their split do not follow the machine. What stays
    # nondeterministic, and how the tests compare runs for it: tests/llama_cpp_agreement.py.
    server_args = ("--cache-ram", "0", "--batch-size", "2048", "--ubatch-size", "512")
    with LlamaServer(served_model[0], context=8192, slots=1, threads=2, extra_args=server_args) as server:
        yield server


_SERVER_STARTS: dict[str, float] = {}  # server -> seconds its start took, printed at the end (what CI pays for it)


def pytest_terminal_summary(terminalreporter) -> None:
    for name, seconds in _SERVER_STARTS.items():
        terminalreporter.write_line(f"{name} server started in {seconds:.0f} s")


@pytest.fixture(scope="session")
def vllm_server(served_model):
    """A real vLLM server (its CPU build, in .venv-vllm from scripts/setup_vllm.sh) serving the embedded model's
    converted safetensors directory on 127.0.0.1 for the session. Without that venv its tests skip, unless
    WIM_REQUIRE_VLLM=1 (CI) makes that a failure. Start: about 1.5 min on 2 idle cores; bounded at 10 min."""
    from wim_integrations.backends.vllm_server import VLLMServer, find_vllm_python

    if find_vllm_python() is None:
        if os.environ.get("WIM_REQUIRE_VLLM") == "1":
            pytest.fail("vLLM is required here (WIM_REQUIRE_VLLM=1): run scripts/setup_vllm.sh")
        pytest.skip("vLLM not set up (scripts/setup_vllm.sh)")
    # float32 as in process; dev mode for /reset_prefix_cache (loopback only), which the cold-start tests need.
    with VLLMServer(served_model[1], dev_mode=True, max_model_len=8192, dtype="float32") as server:
        _SERVER_STARTS["vLLM"] = server.started_in or 0.0
        yield server


@pytest.fixture(scope="session")
def llamacpp_backend():
    """The llama.cpp backend in process (llama-cpp-python, scripts/build_llama_cpp_python.sh) on the embedded GGUF,
    two threads. Without the binding its tests skip, unless WIM_REQUIRE_LLAMA_CPP=1 (CI) makes that a failure."""
    from wim_integrations.extras import missing_modules

    if missing_modules("llamacpp"):
        if os.environ.get("WIM_REQUIRE_LLAMA_CPP") == "1":
            pytest.fail(
                "llama-cpp-python is required here (WIM_REQUIRE_LLAMA_CPP=1): scripts/build_llama_cpp_python.sh"
            )
        pytest.skip("llama-cpp-python not installed (scripts/build_llama_cpp_python.sh)")
    from wim_integrations.llamacpp_models import load_gguf_backend
    from wim_integrations.models import default_gguf_path

    backend = load_gguf_backend(default_gguf_path(), n_ctx=8192, n_threads=2)
    yield backend
    backend.close()


def _llama_cpp_backend(request: pytest.FixtureRequest):
    from wim_integrations.backends.server import ServerBackend

    server, (_, tokenizer) = request.getfixturevalue("llama_server"), request.getfixturevalue("served_model")
    backend = ServerBackend(server.url, tokenizer=tokenizer, engine="llama.cpp")
    request.addfinalizer(backend.close)
    return backend


# The backends the fault suite (tests/core/test_faults.py) runs on: name -> factory(request) -> backend. A new backend
# plugs in with one entry here; "llama.cpp-server" is the serving backend on a real llama-server (slow: the embedded
# model). The vLLM server is left out for CI's time: its transport faults are tests/server/test_server_faults.py's.
FAULT_BACKENDS = {
    "hf-llama": lambda request: request.getfixturevalue("tiny_backends")["llama"],
    "hf-qwen2": lambda request: request.getfixturevalue("tiny_backends")["qwen2"],
    "llama.cpp-server": _llama_cpp_backend,
    "llama.cpp-inproc": lambda request: request.getfixturevalue("llamacpp_backend"),
}
_SLOW_BACKENDS = {"llama.cpp-server": (pytest.mark.slow,), "llama.cpp-inproc": (pytest.mark.slow,)}


@pytest.fixture(params=[pytest.param(n, marks=_SLOW_BACKENDS.get(n, ())) for n in sorted(FAULT_BACKENDS)])
def fault_backend(request: pytest.FixtureRequest):
    return FAULT_BACKENDS[request.param](request)


@pytest.fixture
def assert_same_runs(fault_backend):
    """assert_same_runs(wim, context, question, a, b): two results of the same run agree as far as the backend
    promises. In process (transformers, fixed kernels, peaked tiny models): margins, verdicts and answer equal. On a
    llama.cpp server, whose cache state changes the float sums (tests/llama_cpp_agreement.py): equal up to near-ties."""
    from wim_integrations.backends.server import ServerBackend

    def same(wim, context, question, a, b) -> None:
        if isinstance(fault_backend, ServerBackend):
            from llama_cpp_agreement import assert_same_run

            assert_same_run(fault_backend.client.base_url, wim, wim.plan(context, question), a, b)
            return
        if type(fault_backend).__name__ == "LlamaCppBackend":  # in process: the same promise as the server's
            from llama_cpp_agreement import assert_same_run_inproc

            assert_same_run_inproc(fault_backend, wim, wim.plan(context, question), a, b)
            return
        summary = [(r.answer, [(m.text, m.verdict) for m in r.margins], r.segments_read) for r in (a, b)]
        assert summary[0] == summary[1]

    return same
