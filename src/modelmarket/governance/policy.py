"""The operator's gate policy: a YAML file (``MODELMARKET_GATE_POLICY``), or the defaults below.

```yaml
review: manual            # manual: a person approves; auto: approved when every stage before passed
max_active_per_provider: 5
max_run_s: 600            # seconds one gate run may spend calling its model
card:
  required: [intended_use, limitations]   # card fields a package must fill in (default: none)
scan:
  allow: [.onnx, .json, README, ...]       # file endings ('.onnx') or whole names ('README') accepted
benchmark:
  calls: 50                                # calls timed after one warm-up (at most ``seconds``)
  seconds: 5
bias:                                      # thresholds of the bias gate (governance/bias.py)
  max_demographic_parity_difference: 0.1
  min_demographic_parity_ratio: 0.8
  max_equalized_odds_difference: 0.1
  min_group_accuracy: 0.6
  min_group_size: 30
  required_for: [tabular-classification]   # tasks whose packages must declare an evaluation set
```
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from modelmarket.core.errors import InvalidInput
from modelmarket.registry.manifest import ManifestLoader

MAX_POLICY_BYTES = 64 * 1024
DEFAULT_ALLOWED: tuple[str, ...] = (
    # serialised models and weights
    ".onnx", ".gguf", ".safetensors", ".skops", ".npy", ".npz",
    # pickles: allowed, scanned, and loaded only in a sandbox
    ".pkl", ".pickle", ".joblib",
    # text, data, configuration, code run by the python runtime in its sandbox
    ".json", ".txt", ".csv", ".tsv", ".yaml", ".yml", ".md", ".py", ".wav",
    # tokenizers and speech models (pocketsphinx's acoustic model files have no extension)
    ".model", ".vocab", ".dict", ".lm", ".bin", ".fst",
    "README", "LICENSE", "NOTICE", "mdef", "feat.params", "means", "variances", "transition_matrices",
    "mixture_weights", "sendump", "noisedict",
)  # fmt: skip
"""What an artifact's file name may be: entries starting with '.' are endings, the others whole names."""
PICKLE_EXTENSIONS: tuple[str, ...] = (".pkl", ".pickle", ".joblib", ".bin", ".pt", ".pth", ".ckpt")
"""Files scanned as pickles (``.bin`` only when it is one: its first byte says so)."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CardPolicy(_Strict):
    required: tuple[str, ...] = ()


class ScanPolicy(_Strict):
    allow: tuple[str, ...] = DEFAULT_ALLOWED
    max_files: int = Field(default=2_000, ge=1, le=100_000)


class BenchmarkPolicy(_Strict):
    calls: int = Field(default=50, ge=1, le=100_000)
    seconds: float = Field(default=5.0, gt=0, le=3_600)


class BiasPolicy(_Strict):
    max_demographic_parity_difference: float = Field(default=0.1, ge=0, le=1)
    min_demographic_parity_ratio: float = Field(default=0.8, ge=0, le=1)
    max_equalized_odds_difference: float = Field(default=0.1, ge=0, le=1)
    min_group_accuracy: float = Field(default=0.6, ge=0, le=1)
    min_group_size: int = Field(default=30, ge=1)
    max_rows: int = Field(default=100_000, ge=1, le=10_000_000)
    required_for: tuple[str, ...] = ("tabular-classification",)
    """Tasks (the manifest's ``task``) whose packages must declare an evaluation set."""


class GatePolicy(_Strict):
    review: Literal["manual", "auto"] = "manual"
    card: CardPolicy = CardPolicy()
    scan: ScanPolicy = ScanPolicy()
    benchmark: BenchmarkPolicy = BenchmarkPolicy()
    bias: BiasPolicy = BiasPolicy()
    max_active_per_provider: int = Field(default=5, ge=1, le=1_000)
    """Submissions a provider may have running or pending review at once."""
    max_run_s: float = Field(default=600.0, gt=0, le=86_400)
    """Longest one gate run may call its model (smoke test, benchmark, bias) before it fails: runs go one at a
    time, so no model holds the gate for others beyond this (plus one call's timeout)."""

    def with_review(self, review: Literal["manual", "auto"]) -> GatePolicy:
        return self.model_copy(update={"review": review})


def load_policy(path: Path | None) -> GatePolicy:
    """The policy in ``path`` (YAML; unknown fields refused, naming them), or the defaults when ``path`` is None."""
    if path is None:
        return GatePolicy()
    try:
        text = path.read_bytes()
    except OSError as exc:
        raise InvalidInput(f"gate policy {path}: cannot be read ({exc.strerror})") from None
    if len(text) > MAX_POLICY_BYTES:
        raise InvalidInput(f"gate policy {path}: larger than {MAX_POLICY_BYTES:,} bytes")
    try:
        doc: Any = yaml.load(text, Loader=ManifestLoader)
    except yaml.YAMLError as exc:
        raise InvalidInput(f"gate policy {path}: not valid YAML: {exc}") from None
    try:
        return GatePolicy.model_validate(doc or {})
    except ValidationError as exc:
        problems = [
            f"{'.'.join(str(p) for p in err['loc']) or '(document)'}: "
            + ("unknown field" if err["type"] == "extra_forbid" else err["msg"])
            for err in exc.errors()
        ]
        raise InvalidInput(f"gate policy {path}: " + "; ".join(problems)) from None
