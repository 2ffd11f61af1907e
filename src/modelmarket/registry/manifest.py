"""The model package manifest (``modelmarket.yaml``): schema and validation with errors that name the field."""

from __future__ import annotations

import json
import re
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar, get_args

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializationInfo,
    SerializerFunctionWrapHandler,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_serializer,
    model_validator,
)

from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import check_currency, parse_decimal
from modelmarket.metering.units import UnitKind
from modelmarket.registry.card import Card
from modelmarket.registry.declarations import EvaluationDecl, ExampleDecl, LineageDecl, RedactDecl
from modelmarket.registry.package import artifact_path_problem, open_package_file
from modelmarket.registry.serving import BatchingDecl, ReplicasDecl, SandboxDecl

MANIFEST_NAME = "modelmarket.yaml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
MAX_VERSION_COMPONENT = 999_999_999  # MAJOR, MINOR and PATCH each; nine digits fit every integer column
SEMVER_RE = re.compile(r"^(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\.(0|[1-9]\d{0,8})\Z")  # <= MAX_VERSION_COMPONENT
_VERSION_SHAPE_RE = re.compile(r"^\d+\.\d+\.\d+\Z")
MAX_MANIFEST_BYTES = 256 * 1024  # the file is read up to this size and refused beyond it
MAX_YAML_DEPTH = 32  # nesting of mappings and lists
MAX_EXAMPLES = 16  # smoke-test examples a manifest may declare
MAX_SHORT_TEXT_CHARS = 100  # task, runtime, provider, tensor and metric names
MAX_LICENSE_CHARS = 200  # an SPDX expression such as "Apache-2.0 WITH LLVM-exception OR MIT"
MAX_TENSORS = 64  # declared inputs, and outputs
MAX_ARTIFACT_ENTRIES = 1_000
MAX_PARAMETERS = 64
MAX_PARAMETERS_JSON_BYTES = 16 * 1024
_SHOWN_CHARS = 40  # how much of a refused value an error message quotes
# The one way to write a price: digits, optionally a point and more digits. No sign, exponent, '_' or spaces.
PRICE_RE = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]+)?\Z")
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
PRICE_MAX_DECIMALS = 10  # bounded precision keeps every stored amount exact and short
PRICE_LIMIT = 10**12
DATATYPES: tuple[str, ...] = get_args(Datatype)
UNIT_KINDS: tuple[str, ...] = tuple(k.value for k in UnitKind)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _shown(value: str) -> str:
    """``repr`` of a refused value, cut short so a message never echoes a whole oversized field."""
    return repr(value) if len(value) <= _SHOWN_CHARS else repr(value[:_SHOWN_CHARS]) + "..."


class TensorDecl(_Strict):
    name: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    datatype: Datatype
    shape: list[int] = Field(min_length=1, max_length=8)

    @field_validator("shape")
    @classmethod
    def _dims(cls, shape: list[int]) -> list[int]:
        for dim in shape:
            if dim == 0 or dim < -1:
                raise ValueError(f"dimension {dim} is invalid: use a positive size or -1 for any size")
        return shape


class ArtifactDecl(_Strict):
    """A file or folder of the package, written in one canonical form (see ``package.artifact_path_problem``)."""

    path: str = Field(min_length=1)

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        problem = artifact_path_problem(path)
        if problem is not None:
            raise ValueError(problem)
        return path


ChargeKind = Literal["per_unit", "graduated", "volume", "package"]
CHARGE_KINDS: tuple[str, ...] = get_args(ChargeKind)
TIERED_CHARGES = ("graduated", "volume")
_T = TypeVar("_T")
MAX_PRICE_TIERS = 20
MAX_IU_COUNT = 10**12
"""The largest ``up_to`` of a tier and the largest ``package_iu``: IU in one billing period."""


def _price(value: Any) -> Decimal:
    """A price in the one accepted form (see ``_price_text``), bounded in precision and size."""
    price = parse_decimal(_price_text(value), "price")
    if int(price.as_tuple().exponent) < -PRICE_MAX_DECIMALS:
        raise ValueError(f"at most {PRICE_MAX_DECIMALS} digits after the decimal point")
    if price >= PRICE_LIMIT:
        raise ValueError(f"must be less than {PRICE_LIMIT:,}")
    return price


def _optional_price(value: Any) -> Decimal | None:
    return None if value is None else _price(value)


