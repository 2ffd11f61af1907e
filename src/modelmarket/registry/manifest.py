"""The model package manifest (``modelmarket.yaml``): schema and validation with errors that name the field."""

from __future__ import annotations

import re
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from modelmarket.core.errors import InvalidInput
from modelmarket.core.money import parse_decimal

MANIFEST_NAME = "modelmarket.yaml"
NAME_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
SEMVER_RE = re.compile(r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)$")
Datatype = Literal[
    "BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64", "FP16", "FP32", "FP64", "BYTES"
]
PRICE_MAX_DECIMALS = 10  # bounded precision keeps every stored amount exact and short
PRICE_LIMIT = 10**12
UnitKind = Literal["image", "tokens_1k", "audio_minute", "request"]
DATATYPES: tuple[str, ...] = get_args(Datatype)
UNIT_KINDS: tuple[str, ...] = get_args(UnitKind)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TensorDecl(_Strict):
    name: str = Field(min_length=1, max_length=100)
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
    path: str = Field(min_length=1)

    @field_validator("path")
    @classmethod
    def _relative(cls, path: str) -> str:
        p = Path(path)
        if p.is_absolute() or ".." in p.parts:
            raise ValueError("must be a path inside the package folder (relative, without '..')")
        return path


class Pricing(_Strict):
    unit: UnitKind
    price_per_iu: Decimal
    currency: str = Field(pattern=r"^[A-Z]{3}$")

    @field_validator("price_per_iu", mode="before")
    @classmethod
    def _price(cls, value: Any) -> Decimal:
        try:
            price = parse_decimal(value, "price_per_iu")
        except InvalidInput as exc:
            raise ValueError(exc.message.removeprefix("price_per_iu: ")) from None
        if price < 0:
            raise ValueError("must not be negative")
        if int(price.as_tuple().exponent) < -PRICE_MAX_DECIMALS:
            raise ValueError(f"at most {PRICE_MAX_DECIMALS} digits after the decimal point")
        if price >= PRICE_LIMIT:
            raise ValueError(f"must be less than {PRICE_LIMIT:,}")
        return price


class Metric(_Strict):
    name: str
    value: str
    dataset: str | None = None


class Card(_Strict):
    summary: str = Field(min_length=1, max_length=300)
    description: str | None = None
    intended_use: str | None = None
    limitations: str | None = None
    training_data: str | None = None
    evaluation_data: str | None = None
    metrics: list[Metric] = Field(default_factory=list)


class Manifest(_Strict):
    name: str
    version: str
    task: str = Field(min_length=1, max_length=100)
    modality: Literal["image", "text", "audio", "tabular"]
    runtime: str = Field(min_length=1)
    provider: str = Field(min_length=1)
    license: str = Field(min_length=1)
    artifacts: list[ArtifactDecl] = Field(min_length=1)
    parameters: dict[str, Any] = Field(default_factory=dict)
    inputs: list[TensorDecl] = Field(min_length=1)
    outputs: list[TensorDecl] = Field(min_length=1)
    pricing: Pricing
    card: Card

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        if not NAME_RE.match(name):
            raise ValueError("must be lowercase letters, digits and '-', starting with a letter or digit")
        return name

    @field_validator("version")
    @classmethod
    def _version(cls, version: str) -> str:
        if not SEMVER_RE.match(version):
            raise ValueError(f"{version!r} is not a semantic version MAJOR.MINOR.PATCH (e.g. 1.0.0)")
        return version

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


def parse_manifest(doc: Any, source: str = MANIFEST_NAME) -> Manifest:
    if not isinstance(doc, dict):
        raise InvalidInput(f"{source}: the manifest must be a YAML mapping of fields")
    try:
        return Manifest.model_validate(doc)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown field"
            problems.append(f"{_field_path(tuple(err['loc']))}: {msg}")
        raise InvalidInput(f"{source}: " + "; ".join(problems)) from None


def load_manifest(package_dir: Path) -> Manifest:
    path = package_dir / MANIFEST_NAME
    if not package_dir.is_dir():
        raise InvalidInput(f"{package_dir}: not a directory (expected a model package folder)")
    if not path.is_file():
        raise InvalidInput(f"{package_dir}: no {MANIFEST_NAME} in the package folder")
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML: {exc}") from None
    return parse_manifest(doc, str(path))
