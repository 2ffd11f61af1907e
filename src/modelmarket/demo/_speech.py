"""The ``speech-to-text`` package: pocketsphinx with the en-us model that ships in its wheel."""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
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
EXAMPLE_WAV = "examples/hello.wav"
"""The spoken example inside the package: the publish gate's smoke test sends it and expects its transcript."""
_S3_MAGIC = 0x11223344


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


def _s3_ints(path: Path, count: int) -> tuple[int, ...]:
    """The first ``count`` int32 values after the text header of a Sphinx-3 binary model file."""
    data = path.read_bytes()
    start = data.index(b"endhdr\n") + len(b"endhdr\n")
    (magic,) = struct.unpack_from("<I", data, start)
    order = "<" if magic == _S3_MAGIC else ">"
    return struct.unpack_from(f"{order}{count}i", data, start + 4)


def _sendump_weights(path: Path) -> int:
    """Mixture weights in a PocketSphinx ``sendump``: codewords x senones x feature streams."""
    data = path.read_bytes()
    pos, streams = 0, 1
    while True:
        (length,) = struct.unpack_from("<i", data, pos)
        pos += 4
        if length == 0:
            break
        line = data[pos : pos + length].rstrip(b"\0").decode("latin-1")
        if line.startswith("feature_count "):
            streams = int(line.split()[1])
        pos += length
    codewords, senones = struct.unpack_from("<2i", data, pos)
    return int(codewords * senones * streams)


def acoustic_parameters(hmm: Path) -> int:
    """Parameters of the acoustic model: Gaussian means and variances, mixture weights and transition matrices."""
    gaussians = 0
    for name in ("means", "variances"):
        n_feat = _s3_ints(hmm / name, 2)[1]
        gaussians += _s3_ints(hmm / name, 4 + n_feat)[3 + n_feat]
    transitions = _s3_ints(hmm / "transition_matrices", 4)[3]
    return gaussians + transitions + _sendump_weights(hmm / "sendump")


def build_speech(package_dir: Path, examples_dir: Path, progress: Callable[[str], None]) -> Path:
    """Write the package and ``examples/hello.wav`` (also inside the package, as its smoke-test example); raise
    ``RuntimeError`` when espeak-ng is missing."""
    import pocketsphinx

    progress("speech-to-text: speaking examples/hello.wav with espeak-ng")
    wav = speak(HELLO_TEXT)
    write_bytes(examples_dir / "hello.wav", wav)
    write_bytes(package_dir / EXAMPLE_WAV, wav)
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
        artifacts=(*ARTIFACTS, EXAMPLE_WAV),
        parameters={"hmm": ARTIFACTS[0], "lm": ARTIFACTS[1], "dict": ARTIFACTS[2]},
        inputs=[tensor("audio", "BYTES", [-1])],
        outputs=[tensor("text", "BYTES", [-1])],
        unit="audio_minute",
        price_per_iu="0.0060",
    )
    transcript = transcribe(spec_for(package_dir, doc), wav)
    wer = word_error_rate(HELLO_TEXT, transcript)
    progress(f"speech-to-text: examples/hello.wav -> {transcript!r} (word error rate {wer:.4f})")
    words = sum(1 for line in (package_dir / ARTIFACTS[2]).read_text(encoding="utf-8").splitlines() if line.strip())
    model = ModelFacts(acoustic_parameters(package_dir / ARTIFACTS[0]), words)
    doc["card"] = _card(wer, duration_s=wav_duration_s(wav), transcript=transcript, model=model)
    doc["lineage"] = {
        "datasets": [
            {
                "name": "examples/hello.wav (espeak-ng)",
                "role": "evaluation",
                "path": EXAMPLE_WAV,
                "description": f"espeak-ng (voice {ESPEAK_VOICE}, {ESPEAK_WPM} wpm) saying {HELLO_TEXT!r}",
            }
        ]
    }
    doc["examples"] = [
        {"name": "hello-wav", "inputs": [{"name": "audio", "file": EXAMPLE_WAV}], "expect": {"text": [transcript]}}
    ]
    write_manifest(package_dir, doc)
    return package_dir


@dataclass(frozen=True)
class ModelFacts:
    """Counted in the packaged model files."""

    acoustic_parameters: int
    dictionary_words: int