def _iu_count(value: Any) -> int | None:
    """A positive whole number of IU written as a plain integer (``1000``), or None when not given."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"must be a whole number of IU written as an integer, e.g. 1000, not {type(value).__name__}")
    if value <= 0:
        raise ValueError(f"must be a positive whole number of IU, not {value}")
    if value > MAX_IU_COUNT:
        raise ValueError(f"must be at most {MAX_IU_COUNT:,}")
    return value


def _text(price: Decimal | None) -> str | None:
    return None if price is None else format(price, "f")


class PriceTier(_Strict):
    """One tier of a ``graduated`` or ``volume`` charge: IU up to ``up_to`` (cumulative in the period, inclusive)
    cost ``price_per_iu`` each; the last tier has no ``up_to`` and prices everything above the one before."""

    up_to: int | None = None
    price_per_iu: Decimal

    @field_validator("up_to", mode="before")
    @classmethod
    def _up_to(cls, value: Any) -> int | None:
        return _iu_count(value)

    @field_validator("price_per_iu", mode="before")
    @classmethod
    def _tier_price(cls, value: Any) -> Decimal:
        return _price(value)


def _tier_problem(tiers: tuple[PriceTier, ...]) -> str | None:
    """What is wrong with the tiers' shape (count, open end, order), or None."""
    if not 1 <= len(tiers) <= MAX_PRICE_TIERS:
        return f"list 1 to {MAX_PRICE_TIERS} tiers, not {len(tiers)}"
    last = len(tiers) - 1
    for i, tier in enumerate(tiers):
        if i < last and tier.up_to is None:
            return (
                f"tiers[{i}] has no up_to: only the last tier is open-ended; give every other tier the cumulative"
                " IU it ends at"
            )
        if i == last and tier.up_to is not None:
            above = f"tiers[{i - 1}].up_to" if i else "zero"
            return f"the last tier (tiers[{i}]) must have no up_to: it prices every IU above {above}"
        previous = tiers[i - 1].up_to if i else None
        if tier.up_to is not None and previous is not None and tier.up_to <= previous:
            return (
                f"tiers[{i}].up_to ({tier.up_to}) must be greater than tiers[{i - 1}].up_to ({previous}):"
                " up_to is the cumulative IU in the period where a tier ends, increasing from tier to tier"
            )
    return None


