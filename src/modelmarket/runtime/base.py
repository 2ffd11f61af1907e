"""The Runtime plug-in contract.

A Runtime knows one model format. The runner constructs it with a ``ModelSpec``, calls ``load()`` once, then
``predict()`` for every request. Runtimes are discovered through the entry point group ``modelmarket.runtimes``
(see ``runtime/plugins.py``), so a third party can ship one as its own distribution.

Tensors follow the Open Inference Protocol v2: numeric tensors carry a numpy array already in the tensor's
shape; ``BYTES`` tensors carry a numpy object array of ``bytes`` in the tensor's shape.

Trust (DESIGN.md section 6): a runtime opens only its version's own artifacts (``ModelSpec.artifact``), its
manifest parameters are checked at publish (``Runtime.validate_parameters``), and every call is bounded
(``Runtime.input_limits``, enforced in ``predict`` and readable by the gateway to refuse before forwarding).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from modelmarket.core.errors import InvalidInput
from modelmarket.core.tensors import Tensor, TensorSpec, bytes_tensor

__all__ = [
    "Embedder",
    "Embeddings",
    "GenerationChunk",
    "GenerationParams",
    "InputLimits",
    "ModelSpec",
    "Runtime",
    "Tensor",
    "TensorSpec",
    "TextGenerator",
    "artifact_parameter",
    "bytes_tensor",
    "int_parameter",
    "number_parameter",
    "text_element",
    "text_parameter",
]

_LISTED_ARTIFACTS = 10  # how many artifact names an error message lists


def _normalise(relpath: object, what: str, artifacts: Sequence[str]) -> str:
    """``relpath`` as a canonical artifact path (``./a//b`` -> ``a/b``); absolute paths and ``..`` refused."""
    if not isinstance(relpath, str) or not relpath:
        raise InvalidInput(f"{what}: must be the path of one of the version's artifacts, {_listing(artifacts)}")
    if relpath.startswith("/"):
        raise InvalidInput(f"{what}: {relpath!r} is an absolute path; name one of {_listing(artifacts)}")
    parts = relpath.split("/")
    if ".." in parts:
        raise InvalidInput(f"{what}: {relpath!r} leaves the package folder ('..'); name one of {_listing(artifacts)}")
    return "/".join(part for part in parts if part not in ("", "."))


def _listing(artifacts: Sequence[str]) -> str:
    shown = ", ".join(repr(a) for a in artifacts[:_LISTED_ARTIFACTS])
    more = f" and {len(artifacts) - _LISTED_ARTIFACTS} more" if len(artifacts) > _LISTED_ARTIFACTS else ""
    return f"the version's artifacts: {shown}{more}" if artifacts else "the version's artifacts (it has none)"


def resolve_artifact(relpath: object, artifacts: Sequence[str], what: str, *, folder: bool = False) -> str:
    """The canonical form of ``relpath`` if it names one of ``artifacts`` (or, with ``folder``, a folder of them).

    ``what`` starts the error message: ``parameters.model_file`` at publish, ``artifact`` elsewhere.
    """
    norm = _normalise(relpath, what, artifacts)
    if norm in artifacts or (folder and norm and any(a.startswith(norm + "/") for a in artifacts)):
        return norm
    kind = "a folder of" if folder else "one of"
    raise InvalidInput(f"{what}: {relpath!r} is not {kind} {_listing(artifacts)}")


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """Everything a runner needs to serve one version, with artifacts laid out under ``artifact_root``."""

    name: str
    version: str
    runtime: str
    artifact_root: Path
    artifacts: tuple[str, ...]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    parameters: Mapping[str, Any] = field(default_factory=dict)
    sandbox: str = "process"
    """The profile the runner runs under (``runtime/sandbox.py``): a runtime may refuse work it only does
    confined (the ``sklearn`` runtime loads a plain pickle only under ``bwrap`` or ``gvisor``)."""

    def artifact(self, relpath: str, parameter: str | None = None) -> Path:
        """The path of artifact ``relpath``, which must be exactly one of ``artifacts`` once normalised.

        An absolute path, a path with ``..`` or any other name raises ``InvalidInput``, naming
        ``parameters.<parameter>`` when the path came from that parameter.
        """
        what = f"parameters.{parameter}" if parameter else "artifact"
        return self.artifact_root / resolve_artifact(relpath, self.artifacts, what)

    def artifact_folder(self, relpath: str, parameter: str | None = None) -> Path:
        """Like ``artifact``, for a folder: ``relpath`` must hold artifacts (``en-us`` for ``en-us/mdef``)."""
        what = f"parameters.{parameter}" if parameter else "artifact folder"
        return self.artifact_root / resolve_artifact(relpath, self.artifacts, what, folder=True)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "runtime": self.runtime,
            "artifact_root": str(self.artifact_root),
            "artifacts": list(self.artifacts),
            "inputs": [t.to_json() for t in self.inputs],
            "outputs": [t.to_json() for t in self.outputs],
            "parameters": dict(self.parameters),
            "sandbox": self.sandbox,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, Any]) -> ModelSpec:
        return cls(
            name=doc["name"],
            version=doc["version"],
            runtime=doc["runtime"],
            artifact_root=Path(doc["artifact_root"]),
            artifacts=tuple(doc["artifacts"]),
            inputs=tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in doc["inputs"]),
            outputs=tuple(TensorSpec(t["name"], t["datatype"], tuple(t["shape"])) for t in doc["outputs"]),
            parameters=dict(doc.get("parameters", {})),
            sandbox=str(doc.get("sandbox", "process")),
        )


