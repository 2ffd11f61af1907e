"""WAV parsing with the standard library only.

Metering imports ``wav_duration_s`` to bill audio minutes and the pocketsphinx runtime uses ``read_wav`` to
get the PCM samples, so both agree on what a valid WAV payload is.
"""

from __future__ import annotations

import io
import wave
from dataclasses import dataclass

from modelmarket.core.errors import InvalidInput

__all__ = ["WavAudio", "read_wav", "wav_duration_s"]


@dataclass(frozen=True, slots=True)
class WavAudio:
    """Uncompressed PCM audio: interleaved little-endian frames as stored in the file."""

    channels: int
    sample_rate_hz: int
    sample_width_bytes: int
    frames: bytes

    @property
    def n_frames(self) -> int:
        return len(self.frames) // (self.channels * self.sample_width_bytes)

    @property
    def duration_s(self) -> float:
        return self.n_frames / self.sample_rate_hz


def read_wav(data: bytes) -> WavAudio:
    """Parse a complete RIFF/WAVE file. Raise ``InvalidInput`` if ``data`` is not a readable PCM WAV file.

    The frame count is taken from the bytes actually present, so a header written for streaming (with a
    placeholder data size) still gives the true length.
    """
    if not isinstance(data, bytes | bytearray | memoryview):
        raise InvalidInput(f"expected a WAV file as bytes, got {type(data).__name__}")
    try:
        with wave.open(io.BytesIO(data), "rb") as reader:
            channels = reader.getnchannels()
            rate_hz = reader.getframerate()
            width = reader.getsampwidth()
            frames = reader.readframes(reader.getnframes())
    except (wave.Error, EOFError) as exc:
        raise InvalidInput(f"not a readable PCM WAV file: {exc or type(exc).__name__}") from None
    if channels < 1 or rate_hz < 1 or width < 1:
        raise InvalidInput(f"not a usable WAV file: {channels} channel(s), {rate_hz} Hz, {width * 8}-bit samples")
    usable = len(frames) - len(frames) % (channels * width)
    return WavAudio(channels=channels, sample_rate_hz=rate_hz, sample_width_bytes=width, frames=frames[:usable])


def wav_duration_s(data: bytes) -> float:
    """Seconds of audio in a complete WAV file (frames / sample rate). Raise ``InvalidInput`` on bad data."""
    return read_wav(data).duration_s
