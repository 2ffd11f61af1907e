"""Speech to text with CMU PocketSphinx 5 and its en-us acoustic model, shipped as model artifacts.

Input ``audio`` BYTES [-1], each element a complete WAV file (16-bit PCM, any channel count, any sample rate:
channels are averaged and the signal is resampled linearly to 16 kHz). Output ``text`` BYTES [-1].

Parameters (manifest ``parameters:``):

- ``hmm``: artifact folder of the acoustic model (default ``en-us``)
- ``lm``: artifact path of the language model (default ``en-us.lm.bin``)
- ``dict``: artifact path of the pronunciation dictionary (default ``cmudict-en-us.dict``)
- ``max_audio_s``: longest accepted clip in seconds, at most ``MAX_AUDIO_S_PER_ELEMENT`` (the default)
- ``loglevel``: pocketsphinx log level, one of ``LOG_LEVELS`` (default ``ERROR``)

The three paths must be among the version's artifacts.

Bounds on one call (``PocketsphinxRuntime.input_limits``, and the durations, which need the WAV header).
Decoding time depends on what the audio holds, not only its length: measured on the 2-core development machine
(shared, so with noise), speech decodes at 0.4-0.5x real time, silence at 0.1x, but white noise at 1.3-1.8x and
random tones at 1.6-2.9x for 10 s clips, and super-linearly beyond (20 s of tones: 88 s). So:

- ``MAX_AUDIO_S_PER_ELEMENT`` = 10 s per clip: worst clip about 20-30 s of decoding;
- ``MAX_AUDIO_S_PER_CALL`` = 30 s over all clips of one call;
- ``MAX_ELEMENTS_PER_CALL`` = 16 clips; ``MAX_ELEMENT_BYTES`` = 8 MiB (10 s of 16-bit stereo at 192 kHz) and
  ``MAX_CALL_BYTES`` = 24 MiB, checks the gateway can make before decoding.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pocketsphinx import Decoder

from modelmarket.core.errors import InvalidInput
from modelmarket.core.wav import read_wav
from modelmarket.runtime.base import (
    InputLimits,
    Runtime,
    Tensor,
    artifact_parameter,
    bytes_tensor,
    number_parameter,
    text_parameter,
)

__all__ = [
    "DECODER_RATE_HZ",
    "MAX_AUDIO_S_PER_CALL",
    "MAX_AUDIO_S_PER_ELEMENT",
    "PocketsphinxRuntime",
    "pcm16_mono_16k",
]

DECODER_RATE_HZ = 16_000
_PCM_BYTES_PER_S = DECODER_RATE_HZ * 2  # 16-bit mono
MAX_AUDIO_S_PER_ELEMENT = 10.0
MAX_AUDIO_S_PER_CALL = 30.0
MAX_ELEMENTS_PER_CALL = 16
MAX_ELEMENT_BYTES = 8 * 1024 * 1024
MAX_CALL_BYTES = 3 * MAX_ELEMENT_BYTES
DEFAULT_MAX_AUDIO_S = MAX_AUDIO_S_PER_ELEMENT
LOG_LEVELS = ("DEBUG", "INFO", "WARN", "ERROR", "FATAL")
_ARTIFACT_PARAMETERS = (("hmm", "en-us", True), ("lm", "en-us.lm.bin", False), ("dict", "cmudict-en-us.dict", False))


def _resample_linear(samples: npt.NDArray[np.float64], rate_hz: int) -> npt.NDArray[np.float64]:
    if rate_hz == DECODER_RATE_HZ or samples.size == 0:
        return samples
    n_out = round(samples.size * DECODER_RATE_HZ / rate_hz)
    positions = np.arange(n_out, dtype=np.float64) * (rate_hz / DECODER_RATE_HZ)
    return np.interp(positions, np.arange(samples.size, dtype=np.float64), samples)


def pcm16_mono_16k(data: bytes, max_audio_s: float = DEFAULT_MAX_AUDIO_S) -> bytes:
    """Decode a WAV file to 16 kHz mono 16-bit little-endian PCM. Raise ``InvalidInput`` on unusable audio."""
    audio = read_wav(data)
    if audio.sample_width_bytes != 2:
        raise InvalidInput(f"expected 16-bit PCM WAV, got {audio.sample_width_bytes * 8}-bit samples")
    if audio.duration_s > max_audio_s:
        raise InvalidInput(f"audio is {audio.duration_s:.1f} s long; the limit is {max_audio_s:g} s")
    samples = np.frombuffer(audio.frames, dtype="<i2")
    if audio.channels == 1 and audio.sample_rate_hz == DECODER_RATE_HZ:
        return samples.tobytes()
    mono = samples.reshape(-1, audio.channels).mean(axis=1, dtype=np.float64)
    resampled = _resample_linear(mono, audio.sample_rate_hz)
    return np.clip(np.rint(resampled), -32768, 32767).astype("<i2").tobytes()


class PocketsphinxRuntime(Runtime):
    name: ClassVar[str] = "pocketsphinx"
    parameter_names: ClassVar[frozenset[str]] = frozenset({"hmm", "lm", "dict", "max_audio_s", "loglevel"})
    input_limits: ClassVar[InputLimits] = InputLimits(
        max_elements_per_call=MAX_ELEMENTS_PER_CALL, max_element_bytes=MAX_ELEMENT_BYTES, max_call_bytes=MAX_CALL_BYTES
    )

    _decoder: Decoder
    _initial_cmn: str
    _lock: threading.Lock
    _max_audio_s: float
    _input_name: str

    @classmethod
    def validate_parameters(cls, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        super().validate_parameters(parameters, artifacts)
        for key, default, folder in _ARTIFACT_PARAMETERS:
            artifact_parameter(parameters, key, default, artifacts, folder=folder)
        number_parameter(parameters, "max_audio_s", DEFAULT_MAX_AUDIO_S, 0.0, MAX_AUDIO_S_PER_ELEMENT)
        text_parameter(parameters, "loglevel", "ERROR", LOG_LEVELS)

    def load(self) -> None:
        params = self.spec.parameters
        paths = {
            key: (self.spec.artifact_folder if folder else self.spec.artifact)(params.get(key, default), key)
            for key, default, folder in _ARTIFACT_PARAMETERS
        }
        for key, path in paths.items():
            if not path.exists():
                raise InvalidInput(f"{key} artifact {path.name!r} of model {self.spec.name!r} is missing")
        self._decoder = Decoder(
            hmm=str(paths["hmm"]),
            lm=str(paths["lm"]),
            dict=str(paths["dict"]),
            samprate=DECODER_RATE_HZ,
            loglevel=text_parameter(params, "loglevel", "ERROR", LOG_LEVELS),
        )
        # The decoder adapts its cepstral mean across utterances; restoring it makes every clip independent.
        self._initial_cmn = self._decoder.get_cmn()
        self._lock = threading.Lock()
        self._max_audio_s = number_parameter(params, "max_audio_s", DEFAULT_MAX_AUDIO_S, 0.0, MAX_AUDIO_S_PER_ELEMENT)
        self._input_name = self.spec.inputs[0].name if self.spec.inputs else "audio"

    def _transcribe(self, pcm: bytes) -> bytes:
        if not pcm:
            return b""
        with self._lock:
            self._decoder.set_cmn(self._initial_cmn)
            self._decoder.start_utt()
            self._decoder.process_raw(pcm, full_utt=True)
            self._decoder.end_utt()
            hypothesis = self._decoder.hyp()
        return hypothesis.hypstr.encode("utf-8") if hypothesis is not None else b""

    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        self.check_inputs(inputs)
        tensor = next((t for t in inputs if t.name == self._input_name), None)
        if tensor is None:
            raise InvalidInput(f"missing input {self._input_name!r}")
        clips: list[bytes] = []
        for index, item in enumerate(tensor.data.reshape(-1)):
            if not isinstance(item, bytes | bytearray):
                raise InvalidInput(f"audio element {index} is {type(item).__name__}, expected WAV bytes")
            try:
                clips.append(pcm16_mono_16k(bytes(item), self._max_audio_s))
            except InvalidInput as exc:
                raise InvalidInput(f"audio element {index}: {exc.message}") from None
        total_s = sum(len(pcm) for pcm in clips) / _PCM_BYTES_PER_S
        if total_s > MAX_AUDIO_S_PER_CALL:
            raise InvalidInput(
                f"input {tensor.name!r}: the call holds {total_s:.1f} s of audio; the limit is"
                f" {MAX_AUDIO_S_PER_CALL:g} s per call: send the clips in several calls"
            )
        return [bytes_tensor("text", [self._transcribe(pcm) for pcm in clips])]