class Pricing(_Strict):
    """What a model costs, in one currency per Inference Unit (``unit``). YAML forms:

    - ``{unit, price_per_iu, currency}``: every IU at ``price_per_iu`` (``charge: per_unit``, the default);
    - ``unit: tokens_1k`` may give ``input_price_per_iu`` and ``output_price_per_iu`` (both) instead of
      ``price_per_iu``: input and output tokens priced apart (``per_unit`` only);
    - ``charge: graduated`` or ``volume`` with ``tiers: [{up_to: 1000, price_per_iu: "0.002"}, ...,
      {price_per_iu: "0.001"}]``: ``up_to`` is the IU used in the billing period so far, strictly increasing,
      and the last tier has none. Graduated prices each IU at its own tier's price; volume prices all the
      period's IU at the price of the tier the period's total falls in (``up_to`` inclusive);
    - ``charge: package`` with ``package_iu`` and ``price_per_package``: each started block of ``package_iu`` IU
      in the period costs ``price_per_package``.

    ``billing.charges.charge_model`` turns a ``Pricing`` into the arithmetic. Prices are quoted decimal strings.
    """

    # Field order matters: a field's validator sees only the fields declared before it (``info.data``).
    unit: UnitKind
    charge: ChargeKind = "per_unit"
    tiers: tuple[PriceTier, ...] | None = Field(default=None, validate_default=True)
    package_iu: int | None = Field(default=None, validate_default=True)
    price_per_package: Decimal | None = Field(default=None, validate_default=True)
    input_price_per_iu: Decimal | None = Field(default=None, validate_default=True)
    output_price_per_iu: Decimal | None = Field(default=None, validate_default=True)
    price_per_iu: Decimal = Field(default=None, validate_default=True)
    """The reference price: what the period's first IU costs. As written for ``per_unit``; otherwise derived and
    refused in the manifest: the input price (split token prices), the first tier's price (``graduated``,
    ``volume``), or the price of one whole package (``package``: a first IU starts a package). Code that bills
    anything but ``per_unit`` must use ``billing.charges``, not this price times a quantity."""
    currency: str

    @field_validator("tiers")
    @classmethod
    def _tiers(cls, tiers: tuple[PriceTier, ...] | None, info: ValidationInfo) -> tuple[PriceTier, ...] | None:
        charge = info.data.get("charge")
        if charge is None:  # the charge itself was refused; that error says enough
            return tiers
        if charge not in TIERED_CHARGES:
            if tiers is not None:
                raise ValueError(f"only with charge 'graduated' or 'volume' (charge is {charge!r})")
            return tiers
        if tiers is None:
            raise ValueError(
                f"Field required with charge {charge!r}: list the tiers, e.g. "
                "[{up_to: 1000, price_per_iu: '0.002'}, {price_per_iu: '0.001'}]"
            )
        problem = _tier_problem(tiers)
        if problem is not None:
            raise ValueError(problem)
        return tiers

    @field_validator("package_iu", mode="before")
    @classmethod
    def _package_iu(cls, value: Any, info: ValidationInfo) -> int | None:
        return _package_field(_iu_count(value), info)

    @field_validator("price_per_package", mode="before")
    @classmethod
    def _price_per_package(cls, value: Any, info: ValidationInfo) -> Decimal | None:
        return _package_field(_optional_price(value), info)

    @field_validator("input_price_per_iu", mode="before")
    @classmethod
    def _input_price(cls, value: Any, info: ValidationInfo) -> Decimal | None:
        return _split_price(_optional_price(value), info)

    @field_validator("output_price_per_iu", mode="before")
    @classmethod
    def _output_price(cls, value: Any, info: ValidationInfo) -> Decimal | None:
        price = _split_price(_optional_price(value), info)
        if "input_price_per_iu" not in info.data:  # refused; that error says enough
            return price
        if price is None and info.data["input_price_per_iu"] is not None:
            raise ValueError("Field required with input_price_per_iu: give both input and output prices, or neither")
        if price is not None and info.data["input_price_per_iu"] is None:
            raise ValueError(
                "given without input_price_per_iu: give both input_price_per_iu and output_price_per_iu, or"
                " neither and one price_per_iu"
            )
        return price

    @field_validator("price_per_iu", mode="before")
    @classmethod
    def _price_per_iu(cls, value: Any, info: ValidationInfo) -> Decimal:
        charge = info.data.get("charge")
        if value is None:
            return _reference_price(info.data)
        price = _price(value)
        if charge is not None and charge != "per_unit":
            where = "each tier gives its price_per_iu" if charge in TIERED_CHARGES else "give price_per_package"
            raise ValueError(f"not used with charge {charge!r}: {where}")
        if info.data.get("input_price_per_iu") is not None or info.data.get("output_price_per_iu") is not None:
            raise ValueError(
                "not used with input_price_per_iu and output_price_per_iu: give either one price_per_iu or the two"
            )
        return price

    @field_validator("currency", mode="before")
    @classmethod
    def _currency(cls, value: Any) -> str:
        try:
            return check_currency(value, "currency")
        except InvalidInput as exc:
            raise ValueError(exc.message.removeprefix("currency: ")) from None

    @property
    def price_text(self) -> str:
        """The reference price exactly as written (``0.0010``, ``0.0000001``; never ``1E-7``)."""
        return format(self.price_per_iu, "f")

    @property
    def has_split_prices(self) -> bool:
        """Whether input and output tokens are priced apart (``input_price_per_iu``/``output_price_per_iu``)."""
        return self.input_price_per_iu is not None

    def _fields(self, *, text: bool, reference: bool) -> dict[str, Any]:
        """The pricing as a mapping; with ``reference`` the derived ``price_per_iu`` is included too."""

        def price(value: Decimal | None) -> Any:
            return _text(value) if text else value

        out: dict[str, Any] = {"unit": self.unit.value}
        if reference or (self.charge == "per_unit" and not self.has_split_prices):
            out["price_per_iu"] = price(self.price_per_iu)
        out["currency"] = self.currency
        if self.charge != "per_unit":
            out["charge"] = self.charge
        if self.tiers is not None:
            out["tiers"] = [{"up_to": t.up_to, "price_per_iu": price(t.price_per_iu)} for t in self.tiers]
        optional = {
            "package_iu": self.package_iu,
            "price_per_package": price(self.price_per_package),
            "input_price_per_iu": price(self.input_price_per_iu),
            "output_price_per_iu": price(self.output_price_per_iu),
        }
        out.update((k, v) for k, v in optional.items() if v is not None)
        return out

    @model_serializer(mode="plain")
    def _serialize(self, info: SerializationInfo) -> dict[str, Any]:
        """The manifest form, as a provider writes it: parsing it again gives an equal ``Pricing``."""
        return self._fields(text=info.mode_is_json(), reference=False)

    def to_json(self) -> dict[str, Any]:
        """The pricing for lists and pages: ``unit``, the reference ``price_per_iu`` and ``currency`` always; then
        ``charge`` (absent means ``per_unit``), ``tiers`` (``up_to`` null on the last), ``package_iu`` and
        ``price_per_package``, ``input_price_per_iu`` and ``output_price_per_iu`` when they apply. Prices are
        strings."""
        return self._fields(text=True, reference=True)


def _package_field(value: _T, info: ValidationInfo) -> _T:
    """``package_iu``/``price_per_package``: required with charge ``package``, refused with any other."""
    charge = info.data.get("charge")
    if charge == "package" and value is None:
        raise ValueError("Field required with charge 'package': give package_iu and price_per_package")
    if charge is not None and charge != "package" and value is not None:
        raise ValueError(f"only with charge 'package' (charge is {charge!r})")
    return value


def _split_price(price: Decimal | None, info: ValidationInfo) -> Decimal | None:
    """``input_price_per_iu``/``output_price_per_iu``: only for ``unit: tokens_1k`` with ``charge: per_unit``."""
    if price is None:
        return None
    unit, charge = info.data.get("unit"), info.data.get("charge")
    if unit is not None and unit is not UnitKind.TOKENS_1K:
        raise ValueError(f"only with unit 'tokens_1k' (unit is {unit.value!r}): give one price_per_iu")
    if charge is not None and charge != "per_unit":
        raise ValueError(f"only with charge 'per_unit' (charge is {charge!r})")
    return price


