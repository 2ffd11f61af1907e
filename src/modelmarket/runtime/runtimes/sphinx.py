"""Speech to text with CMU PocketSphinx 5 and its en-us acoustic model, shipped as model artifacts.

Input ``audio`` BYTES [-1], each element a complete WAV file (16-bit PCM, any channel count, any sample rate:
channels are averaged and the signal is resampled linearly to 16 kHz). Output ``text`` BYTES [-1].

Parameters (manifest ``parameters:``):

- ``hmm``: artifact directory of the acoustic model (default ``en-us``)
- ``lm``: artifact path of the language model (default ``en-us.lm.bin``)
- ``dict``: artifact path of the pronunciation dictionary (default ``cmudict-en-us.dict``)
- ``max_audio_s``: longest accepted clip in seconds (default 600)
- ``loglevel``: pocketsphinx log level (default ``ERROR``)
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from pocketsphinx import Decoder

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import Runtime, Tensor, bytes_tensor
from modelmarket.core.wav import read_wav

__all__ = ["DECODER_RATE_HZ", "PocketsphinxRuntime", "pcm16_mono_16k"]

DECODER_RATE_HZ = 16_000
DEFAULT_MAX_AUDIO_S = 600.0


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

    _decoder: Decoder
    _initial_cmn: str
    _lock: threading.Lock
    _max_audio_s: float
    _input_name: str

    def load(self) -> None:
        params = self.spec.parameters
        paths = {
            key: self.spec.artifact(str(params.get(key, default)))
            for key, default in (("hmm", "en-us"), ("lm", "en-us.lm.bin"), ("dict", "cmudict-en-us.dict"))
        }
        for key, path in paths.items():
            if not path.exists():
                raise InvalidInput(f"{key} artifact {path.name!r} of model {self.spec.name!r} is missing")
        self._decoder = Decoder(
            hmm=str(paths["hmm"]),
            lm=str(paths["lm"]),
            dict=str(paths["dict"]),
            samprate=DECODER_RATE_HZ,
            loglevel=str(params.get("loglevel", "ERROR")),
        )
        # The decoder adapts its cepstral mean across utterances; restoring it makes every clip independent.
        self._initial_cmn = self._decoder.get_cmn()
        self._lock = threading.Lock()
        self._max_audio_s = float(params.get("max_audio_s", DEFAULT_MAX_AUDIO_S))
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
        tensor = next((t for t in inputs if t.name == self._input_name), None)
        if tensor is None:
            raise InvalidInput(f"missing input {self._input_name!r}")
        texts: list[bytes] = []
        for index, item in enumerate(tensor.data.reshape(-1)):
            if not isinstance(item, bytes | bytearray):
                raise InvalidInput(f"audio element {index} is {type(item).__name__}, expected WAV bytes")
            try:
                pcm = pcm16_mono_16k(bytes(item), self._max_audio_s)
            except InvalidInput as exc:
                raise InvalidInput(f"audio element {index}: {exc.message}") from None
            texts.append(self._transcribe(pcm))
        return [bytes_tensor("text", texts)]
