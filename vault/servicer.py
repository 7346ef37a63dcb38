"""gRPC edge of the Tokenization service: messages in, statuses out.

``CallGuard`` runs the per-call checks and turns every error into a status with a safe
message, because gRPC sends the message to the client as is.
"""

from __future__ import annotations

import logging

import grpc
from google.rpc import status_pb2
from tokenvault.v1 import tokenization_pb2 as pb
from tokenvault.v1 import tokenization_pb2_grpc as pb_grpc

from vault.errors import InvalidValue, TokenvaultError
from vault.guard import REQUEST_ID_HEADER, CallGuard, _caller  # noqa: F401 - used by older servicers
from vault.service import DetokenizeItem, ItemResult, TokenizationService, TokenizeItem
from vault.status import status_for
from vault.telemetry import Telemetry

logger = logging.getLogger(__name__)

SERVICE = "Tokenization"


class TokenizationServicer(pb_grpc.TokenizationServicer):
    def __init__(
        self, service: TokenizationService, guard: CallGuard, telemetry: Telemetry | None = None
    ) -> None:
        self._service = service
        self._guard = guard
        self._telemetry = telemetry

    async def Tokenize(  # noqa: N802 - name fixed by the proto
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        items = [
            TokenizeItem(item.template, item.value, item.reference, dict(item.metadata))
            for item in request.items
        ]
        templates = [item.template for item in items]
        async with self._guard.call(
            context,
            SERVICE,
            "Tokenize",
            operation="tokenize",
            items=len(items),
            templates=templates,
        ) as call:
            results = await self._service.tokenize(call.info, items)
            self._finish(call.rpc, "Tokenize", templates, results)
        return pb.TokenizeResponse(results=[_tokenize_result(result) for result in results])

    async def Detokenize(  # noqa: N802
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        items = [
            DetokenizeItem(item.template, item.token, item.reference) for item in request.items
        ]
        templates = [item.template for item in items]
        async with self._guard.call(
            context,
            SERVICE,
            "Detokenize",
            operation="detokenize",
            items=len(items),
            templates=templates,
        ) as call:
            if request.reveal not in (pb.REVEAL_MODE_FULL, pb.REVEAL_MODE_MASKED):
                raise InvalidValue("reveal", "must be REVEAL_MODE_FULL or REVEAL_MODE_MASKED")
            results = await self._service.detokenize(
                call.info,
                items,
                masked=request.reveal == pb.REVEAL_MODE_MASKED,
                purpose=request.purpose,
            )
            self._finish(call.rpc, "Detokenize", templates, results)
        return pb.DetokenizeResponse(results=[_detokenize_result(result) for result in results])

    async def ListTemplates(  # noqa: N802
        self, request: pb.ListTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTemplatesResponse:
        async with self._guard.call(context, SERVICE, "ListTemplates", operation="list") as call:
            listing = self._service.template_scopes(call.caller)
            call.rpc.set_outcome(grpc.StatusCode.OK)
        return pb.ListTemplatesResponse(
            templates=[
                pb.TemplateInfo(
                    name=template.name,
                    type=template.type_name,
                    mode=template.mode.value,
                    granted_scopes=scopes,
                )
                for template, scopes in listing
            ],
            max_batch_items=self._service.max_batch_items,
        )

    def _finish(
        self, rpc: object, method: str, templates: list[str], results: list[ItemResult]
    ) -> None:
        failed = sum(1 for result in results if result.error is not None)
        rpc.set_outcome(grpc.StatusCode.OK, failed)  # type: ignore[attr-defined]
        if self._telemetry is not None:
            self._telemetry.record_items(
                method,
                [(t, r.error is None) for t, r in zip(templates, results, strict=True)],
            )


def _item_status(error: TokenvaultError | Exception) -> status_pb2.Status:
    code, message = status_for(error)
    return status_pb2.Status(code=code.value[0], message=message)


def _tokenize_result(result: ItemResult) -> pb.TokenizeResult:
    if result.error is not None:
        return pb.TokenizeResult(reference=result.reference, error=_item_status(result.error))
    return pb.TokenizeResult(reference=result.reference, token=result.output)


def _detokenize_result(result: ItemResult) -> pb.DetokenizeResult:
    if result.error is not None:
        return pb.DetokenizeResult(reference=result.reference, error=_item_status(result.error))
    return pb.DetokenizeResult(
        reference=result.reference, value=result.output, metadata=dict(result.metadata)
    )