# -- input bounds ----------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputLimits:
    """Bounds on one ``predict`` call. The runtime refuses beyond them; the gateway can refuse before forwarding.

    - ``max_elements_per_call``: elements of all input tensors together (a [32, 64] tensor has 2,048);
    - ``max_element_bytes``: length of one ``BYTES`` element (``None``: only the call bound applies);
    - ``max_call_bytes``: all input data together: ``BYTES`` element lengths, numeric ``nbytes``.
    """

    max_elements_per_call: int
    max_element_bytes: int | None = None
    max_call_bytes: int | None = None

    def check_shape(self, name: str, shape: Sequence[int], elements_so_far: int = 0) -> int:
        """Refuse a tensor whose element count (with ``elements_so_far`` from earlier inputs) is over the bound.

        Needs only the declared shape, so the gateway can call it before decoding the data. Returns the new total.
        """
        total = elements_so_far + math.prod(shape)
        if total > self.max_elements_per_call:
            raise InvalidInput(
                f"input {name!r}: {total:,} elements in this call; the limit is {self.max_elements_per_call:,} per"
                " call: split the request into several calls"
            )
        return total

    def check_element_bytes(self, name: str, index: int, nbytes: int) -> None:
        """Refuse one ``BYTES`` element longer than ``max_element_bytes``."""
        if self.max_element_bytes is not None and nbytes > self.max_element_bytes:
            raise InvalidInput(
                f"input {name!r}: element {index} is {nbytes:,} bytes; the limit is {self.max_element_bytes:,}"
                " bytes per element: send shorter elements"
            )

    def check(self, inputs: Sequence[Tensor]) -> None:
        """Refuse a call over any bound, naming the input and the bound."""
        elements = 0
        call_bytes = 0
        for tensor in inputs:
            elements = self.check_shape(tensor.name, tensor.data.shape, elements)
            if tensor.datatype == "BYTES":
                for index, item in enumerate(tensor.data.reshape(-1)):
                    nbytes = len(item) if isinstance(item, bytes | bytearray | str) else 0
                    self.check_element_bytes(tensor.name, index, nbytes)
                    call_bytes += nbytes
            else:
                call_bytes += int(tensor.data.nbytes)
            if self.max_call_bytes is not None and call_bytes > self.max_call_bytes:
                raise InvalidInput(
                    f"input {tensor.name!r}: the call's inputs hold more than {self.max_call_bytes:,} bytes, the"
                    " limit per call: split the request into several calls"
                )


