"""The ``voice-sentiment`` pipeline: ``speech-to-text`` then ``sentiment`` on its transcript (a Resonance Node).

A pipeline package is its manifest alone: no artifacts, no runner. It is published after its step models (the
registry refuses a pipeline whose steps do not resolve), so it comes last in ``build_packages``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelmarket.demo._files import PROVIDER, tensor, write_manifest
from modelmarket.demo._speech import HELLO_TEXT

NAME = "voice-sentiment"
FEE_PER_REQUEST = "0.0010"  # USD, the pipeline's own fee per call, on top of what its steps bill


def build_voice_sentiment(package_dir: Path, progress: Callable[[str], None]) -> Path:
    """Write the package (``modelmarket.yaml`` only). Its example input is ``examples/hello.wav`` (written for
    ``speech-to-text``): an OIP JSON body cannot carry a WAV file, so it is sent with the binary tensor extension
    (see docs/pipelines.md)."""
    progress(f"{NAME}: writing the pipeline manifest (speech-to-text -> sentiment)")
    write_manifest(package_dir, voice_sentiment_manifest())
    return package_dir


def voice_sentiment_manifest() -> dict[str, Any]:
    return {
        "kind": "pipeline",
        "name": NAME,
        "version": "1.0.0",
        "task": "speech-sentiment-analysis",
        "modality": "audio",
        "runtime": "pipeline",
        "provider": PROVIDER,
        "license": "BSD-2-Clause AND MIT",
        "inputs": [tensor("audio", "BYTES", [-1])],
        "outputs": [tensor("text", "BYTES", [-1]), tensor("label", "BYTES", [-1]), tensor("scores", "FP32", [-1, 4])],
        "steps": [
            {"id": "transcribe", "model": "speech-to-text", "inputs": {"audio": "input.audio"}},
            {"id": "classify", "model": "sentiment", "inputs": {"text": "transcribe.text"}},
        ],
        "outputs_from": {"text": "transcribe.text", "label": "classify.label", "scores": "classify.scores"},
        "pricing": {"unit": "request", "price_per_iu": FEE_PER_REQUEST, "currency": "USD"},
        "card": _card(),
    }


def _card() -> dict[str, Any]:
    return {
        "summary": "Sentiment of spoken English: transcribes each WAV file, then labels and scores the transcript.",
        "description": (
            "A pipeline of two published models: speech-to-text (CMU PocketSphinx, en-us) turns each WAV file into "
            "a lower-case transcript, and sentiment (VADER) scores that transcript. Outputs the transcript, the "
            "label (positive, neutral or negative) and the scores (neg, neu, pos, compound). Each call bills both "
            f"steps at their own prices plus this pipeline's fee of {FEE_PER_REQUEST} USD per request, all in "
            "one commit; a call that fails in either step bills nothing."
        ),
        "intended_use": "Gauging the mood of short, clear US English voice messages or recordings.",
        "limitations": (
            "Inherits both steps' limits: recognition errors change the words VADER scores, and the transcript "
            "has no punctuation or casing, which VADER uses as intensity cues; English only; clips longer than "
            "600 s are refused by speech-to-text."
        ),
        "training_data": (
            "No training of its own: the CMU Sphinx en-us acoustic and language models (speech-to-text) and the "
            "human-rated VADER lexicon (sentiment); see those models' cards."
        ),
        "evaluation_data": (
            f"No evaluation of its own: see the step models' cards (speech-to-text is checked on examples/hello.wav, "
            f"espeak-ng saying {HELLO_TEXT!r}; sentiment on a hand-written sanity set)."
        ),
        "language": ["en"],
        "tags": ["pipeline", "speech-recognition", "sentiment-analysis", "pocketsphinx", "vader"],
        "details": {
            "developers": ["The modelmarket demo build (modelmarket.demo._pipeline); the step models' own developers"],
            "contact": "The demo-provider account of this marketplace",
            "model_type": "Pipeline of two published models (speech recognition, then rule-based sentiment)",
            "architecture": (
                "Two steps run by the marketplace's pipeline executor: transcribe (speech-to-text, latest version: "
                "PocketSphinx with the en-us model) takes the pipeline's audio input; classify (sentiment, latest "
                "version: VADER) takes the transcript. The outputs are the transcript and the sentiment label and "
                "scores. No weights of its own."
            ),
        },
        "primary_users": ["Developers trying out pipelines and their billing on the marketplace"],
        "out_of_scope_uses": [
            "Judging people (employees, callers, applicants) by the mood of their voice messages",
            "Emotion recognition from the voice: only the transcribed words are scored, not tone of voice",
            "Noisy, accented or non-English recordings",
        ],
        "intended_tasks": ["Transcribe a short US English WAV recording and label the sentiment of its words"],
        "acceptable_use_policy": (
            "For demonstrations and aggregate, non-critical insight. Record people only with their consent and do "
            "not use the labels alone to make decisions about anyone."
        ),
        "factors": {
            "relevant": (
                "Everything that affects either step: accent, noise and recording quality (recognition errors "
                "change the words scored), and vocabulary missing from the sentiment lexicon."
            ),
            "evaluation": "Not evaluated end to end; see the step models' cards.",
        },
        "quantitative_analyses": (
            "None of its own: the pipeline's quality is bounded by both steps' (see their cards); recognition "
            "errors propagate into the sentiment label."
        ),
        "ethical_considerations": (
            "Combines the risks of both steps: uneven recognition across accents can skew the sentiment attributed "
            "to groups of speakers, and a sentiment label of what a person said invites judging that person."
        ),
        "caveats_and_recommendations": (
            "Read the transcript output alongside the label; measure both steps on recordings like yours before "
            "relying on the pipeline."
        ),
        "training": {
            "methodology": "No training: it composes two published models without changing them.",
            "data_type": "None of its own.",
            "data_provenance": "See the cards of speech-to-text and sentiment.",
            "data_curation": "See the cards of speech-to-text and sentiment.",
        },
        "compute": {
            "hardware": "None for training; each call runs both steps' runners on the CPU",
            "training_time": "None: no training",
        },
        "energy": {"notes": "No training run; serving costs what its two steps cost."},
    }
