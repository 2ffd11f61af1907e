"""The ``sentiment`` package: VADER with the lexicons that ship in the vaderSentiment wheel."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelmarket.demo._files import (
    copy_tree,
    decimal4,
    manifest,
    spec_for,
    tensor,
    write_json,
    write_manifest,
)
from modelmarket.runtime.base import ModelSpec, bytes_tensor

LEXICONS = ("vader_lexicon.txt", "emoji_utf8_lexicon.txt")
EXAMPLES = ("I love this marketplace, it is wonderful!", "The service was slow and awful.")

# A small hand-written sanity set: it checks that the packaged lexicons load and score; it is not a benchmark.
SANITY_SET: tuple[tuple[str, str], ...] = (
    ("I love this product, it works wonderfully.", "positive"),
    ("What a great and friendly team!", "positive"),
    ("The results are excellent and the price is fair.", "positive"),
    ("Thanks, this made my day :)", "positive"),
    ("This is the worst service I have ever used.", "negative"),
    ("The update is terrible and keeps crashing.", "negative"),
    ("I hate waiting so long for an answer.", "negative"),
    ("Sadly the package arrived broken.", "negative"),
    ("The meeting is on Tuesday at ten.", "neutral"),
    ("The file contains three columns.", "neutral"),
    ("She moved to another city last year.", "neutral"),
    ("The train leaves from platform four.", "neutral"),
)


def sanity_accuracy(spec: ModelSpec) -> float:
    """Share of ``SANITY_SET`` labelled as expected by the packaged model, run through the vader runtime."""
    from modelmarket.runtime.runtimes.vader import VaderRuntime

    runtime = VaderRuntime(spec)
    runtime.load()
    texts = bytes_tensor("text", [text.encode("utf-8") for text, _ in SANITY_SET])
    labels = next(t.data for t in runtime.predict([texts], {}) if t.name == "label")
    expected = [label.encode("ascii") for _, label in SANITY_SET]
    got: list[bytes] = labels.tolist()
    return sum(g == want for g, want in zip(got, expected, strict=True)) / len(expected)


def build_sentiment(package_dir: Path, examples_dir: Path, progress: Callable[[str], None]) -> Path:
    """Write the package and ``examples/sentiment.json``."""
    import vaderSentiment

    progress("sentiment: packaging the VADER lexicons")
    source = Path(vaderSentiment.__file__).parent
    for name in LEXICONS:
        copy_tree(source / name, package_dir / name)
    doc = manifest(
        name="sentiment",
        task="text-classification",
        modality="text",
        runtime="vader",
        license_id="MIT",
        artifacts=LEXICONS,
        parameters={"lexicon": LEXICONS[0], "emoji_lexicon": LEXICONS[1]},
        inputs=[tensor("text", "BYTES", [-1])],
        outputs=[tensor("scores", "FP32", [-1, 4]), tensor("label", "BYTES", [-1])],
        unit="tokens_1k",
        price_per_iu="0.0200",
    )
    accuracy = sanity_accuracy(spec_for(package_dir, doc))
    progress(f"sentiment: sanity-set accuracy {accuracy:.4f}")
    doc["card"] = _card(accuracy)
    write_manifest(package_dir, doc)
    texts = {"name": "text", "datatype": "BYTES", "shape": [len(EXAMPLES)], "data": list(EXAMPLES)}
    write_json(examples_dir / "sentiment.json", {"id": "sentiment-example", "inputs": [texts]})
    return package_dir


def _card(accuracy: float) -> dict[str, Any]:
    return {
        "summary": "Rule-based English sentiment (VADER): negative, neutral, positive and a compound score.",
        "description": (
            "VADER (Valence Aware Dictionary and sEntiment Reasoner) scores text with a human-rated lexicon "
            "of words, emoticons and emoji plus rules for negation, intensifiers, punctuation and capitals. "
            "Outputs the neg/neu/pos proportions, the normalised compound score in [-1, 1] and a label "
            "(positive if compound >= 0.05, negative if <= -0.05, else neutral)."
        ),
        "intended_use": "Short English texts such as reviews, support messages and social media posts.",
        "limitations": (
            "English only; no learning, so domain words missing from the lexicon count as neutral; sarcasm "
            "and long documents are scored poorly."
        ),
        "training_data": (
            "No training: the lexicon was rated by human annotators (Hutto and Gilbert, ICWSM 2014) and "
            "ships with the vaderSentiment package."
        ),
        "evaluation_data": (
            f"A {len(SANITY_SET)}-sentence hand-written sanity set (4 per label, in "
            "modelmarket.demo._sentiment); a smoke check, not a benchmark."
        ),
        "metrics": [{"name": "sanity_accuracy", "value": decimal4(accuracy), "dataset": "demo sentiment sanity set"}],
    }