def _reference_price(data: dict[str, Any]) -> Decimal:
    """``price_per_iu`` when the manifest does not give it (see ``Pricing.price_per_iu``)."""
    charge = data.get("charge")
    split = ("input_price_per_iu", "output_price_per_iu")
    if charge == "per_unit" and all(k in data and data[k] is None for k in split):
        raise ValueError("Field required")
    source: Any = None
    if charge == "per_unit":
        source = data.get("input_price_per_iu")
    elif charge in TIERED_CHARGES and data.get("tiers"):
        source = data["tiers"][0].price_per_iu
    elif charge == "package":
        source = data.get("price_per_package")
    # None: a field it derives from was refused, so the model is refused with that error; never observed.
    return source if source is not None else Decimal(0)


def _price_text(value: Any) -> str:
    """The price's text if it is in the one accepted form; else ``ValueError`` saying how to write it."""
    if isinstance(value, float):
        raise ValueError(f"write the amount as a quoted decimal string, not a float ({value!r})")
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"must be a quoted decimal string such as '0.0010', not {type(value).__name__}")
    if isinstance(value, int) and abs(value) >= PRICE_LIMIT:  # before str(): a huge int has no cheap text
        raise ValueError(f"must be less than {PRICE_LIMIT:,}")
    text = str(value)
    if PRICE_RE.match(text):
        return text
    if text.startswith("-"):
        raise ValueError("must not be negative (write zero as '0', with no sign)")
    try:
        finite = Decimal(text).is_finite()
    except InvalidOperation:
        raise ValueError(f"{_shown(text)} is not a decimal number") from None
    if not finite:
        raise ValueError(f"{_shown(text)} is not a finite number")
    raise ValueError(
        f"{_shown(text)}: write the price in plain decimal digits with at most one point, e.g. '0.0010' or '100':"
        " no sign, exponent ('1E+2'), '_', spaces or leading zeros"
    )


Kind = Literal["model", "pipeline"]
PIPELINE_RUNTIME = "pipeline"
"""The ``runtime`` of every pipeline (what ``kind: pipeline`` defaults it to); no model may use it."""
PIPELINE_INPUT = "input"
"""The source prefix that names the pipeline's own inputs (``input.audio``); no step may take it as its id."""
PIPELINE_ONLY_FIELDS = ("kind", "steps", "outputs_from")
"""Left out of a model's serialised form, so a model's JSON (and its version digest) is what it always was."""
MAX_STEPS = 16
STEP_ID_RE = re.compile(r"^[a-z][a-z0-9_-]{0,31}\Z")
MAX_MODEL_REF_CHARS = 128  # ``name@version-or-alias``
_SOURCE_RE = re.compile(r"^([a-z][a-z0-9_-]{0,31})\.(.+)\Z", re.DOTALL)


class Source(NamedTuple):
    """Where a step input or a pipeline output comes from: a step's output, or the pipeline's own input."""

    step: str | None  # the step's id; None for the pipeline's input
    tensor: str  # the step model's output name, or the pipeline input's name

    def __str__(self) -> str:
        return f"{self.step or PIPELINE_INPUT}.{self.tensor}"


def parse_source(text: str) -> Source:
    """``transcribe.text`` -> ``Source("transcribe", "text")``, ``input.audio`` -> ``Source(None, "audio")``."""
    match = _SOURCE_RE.match(text)
    if match is None or len(match.group(2)) > MAX_SHORT_TEXT_CHARS:
        raise ValueError(
            f"{_shown(text)} must be '<step id>.<output>' or '{PIPELINE_INPUT}.<pipeline input>' "
            "(e.g. 'transcribe.text' or 'input.audio')"
        )
    step, tensor = match.groups()
    return Source(None if step == PIPELINE_INPUT else step, tensor)


def _source_text(text: str) -> str:
    parse_source(text)
    return text


TensorName = Annotated[str, Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)]
SourceText = Annotated[str, AfterValidator(_source_text)]


def split_model_ref(ref: str) -> tuple[str, str | None]:
    """``sentiment@1.0.0`` -> ``("sentiment", "1.0.0")``; ``sentiment`` -> ``("sentiment", None)`` (latest)."""
    name, at, version = ref.partition("@")
    return name, (version if at else None)