DEFAULT_INPUT_LIMITS = InputLimits(
    max_elements_per_call=16 * 1024 * 1024, max_element_bytes=64 * 1024 * 1024, max_call_bytes=64 * 1024 * 1024
)
"""What a plug-in that declares nothing gets: the gateway's own request size bound, in elements and bytes."""


# -- the contract -------------------------------------------------------------------------------------------------


class Runtime(ABC):
    """Base class of runtime plug-ins.

    Subclasses set ``name``, implement ``load`` and ``predict``, list their manifest parameters in
    ``parameter_names`` and check their values in ``validate_parameters``, and declare ``input_limits``.
    """

    name: ClassVar[str]
    parameter_names: ClassVar[frozenset[str]] = frozenset()
    input_limits: ClassVar[InputLimits] = DEFAULT_INPUT_LIMITS
    provider_code: ClassVar[bool] = False
    """True for runtimes that run code (or unpickle objects) the provider wrote: they never run in the gateway
    and never below the operator's minimum sandbox profile (``runtime/sandbox.py``)."""

    def __init__(self, spec: ModelSpec) -> None:
        self.spec = spec

    @classmethod
    def validate_parameters(cls, parameters: Mapping[str, Any], artifacts: Sequence[str]) -> None:
        """Check the manifest's ``parameters`` at publish, before anything is stored or run.

        ``artifacts`` are the version's artifact paths. Raise ``InvalidInput`` naming the field
        (``parameters.model_file: ...``). This default refuses every name not in ``parameter_names``, listing
        the known ones; a subclass calls it (``super().validate_parameters(...)``) and then checks the values.
        """
        unknown = sorted(str(key) for key in parameters if key not in cls.parameter_names)
        if unknown:
            known = ", ".join(sorted(cls.parameter_names)) or "none"
            raise InvalidInput(
                f"parameters.{unknown[0]}: runtime {cls.name!r} has no parameter of that name"
                + (f" (nor {', '.join(unknown[1:])})" if len(unknown) > 1 else "")
                + f"; its parameters: {known}"
            )

    @classmethod
    def check_inputs(cls, inputs: Sequence[Tensor]) -> None:
        """Refuse a call over ``input_limits``. ``predict`` calls it first; the gateway may call it too."""
        cls.input_limits.check(inputs)

    @abstractmethod
    def load(self) -> None:
        """Load the artifacts (only through ``spec.artifact``). Called once, before the runner reports ready."""

    @abstractmethod
    def predict(self, inputs: Sequence[Tensor], parameters: Mapping[str, Any]) -> list[Tensor]:
        """Run one request. Inputs are already validated against ``spec.inputs`` (names, datatypes, shapes).

        Call ``self.check_inputs(inputs)`` first. Raise ``modelmarket.core.InvalidInput`` for content the model
        cannot process (e.g. a non-WAV blob); anything else is a server error.
        """

    def metadata(self) -> dict[str, Any]:
        return {
            "name": self.spec.name,
            "versions": [self.spec.version],
            "platform": self.name,
            "inputs": [t.to_json() for t in self.spec.inputs],
            "outputs": [t.to_json() for t in self.spec.outputs],
        }


# -- parameter helpers for validate_parameters and load -----------------------------------------------------------


def artifact_parameter(
    parameters: Mapping[str, Any], key: str, default: str | None, artifacts: Sequence[str], *, folder: bool = False
) -> str | None:
    """The canonical artifact path that parameter ``key`` names (or ``default``); it must be one of ``artifacts``."""
    value = parameters.get(key, default)
    if value is None:
        return None
    return resolve_artifact(value, artifacts, f"parameters.{key}", folder=folder)


