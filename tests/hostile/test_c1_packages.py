"""1. Packages that read the platform's files: links, FIFOs, hard links and runtime parameters that name a path
outside the package are refused at publish, naming the field, and nothing is stored."""

from __future__ import annotations

import pytest
from tests.hostile.conftest import PublishBatch

FILE_CASES = (
    "artifact-symlink-to-passwd",
    "artifact-symlink-to-store",
    "symlinked-folder",
    "fifo-artifact",
    "hard-link-to-outside",
)
PARAMETER_CASES = ("model-file-dot-dot", "model-file-absolute", "zero-threads")


@pytest.mark.parametrize("case", FILE_CASES)
def test_package_files_that_lead_outside_are_refused(refused_publishes: PublishBatch, case: str) -> None:
    refused_publishes.assert_refused(case)


@pytest.mark.parametrize("case", PARAMETER_CASES)
def test_runtime_parameters_are_validated_at_publish(refused_publishes: PublishBatch, case: str) -> None:
    refused_publishes.assert_refused(case)


def test_no_refused_package_left_a_blob_file(refused_publishes: PublishBatch) -> None:
    assert refused_publishes.new_blob_files == frozenset(), sorted(refused_publishes.new_blob_files)