class StepDecl(_Strict):
    """One step of a pipeline: the model it calls and, for each of that model's inputs, where the value comes from.

    ``model`` is ``name`` (its ``latest``), ``name@version`` or ``name@alias``, kept as written and resolved on
    each call. ``inputs`` maps the step model's input names to ``input.<pipeline input>`` or
    ``<earlier step id>.<output>``.
    """

    id: str
    model: str = Field(min_length=1, max_length=MAX_MODEL_REF_CHARS)
    inputs: dict[TensorName, SourceText] = Field(min_length=1, max_length=MAX_TENSORS)

    @field_validator("id")
    @classmethod
    def _id(cls, step_id: str) -> str:
        if not STEP_ID_RE.match(step_id):
            raise ValueError(
                f"{_shown(step_id)} must be 1-32 lowercase letters, digits, '_' and '-', starting with a letter"
            )
        if step_id == PIPELINE_INPUT:
            raise ValueError(f"'{PIPELINE_INPUT}' names the pipeline's own inputs ('input.<name>'): pick another id")
        return step_id

    @field_validator("model")
    @classmethod
    def _model(cls, ref: str) -> str:
        name, version = split_model_ref(ref)
        if not NAME_RE.match(name) or (
            version is not None and not (SEMVER_RE.match(version) or NAME_RE.match(version))
        ):
            raise ValueError(
                f"{_shown(ref)} must be a model name, optionally with '@<version or alias>' "
                "(e.g. 'sentiment' or 'sentiment@1.0.0')"
            )
        return ref

    @property
    def model_name(self) -> str:
        return split_model_ref(self.model)[0]

    @property
    def model_ref(self) -> str | None:
        """The version or alias written after ``@``; None means ``latest``."""
        return split_model_ref(self.model)[1]

    @property
    def sources(self) -> dict[str, Source]:
        """Each step input's source, in the order written."""
        return {name: parse_source(text) for name, text in self.inputs.items()}

    @property
    def after(self) -> frozenset[str]:
        """The ids of the steps whose outputs this step takes (it runs once they are done)."""
        return frozenset(s.step for s in self.sources.values() if s.step is not None)


def _kind(info: ValidationInfo) -> str | None:
    """The manifest's kind, or None when ``kind`` itself was refused (its error says enough)."""
    kind = info.data.get("kind")
    return kind if isinstance(kind, str) else None


SERVING_FIELDS = ("sandbox", "batching", "replicas")
GOVERNANCE_FIELDS = ("examples", "evaluation", "lineage", "redact")
"""Declared for the publish gate, lineage and privacy (``registry/declarations.py``); left out of the serialised
form when not given, so an older package keeps its digest."""