def int_parameter(parameters: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    """Parameter ``key`` as an integer in ``[low, high]`` (``default`` when absent)."""
    value = parameters.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"parameters.{key}: must be a whole number from {low:,} to {high:,}, not {value!r}")
    return value


def number_parameter(parameters: Mapping[str, Any], key: str, default: float, low: float, high: float) -> float:
    """Parameter ``key`` as a number with ``low < value <= high`` (``default`` when absent)."""
    value = parameters.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or not low < value <= high:
        raise InvalidInput(f"parameters.{key}: must be a number above {low:g} and at most {high:g}, not {value!r}")
    return float(value)


def text_element(item: object, index: int = 0) -> str:
    """One element of a ``BYTES`` text tensor as ``str``: UTF-8 bytes (or already a ``str``); ``InvalidInput``
    naming the element otherwise."""
    if isinstance(item, bytes | bytearray):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            raise InvalidInput(f"text element {index} is not valid UTF-8") from None
    if isinstance(item, str):
        return item
    raise InvalidInput(f"text element {index} is {type(item).__name__}, expected UTF-8 bytes")


def text_parameter(parameters: Mapping[str, Any], key: str, default: str, choices: Sequence[str]) -> str:
    """Parameter ``key`` as one of ``choices`` (``default`` when absent)."""
    value = parameters.get(key, default)
    if value not in choices:
        raise InvalidInput(f"parameters.{key}: must be one of {', '.join(choices)}, not {value!r}")
    return str(value)


# -- capabilities beyond OIP tensors: text generation and embeddings ----------------------------------------------
#
# A runtime may also implement one of these. The runner then serves it over the OpenAI-compatible routes too
# (``runtime/openai_runner.py``: ``/v1/chat/completions`` and ``/v1/completions`` for a ``TextGenerator``,
# ``/v1/embeddings`` for an ``Embedder``), with token counts from the model's own tokenizer in every answer's
# ``usage``. The gateway bills those counts.


@dataclass(frozen=True, slots=True)
class GenerationParams:
    """What a caller may set on a generation call; None means the model's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class GenerationChunk:
    """One step of a generation: new ``text`` (may be empty), the running token counts, and, on the last chunk
    only, why generation ended (``stop``: an end token or a stop string; ``length``: ``max_tokens`` reached)."""

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None = None


class TextGenerator(ABC):
    """A runtime that generates text. Chunks are produced lazily: the runner stops iterating (and so stops the
    model) when the caller goes away, so a cut-off stream is billed for what was generated and nothing more."""

    context_length: int = 0
    """Tokens of prompt and completion together the model accepts (0: unknown)."""

    @abstractmethod
    def chat(self, messages: Sequence[Mapping[str, str]], params: GenerationParams) -> Iterator[GenerationChunk]:
        """Generate the assistant's reply to ``messages`` (``{"role", "content"}``), formatted with the model's
        own chat template. Raise ``InvalidInput`` for a prompt the model cannot take (too long for its context)."""

    @abstractmethod
    def complete(self, prompt: str, params: GenerationParams) -> Iterator[GenerationChunk]:
        """Continue ``prompt`` as plain text."""

    @abstractmethod
    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the model's own tokenizer."""


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: Any
    """``numpy.ndarray`` of float32, shape (number of inputs, dimensions)."""
    tokens: int
    """Tokens processed, by the model's own tokenizer (after truncation to its context)."""


class Embedder(ABC):
    """A runtime that turns texts (or token id arrays) into vectors."""

    dimensions: int = 0
    max_batch: int = 256
    """Most inputs in one call; the runner refuses more, naming the bound."""

    @abstractmethod
    def embed(self, inputs: Sequence[str] | Sequence[Sequence[int]]) -> Embeddings:
        """Embed each input. Strings are tokenized; lists of ints are token ids already. Refuse empty input or ids
        outside the vocabulary with ``InvalidInput``."""
