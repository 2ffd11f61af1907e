"""What a package declares for governance: ``examples`` (the publish gate's smoke test and benchmark),
``evaluation`` (the labelled set of the bias gate), ``lineage`` (datasets and parent models) and ``redact`` (the
personal data replaced in inputs before the model sees them).

Checked against the rest of the manifest (tensor names, artifact paths) by ``manifest._governance_problems``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from modelmarket.core.pii import PII_ENTITIES
from modelmarket.registry.package import artifact_path_problem

MAX_NAME_CHARS = 100
MAX_TEXT_CHARS = 2_000
MAX_EXAMPLE_TENSORS = 16
MAX_EXAMPLE_VALUES = 65_536
"""Values in one example input or expected output (flattened)."""
MAX_COLUMNS = 512
MAX_DATASETS = 32
MAX_PARENTS = 16
SHA256_RE = re.compile(r"^[0-9a-f]{64}\Z")
DEFAULT_TOLERANCE = 1e-4


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _package_path(path: str) -> str:
    problem = artifact_path_problem(path)
    if problem is not None:
        raise ValueError(problem)
    return path


PackagePath = Annotated[str, Field(min_length=1, max_length=500), AfterValidator(_package_path)]
Name = Annotated[str, Field(min_length=1, max_length=MAX_NAME_CHARS)]


def _flat_count(value: Any, depth: int = 0) -> int:
    if isinstance(value, list):
        if depth > 8:
            raise ValueError("nested more than 8 lists deep")
        return sum(_flat_count(v, depth + 1) for v in value)
    if value is None or isinstance(value, dict):
        raise ValueError("values must be numbers, booleans or strings (nested lists allowed), not null or mappings")
    return 1


def _bounded_values(values: list[Any]) -> list[Any]:
    count = _flat_count(values)
    if count > MAX_EXAMPLE_VALUES:
        raise ValueError(f"{count:,} values; at most {MAX_EXAMPLE_VALUES:,}")
    return values


Values = Annotated[list[Any], AfterValidator(_bounded_values)]


def flatten(value: Any) -> list[Any]:
    """The values of a nested list in row-major order."""
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            out.extend(flatten(item))
        return out
    return [value]


class ExampleInput(_Strict):
    """One input of an example: ``data`` with its ``shape`` (the datatype is the declared input's), or ``file``, a
    package file sent as one BYTES element (shape ``[1]``), e.g. a WAV."""

    name: Name
    shape: list[int] | None = Field(default=None, min_length=1, max_length=8)
    data: Values | None = None
    file: PackagePath | None = None

    @model_validator(mode="after")
    def _one_source(self) -> ExampleInput:
        if (self.data is None) == (self.file is None):
            raise ValueError("give either data (with its shape) or file, not both or neither")
        if self.data is not None and self.shape is None:
            raise ValueError("shape: Field required with data, e.g. [1, 64]")
        if self.file is not None and self.shape is not None:
            raise ValueError("shape: not used with file (a file is one BYTES element, shape [1])")
        if self.shape is not None:
            if any(d < 1 for d in self.shape):
                raise ValueError("shape: every dimension of an example is a positive size")
            size = 1
            for d in self.shape:
                size *= d
            if self.data is not None and size != len(flatten(self.data)):
                raise ValueError(f"shape {self.shape} holds {size} values but data has {len(flatten(self.data))}")
        return self


class ExampleDecl(_Strict):
    """A call the publish gate makes in the sandbox (``examples: [{name, inputs, expect, tolerance}]``).

    ``expect`` maps output names to the values the answer must hold (flattened, row-major); numbers match within
    ``tolerance`` (absolute), strings and booleans exactly. Without ``expect`` the call must only succeed and fit
    the declared outputs.
    """

    name: Name
    inputs: list[ExampleInput] = Field(min_length=1, max_length=MAX_EXAMPLE_TENSORS)
    expect: dict[Name, Values] | None = Field(default=None, max_length=MAX_EXAMPLE_TENSORS)
    tolerance: float = Field(default=DEFAULT_TOLERANCE, ge=0, le=1e6)


class EvaluationDecl(_Strict):
    """The labelled evaluation set of the bias gate: a CSV file of the package with a header row.

    Each row's ``features`` columns, in order, form one row of the ``input`` tensor (FP32/FP64/INT); the model's
    ``output`` tensor holds the predicted label, compared with ``label``; ``sensitive_features`` columns name the
    groups (they need not be features). ``positive_label`` is the favourable outcome (e.g. "1": approved).
    """

    dataset: PackagePath
    label: Name
    features: list[Name] = Field(min_length=1, max_length=MAX_COLUMNS)
    sensitive_features: list[Name] = Field(min_length=1, max_length=16)
    input: Name | None = None
    output: Name | None = None
    positive_label: str = Field(default="1", min_length=1, max_length=MAX_NAME_CHARS)

    @field_validator("positive_label", mode="before")
    @classmethod
    def _label_text(cls, value: Any) -> Any:
        if isinstance(value, bool):
            raise ValueError("write the label as it appears in the CSV, e.g. '1' or 'approved'")
        return str(value) if isinstance(value, int) else value


class DatasetDecl(_Strict):
    """A dataset the model was trained or evaluated on: a package file (``path``, hashed at publish) or an external
    one named by ``uri`` and, ideally, its ``sha256``."""

    name: Name
    role: Literal["training", "evaluation", "fine-tuning", "other"] = "training"
    path: PackagePath | None = None
    uri: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)
    sha256: str | None = None
    description: str | None = Field(default=None, max_length=MAX_TEXT_CHARS)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, value: str | None) -> str | None:
        if value is not None and not SHA256_RE.match(value):
            raise ValueError("must be 64 lowercase hexadecimal digits")
        return value


class LineageDecl(_Strict):
    """``lineage: {datasets: [...], parents: [name@version, ...]}``: where the model comes from."""

    datasets: list[DatasetDecl] = Field(default_factory=list, max_length=MAX_DATASETS)
    parents: list[Annotated[str, Field(min_length=1, max_length=128)]] = Field(
        default_factory=list, max_length=MAX_PARENTS
    )


def _entities(names: list[str]) -> list[str]:
    seen: set[str] = set()
    for name in names:
        if name not in PII_ENTITIES:
            raise ValueError(f"{name!r} is not a known entity (one of {', '.join(PII_ENTITIES)})")
        if name in seen:
            raise ValueError(f"{name!r} is listed twice")
        seen.add(name)
    return names


RedactDecl = Annotated[list[str], Field(min_length=1, max_length=len(PII_ENTITIES)), AfterValidator(_entities)]
"""``redact: [EMAIL_ADDRESS, PHONE_NUMBER, ...]``: replaced in the model's text inputs before its runner sees them."""
