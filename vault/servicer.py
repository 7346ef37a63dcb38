"""gRPC edge of the Tokenization service: messages in, statuses out.

No exception text leaves this module unchecked: every error is mapped by ``vault.status`` to a
code and a message written to be safe, because gRPC sends the message to the client as is.
"""

from __future__ import annotations

import logging
import uuid

import grpc
from google.rpc import status_pb2
from tokenvault.v1 import tokenization_pb2 as pb
from tokenvault.v1 import tokenization_pb2_grpc as pb_grpc

from vault.errors import InvalidValue, TokenvaultError, Unauthenticated
from vault.identity import Caller, identity_from_auth_context
from vault.service import DetokenizeItem, ItemResult, TokenizationService, TokenizeItem
from vault.status import status_for

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "x-request-id"


class TokenizationServicer(pb_grpc.TokenizationServicer):
    def __init__(self, service: TokenizationService) -> None:
        self._service = service

    async def Tokenize(  # noqa: N802 - name fixed by the proto
        self, request: pb.TokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.TokenizeResponse:
        request_id = _start(context)
        try:
            caller = _caller(context)
            items = [
                TokenizeItem(item.template, item.value, item.reference, dict(item.metadata))
                for item in request.items
            ]
            results = await self._service.tokenize(caller, items, request_id=request_id)
        except Exception as error:  # noqa: BLE001 - every error becomes a status here
            await _abort(context, error, request_id, "Tokenize")
        return pb.TokenizeResponse(results=[_tokenize_result(result) for result in results])

    async def Detokenize(  # noqa: N802
        self, request: pb.DetokenizeRequest, context: grpc.aio.ServicerContext
    ) -> pb.DetokenizeResponse:
        request_id = _start(context)
        try:
            caller = _caller(context)
            if request.reveal not in (pb.REVEAL_MODE_FULL, pb.REVEAL_MODE_MASKED):
                raise InvalidValue("reveal", "must be REVEAL_MODE_FULL or REVEAL_MODE_MASKED")
            items = [
                DetokenizeItem(item.template, item.token, item.reference) for item in request.items
            ]
            results = await self._service.detokenize(
                caller,
                items,
                masked=request.reveal == pb.REVEAL_MODE_MASKED,
                purpose=request.purpose,
                request_id=request_id,
            )
        except Exception as error:  # noqa: BLE001
            await _abort(context, error, request_id, "Detokenize")
        return pb.DetokenizeResponse(results=[_detokenize_result(result) for result in results])

    async def ListTemplates(  # noqa: N802
        self, request: pb.ListTemplatesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListTemplatesResponse:
        request_id = _start(context)
        try:
            caller = _caller(context)
            listing = self._service.template_scopes(caller)
        except Exception as error:  # noqa: BLE001
            await _abort(context, error, request_id, "ListTemplates")
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


def _start(context: grpc.aio.ServicerContext) -> str:
    request_id = uuid.uuid4().hex
    context.set_trailing_metadata(((REQUEST_ID_HEADER, request_id),))
    return request_id


def _caller(context: grpc.aio.ServicerContext) -> Caller:
    auth = context.auth_context()
    if not auth:
        raise Unauthenticated("a client certificate is required (mutual TLS)")
    return identity_from_auth_context(auth)


async def _abort(
    context: grpc.aio.ServicerContext, error: Exception, request_id: str, method: str
) -> None:
    code, message = status_for(error)
    if isinstance(error, TokenvaultError):
        logger.info(
            "%s rejected",
            method,
            extra={"request_id": request_id, "status": code.name, "error": type(error).__name__},
        )
    else:
        logger.error(
            "%s failed",
            method,
            extra={"request_id": request_id, "status": code.name, "error": type(error).__name__},
        )
    await context.abort(code, message)


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
