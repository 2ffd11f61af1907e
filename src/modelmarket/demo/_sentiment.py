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


def lexicon_entries(path: Path) -> int:
    """Entries of a VADER lexicon file: one token per line, tab-separated from its ratings."""
    return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if "\t" in line)


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
    doc["card"] = _card(accuracy, entries=lexicon_entries(package_dir / LEXICONS[0]))
    doc["lineage"] = {
        "datasets": [
            {
                "name": "VADER sentiment lexicon",
                "role": "other",
                "path": LEXICONS[0],
                "description": "Human-rated valences of words, emoticons, slang and acronyms (Hutto and Gilbert, 2014)",
            }
        ]
    }
    # The publish gate's smoke test: a clearly positive sentence must be labelled positive.
    doc["examples"] = [
        {
            "name": "clearly-positive",
            "inputs": [{"name": "text", "shape": [1], "data": [EXAMPLES[0]]}],
            "expect": {"label": ["positive"]},
        }
    ]
    write_manifest(package_dir, doc)
    texts = {"name": "text", "datatype": "BYTES", "shape": [len(EXAMPLES)], "data": list(EXAMPLES)}
    write_json(examples_dir / "sentiment.json", {"id": "sentiment-example", "inputs": [texts]})
    return package_dir


def _card(accuracy: float, *, entries: int) -> dict[str, Any]:
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
        "language": ["en"],
        "tags": ["sentiment-analysis", "vader", "lexicon", "rule-based"],
        "library_name": "vaderSentiment",
        "details": {
            "developers": ["C.J. Hutto and Eric Gilbert (Georgia Institute of Technology): VADER and its lexicon"],
            "contact": "The demo-provider account of this marketplace",
            "model_type": "Lexicon and rule-based sentiment scorer (no machine learning)",
            "architecture": (
                f"A lexicon of {entries:,} tokens, each with the mean valence (-4 to +4) given by its human raters, "
                "and an emoji lexicon that maps each emoji to words. The text is split into tokens; each token's "
                "valence is adjusted by rules for negation, degree words, 'but', all-capital words and exclamation "
                "marks; the sum is normalised into the compound score and the positive, neutral and negative "
                "proportions. Served by the marketplace's vader runtime (vaderSentiment 3.3)."
            ),
            "parameter_count": entries,
            "paper": (
                "C.J. Hutto and E. Gilbert, VADER: A Parsimonious Rule-based Model for Sentiment Analysis of Social "
                "Media Text, ICWSM 2014"
            ),
        },
        "primary_users": [
            "Developers who need a fast, explainable sentiment score for short English texts",
            "Analysts summarising the mood of reviews, support tickets or social media posts in aggregate",
        ],
        "out_of_scope_uses": [
            "Languages other than English",
            "Judging individual people (employees, applicants, customers) by the sentiment of what they write",
            "Detecting sarcasm, irony, threats or mental-health crises",
        ],
        "intended_tasks": [
            "Label a short English text positive, neutral or negative, with the neg/neu/pos/compound scores",
            "Score the transcript of the voice-sentiment pipeline",
        ],
        "acceptable_use_policy": (
            "Use the scores for aggregate insight or to triage texts for a person to read. Do not use them alone "
            "to make decisions about individuals."
        ),
        "factors": {
            "relevant": (
                "Domain vocabulary (words missing from the lexicon count as neutral), dialect and slang, emoji, "
                "casing and punctuation (used as intensity cues), negation and text length."
            ),
            "evaluation": (
                "The sanity set covers the three labels equally with short, plain sentences; no dialect, domain or "
                "length is evaluated separately."
            ),
        },
        "quantitative_analyses": (
            f"Sanity accuracy {decimal4(accuracy)} on {len(SANITY_SET)} sentences (4 positive, 4 negative, 4 "
            "neutral). Hutto and Gilbert report F1 scores on tweets, movie and product reviews and news editorials "
            "in their paper; they were not re-measured here."
        ),
        "ethical_considerations": (
            "The valences reflect the judgements of the lexicon's raters, so words common in some dialects or "
            "communities may be scored unlike their writers intend. Sentiment scores of what a person writes must "
            "not be used to judge that person."
        ),
        "caveats_and_recommendations": (
            "Check the scores on a sample of your own texts before relying on them; extend the lexicon for your "
            "domain's vocabulary; keep texts short (a sentence or a paragraph) and their casing and punctuation "
            "intact."
        ),
        "training": {
            "methodology": (
                "No training. The lexicon's candidate tokens were rated for valence by ten independent human raters "
                "each (the ratings are in the lexicon file); the rules were derived by the authors from a "
                "qualitative analysis of social media text."
            ),
            "data_type": "English words, emoticons, slang and acronyms with valence ratings; emoji with descriptions.",
            "data_provenance": (
                "Published with VADER by Hutto and Gilbert (2014) and shipped in the vaderSentiment package (MIT); "
                "copied from the installed package, nothing is downloaded."
            ),
            "data_curation": (
                "Per the authors: tokens with a mean rating of zero or ratings too far apart were dropped; the "
                "packaged file is used as published."
            ),
            "data_size": f"{entries:,} rated lexicon entries",
        },
        "compute": {
            "hardware": "None for training (there is none); scoring runs on one CPU core",
            "training_time": "None: no training",
        },
        "energy": {
            "notes": "No training run, so no training energy; scoring a sentence takes well under a millisecond."
        },
    }
