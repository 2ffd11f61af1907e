"""``upstream-openai`` and ``upstream-oip``: a model served by a registered provider's server, not by a runner.

The package publishes one of the provider's models under our own name, price and card; the gateway forwards
each call to the provider (``gateway/backends.py``) and bills it like any other. No process of ours runs it:
these classes exist so that publish can check the package's parameters, and never load.

Parameters: ``provider`` (a name registered with ``modelmarket providers add``) and ``model`` (the model's name
on that server).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from modelmarket.core.errors import InvalidInput
from modelmarket.runtime.base import Runtime, Tensor

PROVIDER_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
MAX_UPSTREAM_MODEL_CHARS = 200


class _Upstream(Runtime):
    parameter_names = frozenset({"provider", "model"})

    @classmethod
    def validate_parameters(cls, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        super().validate_parameters(parameters, artifacts)
        provider = parameters.get("provider")
        if not isinstance(provider, str) or not PROVIDER_RE.match(provider):
            raise InvalidInput(
                "parameters.provider: must name a provider registered with 'modelmarket providers add' "
                f"(lowercase letters, digits and '-'), not {provider!r}"
            )
        model = parameters.get("model")
        if not isinstance(model, str) or not model or len(model) > MAX_UPSTREAM_MODEL_CHARS:
            raise InvalidInput(
                f"parameters.model: must be the model's name on the provider's server (1-{MAX_UPSTREAM_MODEL_CHARS}"
                f" characters), not {model!r}"
            )

    def load(self) -> None:
        raise RuntimeError(f"runtime {self.name!r} is served by its provider's server, never by a runner")

    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        raise RuntimeError(f"runtime {self.name!r} is served by its provider's server, never by a runner")


class UpstreamOpenAIRuntime(_Upstream):
    """A model of an OpenAI-compatible server (vLLM, llama.cpp's server, Ollama, OpenAI, another modelmarket)."""

    name = "upstream-openai"


class UpstreamOIPRuntime(_Upstream):
    """A model of an Open Inference Protocol server (KServe, Triton, MLServer, another modelmarket)."""

    name = "upstream-oip"