class Manifest(_Strict):
    kind: Kind = "model"
    name: str
    version: str
    task: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    modality: Literal["image", "text", "audio", "tabular"]
    runtime: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    provider: str = Field(min_length=1, max_length=MAX_SHORT_TEXT_CHARS)
    license: str = Field(min_length=1, max_length=MAX_LICENSE_CHARS)
    artifacts: list[ArtifactDecl] = Field(max_length=MAX_ARTIFACT_ENTRIES)  # at least one for a model
    parameters: dict[str, Any] = Field(default_factory=dict, max_length=MAX_PARAMETERS)
    inputs: list[TensorDecl] = Field(min_length=1, max_length=MAX_TENSORS)
    outputs: list[TensorDecl] = Field(min_length=1, max_length=MAX_TENSORS)
    pricing: Pricing
    card: Card
    # kind: pipeline only (see docs/pipelines.md); left out of a model's serialised form
    steps: list[StepDecl] | None = Field(default=None, min_length=1, max_length=MAX_STEPS, validate_default=True)
    outputs_from: dict[TensorName, SourceText] | None = Field(
        default=None, max_length=MAX_TENSORS, validate_default=True
    )
    # how the version is served (registry/serving.py); the operator's settings decide what is granted
    sandbox: SandboxDecl | None = None
    batching: BatchingDecl | None = None
    replicas: ReplicasDecl | None = None
    # what the publish gate runs and checks, where the model comes from, what is redacted (registry/declarations.py)
    examples: list[ExampleDecl] | None = Field(default=None, min_length=1, max_length=MAX_EXAMPLES)
    evaluation: EvaluationDecl | None = None
    lineage: LineageDecl | None = None
    redact: RedactDecl | None = None

    @model_validator(mode="before")
    @classmethod
    def _pipeline_defaults(cls, data: Any) -> Any:
        """A pipeline may leave out ``runtime`` (it is ``pipeline``) and ``artifacts`` (none)."""
        if isinstance(data, dict) and data.get("kind") == "pipeline":
            return {"runtime": PIPELINE_RUNTIME, "artifacts": [], **data}
        return data

    @field_validator("runtime")
    @classmethod
    def _runtime(cls, runtime: str, info: ValidationInfo) -> str:
        kind = _kind(info)
        if kind == "pipeline" and runtime != PIPELINE_RUNTIME:
            raise ValueError(f"must be '{PIPELINE_RUNTIME}' with kind 'pipeline' (or leave it out)")
        if kind == "model" and runtime == PIPELINE_RUNTIME:
            raise ValueError(
                f"'{PIPELINE_RUNTIME}' is only for kind 'pipeline': add 'kind: pipeline' and its steps, or name the "
                "runtime that serves this model"
            )
        return runtime

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, artifacts: list[ArtifactDecl], info: ValidationInfo) -> list[ArtifactDecl]:
        if not artifacts and _kind(info) == "model":
            raise ValueError("List should have at least 1 item after validation, not 0: list the files of the model")
        return artifacts

    @field_validator("steps", "outputs_from")
    @classmethod
    def _pipeline_only(cls, value: Any, info: ValidationInfo) -> Any:
        kind = _kind(info)
        if kind == "model" and value is not None:
            raise ValueError("only with kind 'pipeline' (this manifest's kind is 'model')")
        if kind == "pipeline" and value is None:
            example = (
                "[{id: classify, model: sentiment, inputs: {text: input.text}}]"
                if info.field_name == "steps"
                else "{label: classify.label}"
            )
            raise ValueError(f"Field required with kind 'pipeline', e.g. {example}")
        return value

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError("must be lowercase letters, digits and '-', starting with a letter or digit")
        return name

    @field_validator("version")
    @classmethod
    def _version(cls, version: str) -> str:
        if SEMVER_RE.match(version):
            return version
        if _VERSION_SHAPE_RE.match(version) and not any(p != "0" and p.startswith("0") for p in version.split(".")):
            raise ValueError(
                f"{_shown(version)}: MAJOR, MINOR and PATCH must each be at most {MAX_VERSION_COMPONENT:,}"
            )
        raise ValueError(f"{_shown(version)} is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.0.0)")

    @field_validator("parameters")
    @classmethod
    def _parameters(cls, parameters: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(parameters, ensure_ascii=False).encode("utf-8"))
        except (TypeError, ValueError):
            raise ValueError("values must be strings, numbers, booleans, lists or mappings") from None
        if size > MAX_PARAMETERS_JSON_BYTES:
            raise ValueError(f"{size:,} bytes as JSON; the limit is {MAX_PARAMETERS_JSON_BYTES:,}")
        return parameters

    @field_validator("parameters")
    @classmethod
    def _no_pipeline_parameters(cls, parameters: dict[str, Any], info: ValidationInfo) -> dict[str, Any]:
        if parameters and _kind(info) == "pipeline":
            raise ValueError("a pipeline takes no parameters: each step runs its model with the model's own")
        return parameters

    @model_serializer(mode="wrap")
    def _serialize(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if self.kind == "model":
            for key in PIPELINE_ONLY_FIELDS:
                data.pop(key, None)
        for key in SERVING_FIELDS + GOVERNANCE_FIELDS:  # left out when not declared: older packages keep their form
            if data.get(key) is None:
                data.pop(key, None)
        return data

    @property
    def is_pipeline(self) -> bool:
        return self.kind == "pipeline"

    @property
    def semver(self) -> tuple[int, int, int]:
        major, minor, patch = (int(x) for x in self.version.split("."))
        return major, minor, patch

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def _field_path(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(document)"


def _artifact_overlaps(manifest: Manifest) -> list[str]:
    """Entries that repeat an earlier one, or lie inside (or contain) an earlier folder entry."""
    problems: list[str] = []
    earlier: list[tuple[int, str]] = []
    for index, decl in enumerate(manifest.artifacts):
        for first, path in earlier:
            if decl.path == path:
                why = f"is listed twice (also artifacts[{first}])"
            elif decl.path.startswith(path + "/"):
                why = f"is inside the folder listed as artifacts[{first}] ({_shown(path)})"
            elif path.startswith(decl.path + "/"):
                why = f"is a folder that holds artifacts[{first}] ({_shown(path)})"
            else:
                continue
            problems.append(f"artifacts[{index}].path: {_shown(decl.path)} {why}: list each file or folder once")
            break
        earlier.append((index, decl.path))
    return problems


def _step_graph_problems(manifest: Manifest) -> list[str]:
    """What is wrong with a pipeline's step graph, each naming its field: step ids given twice, sources that are
    not a pipeline input or an earlier step, pipeline inputs no step uses, declared outputs mapped zero times or
    names mapped that are not declared outputs, and steps whose outputs nothing uses. Empty for a model."""
    if manifest.steps is None or manifest.outputs_from is None:
        return []
    problems: list[str] = []
    earlier: dict[str, int] = {}  # step id -> index of the first step with it
    all_ids = [step.id for step in manifest.steps]
    inputs = [t.name for t in manifest.inputs]
    used_inputs: set[str] = set()
    fed: set[str] = set()  # ids of the steps whose outputs a later step or a pipeline output takes
    for i, step in enumerate(manifest.steps):
        if step.id in earlier:
            problems.append(
                f"steps[{i}].id: {step.id!r} is the id of steps[{earlier[step.id]}] too: give each step its own id"
            )
        for name, source in step.sources.items():
            problem = _step_source_problem(source, step.id, earlier, all_ids, inputs)
            if problem is not None:
                problems.append(f"steps[{i}].inputs.{name}: {problem}")
            if source.step is None:
                used_inputs.add(source.tensor)
            else:
                fed.add(source.step)
        earlier.setdefault(step.id, i)
    for j, name in enumerate(inputs):
        if name not in used_inputs:
            problems.append(
                f"inputs[{j}].name: pipeline input {name!r} is used by no step: map it in a step's inputs "
                f"('{PIPELINE_INPUT}.{name}') or remove it"
            )
    problems.extend(_outputs_from_problems(manifest, manifest.outputs_from, earlier, fed))
    for i, step in enumerate(manifest.steps):
        if earlier[step.id] == i and step.id not in fed:
            problems.append(
                f"steps[{i}]: step {step.id!r} feeds no later step and no output: remove it (it would run, and be "
                "billed, for nothing)"
            )
    return problems


def _step_source_problem(
    source: Source, step_id: str, earlier: dict[str, int], all_ids: list[str], inputs: list[str]
) -> str | None:
    """Why a step input's source is not a declared pipeline input or an output of an earlier step, or None."""
    if source.step is None:
        if source.tensor in inputs:
            return None
        return f"the pipeline declares no input {source.tensor!r} (its inputs: {', '.join(inputs)})"
    if source.step == step_id:
        return f"a step may not use its own outputs ({str(source)!r})"
    if source.step in earlier:
        return None
    if source.step in all_ids:
        return (
            f"step {source.step!r} runs after this one (steps[{all_ids.index(source.step)}]): a step can use only "
            "the outputs of steps listed before it"
        )
    return f"no step has the id {source.step!r} (steps: {', '.join(all_ids)})"


def _outputs_from_problems(
    manifest: Manifest, outputs_from: dict[str, str], steps: dict[str, int], fed: set[str]
) -> list[str]:
    """Each declared output mapped exactly once, to an output of a step; adds the steps it takes from to ``fed``."""
    problems: list[str] = []
    declared = [t.name for t in manifest.outputs]
    for name, text in outputs_from.items():
        source = parse_source(text)
        if name not in declared:
            problems.append(f"outputs_from.{name}: no declared output {name!r} (outputs: {', '.join(declared)})")
        elif source.step is None:
            problems.append(
                f"outputs_from.{name}: a pipeline output comes from a step ('<step id>.<output>'), not straight "
                f"from the pipeline's input ({text!r})"
            )
        elif source.step not in steps:
            problems.append(f"outputs_from.{name}: no step has the id {source.step!r} (steps: {', '.join(steps)})")
        else:
            fed.add(source.step)
    for j, name in enumerate(declared):
        if name not in outputs_from:
            problems.append(
                f"outputs_from: output {name!r} (outputs[{j}]) is not mapped: give its source, e.g. "
                f"'{name}: <step id>.<output>'"
            )
    return problems


def _in_artifacts(manifest: Manifest, path: str) -> bool:
    return any(path == a.path or path.startswith(a.path + "/") for a in manifest.artifacts)


def _governance_problems(manifest: Manifest) -> list[str]:
    """``examples``, ``evaluation`` and ``lineage`` checked against the declared tensors and artifacts."""
    problems: list[str] = []
    inputs = {t.name: t for t in manifest.inputs}
    outputs = {t.name for t in manifest.outputs}
    for i, example in enumerate(manifest.examples or ()):
        given = [x.name for x in example.inputs]
        for j, item in enumerate(example.inputs):
            where = f"examples[{i}].inputs[{j}]"
            if item.name not in inputs:
                problems.append(f"{where}.name: no declared input {item.name!r} (inputs: {', '.join(inputs)})")
            elif item.file is not None and inputs[item.name].datatype != "BYTES":
                problems.append(f"{where}.file: input {item.name!r} is {inputs[item.name].datatype}; a file is BYTES")
            if item.file is not None and not _in_artifacts(manifest, item.file):
                problems.append(f"{where}.file: {_shown(item.file)} is not among the artifacts: list it there")
            if given.count(item.name) > 1 and given.index(item.name) != j:
                problems.append(f"{where}.name: input {item.name!r} is given twice")
        missing = [name for name in inputs if name not in given]
        if missing:
            problems.append(f"examples[{i}].inputs: input(s) {', '.join(missing)} not given")
        for name in example.expect or {}:
            if name not in outputs:
                problems.append(f"examples[{i}].expect.{name}: no declared output {name!r}")
    ev = manifest.evaluation
    if ev is not None:
        if not _in_artifacts(manifest, ev.dataset):
            problems.append(f"evaluation.dataset: {_shown(ev.dataset)} is not among the artifacts: list it there")
        if ev.input is not None and ev.input not in inputs:
            problems.append(f"evaluation.input: no declared input {ev.input!r}")
        if ev.output is not None and ev.output not in outputs:
            problems.append(f"evaluation.output: no declared output {ev.output!r}")
        if ev.label in ev.features:
            problems.append(f"evaluation.features: the label column {ev.label!r} must not be a feature")
    for i, ds in enumerate(manifest.lineage.datasets if manifest.lineage else ()):
        if ds.path is not None and not _in_artifacts(manifest, ds.path):
            problems.append(f"lineage.datasets[{i}].path: {_shown(ds.path)} is not among the artifacts: list it there")
        if ds.path is None and ds.uri is None:
            problems.append(f"lineage.datasets[{i}]: give its path in the package or its uri")
    for i, ref in enumerate(manifest.lineage.parents if manifest.lineage else ()):
        name, version = split_model_ref(ref)
        if not NAME_RE.match(name) or version is None or not SEMVER_RE.match(version):
            problems.append(f"lineage.parents[{i}]: {_shown(ref)} must be 'name@MAJOR.MINOR.PATCH'")
    return problems


def parse_manifest(doc: Any, source: str = MANIFEST_NAME) -> Manifest:
    if not isinstance(doc, dict):
        raise InvalidInput(f"{source}: the manifest must be a YAML mapping of fields")
    try:
        manifest = Manifest.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append(f"{_field_path(tuple(err['loc']))}: {msg}")
        raise InvalidInput(f"{source}: " + "; ".join(problems)) from None
    overlaps = _artifact_overlaps(manifest)
    if overlaps:
        raise InvalidInput(f"{source}: " + "; ".join(overlaps))
    graph = _step_graph_problems(manifest) + _governance_problems(manifest)
    if graph:
        raise InvalidInput(f"{source}: " + "; ".join(graph))
    return manifest


class ManifestYamlError(yaml.YAMLError):
    """A YAML construct the manifest refuses (an alias, a duplicate key, deep nesting, an odd integer)."""

    def __init__(self, mark: yaml.Mark | None, message: str) -> None:
        line = f"line {mark.line + 1}: " if mark is not None else ""
        super().__init__(line + message)


_PLAIN_INT_RE = re.compile(r"^(0|-?[1-9][0-9]*)\Z")  # no "-0": it would read as 0


class ManifestLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with the constructs that make a small file mean something large or surprising refused.

    - anchors and aliases (``&a``/``*a``, and ``<<: *a`` merges): a 2 kB file of nested aliases expands to
      megabytes in memory, and a reader of the file cannot see what a value is without chasing them;
    - a key given twice in one mapping (plain YAML keeps the last one silently);
    - nesting deeper than ``MAX_YAML_DEPTH``;
    - integers in YAML 1.1's other spellings (``0x10``, ``0o17``, ``010`` = 8, ``1_000``, ``1:30`` = 90, ``+5``):
      an integer is written in plain decimal.
    """

    _depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise ManifestYamlError(
                event.start_mark, "YAML anchors and aliases (&name, *name) are not allowed: write each value out"
            )
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise ManifestYamlError(event.start_mark, f"nested more than {MAX_YAML_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, value_node in node.value:
            is_int = isinstance(value_node, yaml.ScalarNode) and value_node.tag == "tag:yaml.org,2002:int"
            if is_int and not _PLAIN_INT_RE.match(str(value_node.value)):  # name the field, not only the line
                raise ManifestYamlError(
                    value_node.start_mark,
                    f"{key_node.value}: write the number {_shown(str(value_node.value))} in plain decimal digits, "
                    "or quote it as text",
                )
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ManifestYamlError(key_node.start_mark, "merge keys ('<<') are not allowed: write the fields out")
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, list | dict):
                raise ManifestYamlError(key_node.start_mark, "a mapping key must be a plain value")
            if key in seen:
                raise ManifestYamlError(key_node.start_mark, f"key {key!r} is given twice in the same mapping")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)

    def construct_plain_int(self, node: yaml.ScalarNode) -> int:
        text = str(node.value)
        if not _PLAIN_INT_RE.match(text):
            raise ManifestYamlError(
                node.start_mark, f"write the integer {_shown(text)} in plain decimal digits (or quote it as text)"
            )
        return int(text)


ManifestLoader.add_constructor("tag:yaml.org,2002:int", ManifestLoader.construct_plain_int)


def load_declared_list(text: str | bytes, key: str, source: str, max_bytes: int) -> list[Any]:
    """The list under ``key`` of a declaration file (``{plans: [...]}``, ``{routes: [...]}``): at most
    ``max_bytes``, read with ``ManifestLoader`` (no aliases, so a small file cannot expand; no duplicate keys),
    a mapping whose only field is ``key``. Errors start with ``source``."""
    if len(text) > max_bytes:
        raise InvalidInput(f"{source} is larger than {max_bytes} bytes")
    try:
        doc = yaml.load(text, Loader=ManifestLoader)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{source} is not valid YAML: {exc}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get(key), list):
        raise InvalidInput(f"{source} must be a mapping with a '{key}' list")
    if set(doc) != {key}:
        raise InvalidInput(f"{source}: unknown top-level field(s) {sorted(map(str, set(doc) - {key}))}; only '{key}'")
    return list(doc[key])


def read_manifest_text(path: Path) -> str:
    """The manifest file's text: a regular file (not a link), at most ``MAX_MANIFEST_BYTES``, UTF-8."""
    with open_package_file(path) as fh:
        data = fh.read(MAX_MANIFEST_BYTES + 1)
    if len(data) > MAX_MANIFEST_BYTES:
        raise InvalidInput(f"{path}: larger than the limit of {MAX_MANIFEST_BYTES:,} bytes for a manifest")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"{path}: not UTF-8 text (byte {exc.start} cannot be decoded)") from None


def load_manifest(package_dir: Path) -> Manifest:
    path = package_dir / MANIFEST_NAME
    if not package_dir.is_dir():
        raise InvalidInput(f"{package_dir}: not a directory (expected a model package folder)")
    if not path.is_file() and not path.is_symlink():
        raise InvalidInput(f"{package_dir}: no {MANIFEST_NAME} in the package folder")
    text = read_manifest_text(path)
    try:
        doc = yaml.load(text, Loader=ManifestLoader)
    except ManifestYamlError as exc:
        raise InvalidInput(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {exc}") from None
    return parse_manifest(doc, str(path))
