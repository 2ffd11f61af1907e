"""The data plane's side of a pipeline call (``gateway/pipeline.py``'s ``StepCaller``).

Each step is a real call of a published model: its inputs checked against the step model's contract, redacted as
a direct call's are (the step model's ``redact:`` and the caller's key policy, ``gateway/privacy.py``), admitted by
the limiter, forwarded to its runner (or provider), its usage event built with the pipeline call's id, but not
appended. Only when every step has succeeded are all the events (and the pipeline's own fee, if it charges one)
appended in one commit; a failing step releases everything and bills nothing.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from modelmarket.accounts import Account
from modelmarket.core.errors import InvalidInput
from modelmarket.core.tensors import Tensor, bytes_tensor
from modelmarket.gateway.attempts import ModelFailed
from modelmarket.gateway.dataplane import DataPlane, InferRequest, _prepare
from modelmarket.gateway.pipeline import StepOutcome
from modelmarket.metering.events import UsageEvent
from modelmarket.registry.catalogue import VersionRecord
from modelmarket.runtime.oip import NUMPY_DTYPES


@dataclass(slots=True)
class Pending:
    event: UsageEvent
    ticket: Any
    units: int


def encode_request(inputs: Sequence[Tensor]) -> tuple[bytes, bytes]:
    """An OIP request carrying ``inputs`` in the binary tensor extension (exact bytes, WAV included): the body
    and its ``Inference-Header-Content-Length``."""
    docs, blobs = [], []
    for tensor in inputs:
        if tensor.datatype == "BYTES":
            items = [x if isinstance(x, bytes) else str(x).encode() for x in tensor.data.reshape(-1)]
            blob = b"".join(struct.pack("<I", len(x)) + x for x in items)
        else:
            blob = np.ascontiguousarray(tensor.data, dtype=NUMPY_DTYPES[tensor.datatype].newbyteorder("<")).tobytes()
        docs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(tensor.data.shape),
                "parameters": {"binary_data_size": len(blob)},
            }
        )
        blobs.append(blob)
    head = orjson.dumps({"inputs": docs})
    return head + b"".join(blobs), str(len(head)).encode()


def decode_outputs(body: bytes, model: str) -> dict[str, Tensor]:
    """The outputs of a JSON OIP answer, by name."""
    try:
        doc = orjson.loads(body)
        out: dict[str, Tensor] = {}
        for item in doc["outputs"]:
            name, datatype, shape, data = item["name"], item["datatype"], item["shape"], item["data"]
            if datatype == "BYTES":
                out[name] = bytes_tensor(name, [str(x).encode("utf-8") for x in data], shape)
            else:
                array = np.asarray(data, dtype=NUMPY_DTYPES[datatype]).reshape(shape)
                out[name] = Tensor(name, datatype, list(array.shape), array)
        return out
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
        raise ModelFailed(f"model {model!r} answered outputs that cannot be read: {exc}") from None


class DataPlaneSteps:
    def __init__(self, dataplane: DataPlane) -> None:
        self.dp = dataplane

    def new_call_id(self) -> str:
        return self.dp.request_ids.next()

    async def call_step(
        self,
        account: Account,
        key_id: str | None,
        model: str,
        ref: str | None,
        inputs: Sequence[Tensor],
        *,
        pipeline_call_id: str,
    ) -> StepOutcome:
        dp = self.dp
        started = time.perf_counter()
        version = await dp.resolve(model, ref)
        if version.manifest.kind == "pipeline":
            raise InvalidInput(f"step model {version.ref} is a pipeline: pipelines do not nest")
        body, header_length = encode_request(inputs)
        prepared = _prepare(version, body, int(header_length), dp.input_limits(version.manifest.runtime))
        if dp.privacy is not None:  # the step model's redact: and the key's, as for a direct call of it
            redacted = await dp.privacy.redact_oip(version, key_id, prepared.decoded)
            if redacted is not None:  # counted as the step received it, sent redacted
                body, header_length = redacted.body, redacted.header_length
        ticket, priced = dp.admit(account, key_id, version, prepared.units)
        try:
            request = InferRequest(body, b"application/octet-stream", header_length)
            answer, units, out = await dp.forward(version, request, prepared.units)
            outputs = decode_outputs(answer.body, version.model_name)
            event = dp.usage_event(
                dp.request_ids.next(),
                account,
                version,
                units,
                started,
                None,
                priced,
                quantity_out=out,
                pipeline_call_id=pipeline_call_id,
            )
        except BaseException:
            dp.release(ticket)
            raise
        return StepOutcome(outputs, Pending(event, ticket, units))

    def fee(
        self, account: Account, key_id: str | None, pipeline: VersionRecord, *, pipeline_call_id: str
    ) -> Pending | None:
        if pipeline.manifest.pricing.price_per_iu == 0:
            return None
        units = 1  # the fee is per call, in the pipeline's own unit
        ticket, priced = self.dp.admit(account, key_id, pipeline, units)
        event = self.dp.usage_event(
            pipeline_call_id,
            account,
            pipeline,
            units,
            time.perf_counter(),
            None,
            priced,
            pipeline_call_id=pipeline_call_id,
        )
        return Pending(event, ticket, units)

    async def commit(self, pending: Sequence[object]) -> list[str]:
        items = [p for p in pending if isinstance(p, Pending)]
        try:
            await self.dp.writer.append_all([(p.event.id, p.event.encode()) for p in items])
        except BaseException:
            self.abandon(items)
            raise
        for p in items:
            self.dp.settle(p.ticket, p.units)
        return [p.event.id for p in items]

    def abandon(self, pending: Sequence[object]) -> None:
        for p in pending:
            if isinstance(p, Pending):
                self.dp.release(p.ticket)