def _card(wer: float, *, duration_s: float, transcript: str, model: ModelFacts) -> dict[str, Any]:
    return {
        "summary": "English speech recognition with CMU PocketSphinx and its US English model.",
        "description": (
            "PocketSphinx 5 hidden Markov model decoder with the en-us acoustic model, a trigram "
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
            f"{EXAMPLE_WAV}: espeak-ng (voice {ESPEAK_VOICE}, {ESPEAK_WPM} wpm) saying {HELLO_TEXT!r}, "
            f"{duration_s:.2f} s; one synthetic clip, a smoke check, not a benchmark."
        ),
        "metrics": [{"name": "word_error_rate", "value": decimal4(wer), "dataset": f"{EXAMPLE_WAV} (espeak-ng)"}],
        "language": ["en"],
        "tags": ["pocketsphinx", "cmusphinx", "hmm", "speech-recognition"],
        "library_name": "pocketsphinx",
        "details": {
            "developers": [
                "The CMU Sphinx project (Carnegie Mellon University): the PocketSphinx decoder and CMUdict",
                "Alpha Cephei Inc.: the en-us generic acoustic model (2015)",
            ],
            "contact": "The demo-provider account of this marketplace",
            "model_type": "Hidden Markov model speech recogniser with an n-gram language model",
            "architecture": (
                "Features: 13 mel cepstra with deltas and delta-deltas (25 filters, 130-6,800 Hz, batch cepstral "
                "mean normalisation). Acoustic model: phonetically tied mixtures, 42 codebooks of 128 Gaussians "
                "per feature stream shared by 5,126 senones (tied HMM states). A trigram language model "
                f"(en-us.lm.bin) and the CMU pronouncing dictionary ({model.dictionary_words:,} entries) constrain "
                "the search; the PocketSphinx 5 decoder finds the best word sequence."
            ),
            "parameter_count": model.acoustic_parameters,
            "paper": "D. Huggins-Daines et al., PocketSphinx: A Free, Real-Time Continuous Speech Recognition System "
            "for Hand-Held Devices, ICASSP 2006",
        },
        "primary_users": [
            "Developers trying out audio models, pipelines and per-minute billing on the marketplace",
            "Makers of offline voice interfaces with a small, fixed vocabulary",
        ],
        "out_of_scope_uses": [
            "Transcription where errors matter: medical, legal, subtitles or records of what a person said",
            "Languages or accents the US English model does not cover; noisy or far-field recordings",
            "Identifying or profiling speakers",
        ],
        "intended_tasks": [
            "Transcribe one WAV file of short, clear US English speech per element into lower-case words",
            "Feed the sentiment step of the voice-sentiment pipeline",
        ],
        "acceptable_use_policy": (
            "For demonstrations, prototypes and non-critical transcription. Record or transcribe people only with "
            "their consent; have a person check any transcript that something depends on."
        ),
        "factors": {
            "relevant": (
                "Accent and dialect, speaking rate, background noise and reverberation, microphone and sample "
                "rate, vocabulary outside the dictionary and language model, and synthetic versus natural voices."
            ),
            "evaluation": (
                "Only one synthetic US English voice is evaluated (espeak-ng); no accent, noise or speaker group "
                "is measured separately."
            ),
        },
        "quantitative_analyses": (
            f"On {EXAMPLE_WAV} the model transcribes {transcript!r} for the reference {HELLO_TEXT!r} (word error "
            f"rate {decimal4(wer)}). A single clip: no group-level or intersectional analysis is possible."
        ),
        "ethical_considerations": (
            "Recognisers of this kind are known to work worse for some accents and speech patterns, so errors may "
            "fall unevenly on groups of speakers. A voice can identify a person: callers must have the right to "
            "send the recordings they transcribe."
        ),
        "caveats_and_recommendations": (
            "Measure the word error rate on recordings like yours before relying on it; keep clips short and "
            "clean, 16 kHz or more; restrict the vocabulary (a smaller language model or grammar) for command "
            "interfaces; prefer a neural recogniser where accuracy matters."
        ),
        "training": {
            "methodology": (
                "Trained by its authors with SphinxTrain (Baum-Welch estimation of the HMM parameters); the packaged "
                "README says only that it is a generic US English acoustic model trained with the latest "
                "SphinxTrain. No training or adaptation is done here."
            ),
            "data_type": "US English speech with transcripts (acoustic model); English text (language model).",
            "data_provenance": (
                "Not documented in the packaged files. The model ships in the pocketsphinx wheel (BSD-2-Clause) and "
                "is copied from the installed package; nothing is downloaded."
            ),
            "data_curation": "Not documented in the packaged files.",
            "data_size": f"{model.acoustic_parameters:,} acoustic parameters; training data size not documented",
        },
        "compute": {
            "hardware": "Not documented for the original training; decoding runs on one CPU core",
            "training_time": "Not documented; no training here",
        },
        "energy": {"notes": "The original training's energy is not documented; the demo build trains nothing."},
    }
