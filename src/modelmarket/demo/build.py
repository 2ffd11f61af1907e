"""Build the demo model packages (``digits``, ``sentiment``, ``speech-to-text``) and example requests.

Nothing is downloaded: the digits images ship with scikit-learn, the VADER lexicons with vaderSentiment and
the en-us acoustic model with pocketsphinx. The example WAV is spoken by the system's ``espeak-ng``. Every
metric written into a model card is measured here by running the packaged model through its own runtime.

Building is idempotent: fixed seeds and canonical serialisation give byte-identical files on every run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from modelmarket.demo._digits import DIGITS_SEED, DIGITS_TEST_SIZE, build_digits, digits_split
from modelmarket.demo._files import write_bytes, write_json
from modelmarket.demo._sentiment import build_sentiment
from modelmarket.demo._speech import HELLO_TEXT, build_speech, speak

__all__ = ["DIGITS_SEED", "DIGITS_TEST_SIZE", "build_packages", "digits_split"]

PACKAGE_NAMES = ("digits", "sentiment", "speech-to-text")
SENTIMENT_EXAMPLES = ("I love this marketplace, it is wonderful!", "The service was slow and awful.")


def build_packages(out_dir: Path, progress: Callable[[str], None] = print) -> list[Path]:
    """Write the demo packages and ``examples/`` under ``out_dir``; return the package folders.

    ``examples/`` holds ``hello.wav`` (espeak-ng saying "hello world"), ``digit.json`` (an Open Inference
    Protocol request body with one held-out digits image) and ``sentiment.json`` (one with two sentences).
    Raises ``RuntimeError`` when ``espeak-ng`` is not installed.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    hello_wav = _build_examples(out_dir / "examples", progress)
    packages = [
        build_digits(out_dir / "digits", progress),
        build_sentiment(out_dir / "sentiment", progress),
        build_speech(out_dir / "speech-to-text", hello_wav, progress),
    ]
    progress(f"built {len(packages)} model packages in {out_dir}")
    return packages


def _build_examples(examples_dir: Path, progress: Callable[[str], None]) -> Path:
    progress("examples: speaking hello.wav with espeak-ng")
    hello_wav = examples_dir / "hello.wav"
    write_bytes(hello_wav, speak(HELLO_TEXT))
    _, x_test, _, _ = digits_split()
    digit = {"name": "pixels", "datatype": "FP32", "shape": [1, 64], "data": x_test[0].tolist()}
    write_json(examples_dir / "digit.json", {"inputs": [digit]})
    sentences = {
        "name": "text",
        "datatype": "BYTES",
        "shape": [len(SENTIMENT_EXAMPLES)],
        "data": SENTIMENT_EXAMPLES,
    }
    write_json(examples_dir / "sentiment.json", {"inputs": [sentences]})
    return hello_wav
