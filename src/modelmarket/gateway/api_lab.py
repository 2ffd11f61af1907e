"""The lab's routes under ``/api`` (routed from ``gateway/api.py``), each authenticated:

- ``POST /api/feedback`` ``{"request_id", "score": 1-5, "label"?}``: feedback on one of the caller's billed calls
  (201 new, 200 replacing an earlier one; another account's call is 404, like an unknown one);
- ``GET /api/feedback/{request_id}``: the caller's feedback on one of its calls;
- ``GET /api/feedback?model=M``: feedback counted per version (calls scored, mean score, scores, labelled).

Bodies are JSON of at most ``FEEDBACK_BODY_MAX`` bytes, read before anything is stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from modelmarket.accounts import Account
from modelmarket.core.errors import InvalidInput, NotFound
from modelmarket.lab.feedback import FeedbackService, parse_feedback
from modelmarket.runtime.asgi import BodyTooLarge, read_body

FEEDBACK_BODY_MAX = 4096
MODEL_PARAM_MAX = 200


class _JSON(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def lab_routes(feedback: FeedbackService | None, authenticate: Callable[[Request], Awaitable[Account]]) -> list[Route]:
    def service() -> FeedbackService:
        if feedback is None:
            raise NotFound("feedback is not taken here")
        return feedback

    async def give(request: Request) -> Response:
        account = await authenticate(request)
        svc = service()
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > FEEDBACK_BODY_MAX:
            raise BodyTooLarge(f"request body is larger than the limit of {FEEDBACK_BODY_MAX} bytes")
        body = await read_body(request.receive, FEEDBACK_BODY_MAX)
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise InvalidInput('body: not JSON; send {"request_id": ..., "score": 1-5, "label": ...}') from None
        request_id, score, label = parse_feedback(doc)
        stored, new = await asyncio.to_thread(svc.give, account.id, request_id, score, label)
        return _JSON(stored.to_json(), 201 if new else 200)

    async def one(request: Request) -> Response:
        account = await authenticate(request)
        request_id = request.path_params["request_id"]
        return _JSON((await asyncio.to_thread(service().of_call, account.id, request_id)).to_json())

    async def counts(request: Request) -> Response:
        await authenticate(request)
        model = request.query_params.get("model")
        if model is not None and not 0 < len(model) <= MODEL_PARAM_MAX:
            raise InvalidInput(f"model: a model name of 1 to {MODEL_PARAM_MAX} characters")
        found = await asyncio.to_thread(service().per_version, model)
        return _JSON({"versions": [v.to_json() for v in found]})

    return [
        Route("/api/feedback", give, methods=["POST"]),
        Route("/api/feedback", counts, methods=["GET"]),
        Route("/api/feedback/{request_id}", one, methods=["GET"]),
    ]
