"""The ``speech-to-text`` package: pocketsphinx with the en-us model that ships in its wheel."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from modelmarket.core.wav import wav_duration_s
from modelmarket.demo._files import (
    copy_tree,
    decimal4,
    manifest,
    spec_for,
    tensor,
    write_bytes,
    write_manifest,
)
from modelmarket.runtime.base import ModelSpec, bytes_tensor

HELLO_TEXT = "hello world"
ESPEAK_VOICE = "en-us+m3"
ESPEAK_WPM = 160
ESPEAK_TIMEOUT_S = 60.0
ARTIFACTS = ("en-us", "en-us.lm.bin", "cmudict-en-us.dict")


def require_espeak() -> str:
    """Path of the espeak-ng executable; ``RuntimeError`` naming it when it is not installed."""
    espeak = shutil.which("espeak-ng")
    if espeak is None:
        raise RuntimeError(
            "espeak-ng is not installed; it is needed to speak examples/hello.wav "
            "(install the Debian package espeak-ng)"
        )
    return espeak


def speak(text: str) -> bytes:
    """A WAV file of ``text`` spoken by the system's espeak-ng."""
    espeak = require_espeak()
    with tempfile.TemporaryDirectory(prefix="modelmarket-espeak-") as tmp:
        wav_path = Path(tmp) / "speech.wav"
        subprocess.run(
            [espeak, "-v", ESPEAK_VOICE, "-s", str(ESPEAK_WPM), "-w", str(wav_path), text],
            check=True,
            capture_output=True,
            timeout=ESPEAK_TIMEOUT_S,
        )
        return wav_path.read_bytes()


def word_error_rate(reference: str, hypothesis: str) -> float:
    """Word-level Levenshtein distance divided by the number of reference words."""
    ref, hyp = reference.split(), hypothesis.split()
    previous = list(range(len(hyp) + 1))
    for i, ref_word in enumerate(ref, start=1):
        current = [i]
        for j, hyp_word in enumerate(hyp, start=1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word)))
        previous = current
    return previous[-1] / max(len(ref), 1)


def transcribe(spec: ModelSpec, wav: bytes) -> str:
    """Transcript of one WAV file by the packaged model, run through the pocketsphinx runtime."""
    from modelmarket.runtime.runtimes.sphinx import PocketsphinxRuntime

    runtime = PocketsphinxRuntime(spec)
    runtime.load()
    text = next(t.data for t in runtime.predict([bytes_tensor("audio", [wav])], {}) if t.name == "text")
    return bytes(text[0]).decode("utf-8")


def build_speech(package_dir: Path, examples_dir: Path, progress: Callable[[str], None]) -> Path:
    """Write the package and ``examples/hello.wav``; raise ``RuntimeError`` when espeak-ng is missing."""
    import pocketsphinx

    progress("speech-to-text: speaking examples/hello.wav with espeak-ng")
    wav = speak(HELLO_TEXT)
    write_bytes(examples_dir / "hello.wav", wav)
    progress("speech-to-text: packaging the pocketsphinx en-us model")
    source = Path(pocketsphinx.__file__).parent / "model" / "en-us"
    for name in ARTIFACTS:
        copy_tree(source / name, package_dir / name)
    doc = manifest(
        name="speech-to-text",
        task="automatic-speech-recognition",
        modality="audio",
        runtime="pocketsphinx",
        license_id="BSD-2-Clause",
        artifacts=ARTIFACTS,
        parameters={"hmm": ARTIFACTS[0], "lm": ARTIFACTS[1], "dict": ARTIFACTS[2]},
        inputs=[tensor("audio", "BYTES", [-1])],
        outputs=[tensor("text", "BYTES", [-1])],
        unit="audio_minute",
        price_per_iu="0.0060",
    )
    transcript = transcribe(spec_for(package_dir, doc), wav)
    wer = word_error_rate(HELLO_TEXT, transcript)
    progress(f"speech-to-text: examples/hello.wav -> {transcript!r} (word error rate {wer:.4f})")
    doc["card"] = _card(wer, duration_s=wav_duration_s(wav))
    write_manifest(package_dir, doc)
    return package_dir


def _card(wer: float, *, duration_s: float) -> dict[str, Any]:
    return {
        "summary": "English speech recognition with CMU PocketSphinx and its US English model.",
        "description": (
            "PocketSphinx 5 continuous-density HMM decoder with the en-us acoustic model, a trigram "
            "language model and the CMU pronouncing dictionary. Input is one WAV file per element (16-bit "
            "PCM, any sample rate and channel count; downmixed and resampled to 16 kHz mono); output is the "
            "transcript in lower case without punctuation."
        ),
        "intended_use": "Transcribing short, clear US English recordings; offline speech demos.",
        "limitations": (
            "Far less accurate than modern neural recognisers, especially on noisy, accented, synthetic or "
            "conversational speech; English only; no punctuation or casing. Clips longer than 600 s are "
            "refused."
        ),
        "training_data": "The CMU Sphinx en-us generic acoustic and language models from pocketsphinx.",
        "evaluation_data": (
            f"examples/hello.wav: espeak-ng (voice {ESPEAK_VOICE}, {ESPEAK_WPM} wpm) saying {HELLO_TEXT!r}, "
            f"{duration_s:.2f} s; one synthetic clip, a smoke check, not a benchmark."
        ),
        "metrics": [{"name": "word_error_rate", "value": decimal4(wer), "dataset": "examples/hello.wav (espeak-ng)"}],
    }
