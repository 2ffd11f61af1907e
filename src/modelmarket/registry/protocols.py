"""Which wire protocols a model speaks: a fact of its manifest, shown in the catalogue and used for routing.

Every model speaks OIP v2 (``/v2/models/{m}/infer``). A model also speaks the OpenAI API when its runtime is one
of ``OPENAI_RUNTIMES`` (text generation, embeddings, a forwarded OpenAI-compatible upstream) or its task is one of
``OPENAI_TASKS`` (speech to text: ``/v1/audio/transcriptions``).
"""

from __future__ import annotations

from modelmarket.registry.manifest import Manifest

OIP = "oip"
OPENAI = "openai"
PROTOCOLS = (OIP, OPENAI)
"""Every protocol name, in the order they are listed."""
OPENAI_RUNTIMES = frozenset({"llama-cpp", "sentence-embeddings", "upstream-openai"})
OPENAI_TASKS = frozenset({"automatic-speech-recognition"})


def speaks_openai(manifest: Manifest) -> bool:
    """Whether the model answers OpenAI-style requests (as well as OIP)."""
    return manifest.runtime in OPENAI_RUNTIMES or manifest.task in OPENAI_TASKS


def protocols_of(manifest: Manifest) -> tuple[str, ...]:
    """The protocols the model speaks, in ``PROTOCOLS`` order: ``("oip",)`` or ``("oip", "openai")``."""
    return (OIP, OPENAI) if speaks_openai(manifest) else (OIP,)
