"""Synchronous client for the ``tokenvault.v1.Tokenization`` gRPC service."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import grpc
from tokenvault.v1 import tokenization_pb2 as pb

from tokenvault_client._chunking import call_in_chunks
from tokenvault_client.errors import TokenvaultClientError, error_from_rpc
from tokenvault_client.models import (
    DetokenizeItem,
    DetokenizeOutcome,
    ItemError,
    Reveal,
    TemplateList,
    TokenizeItem,
    TokenizeOutcome,
)
from tokenvault_client.tls import TlsConfig

# Chunk size when the server does not report its limit, because ListTemplates was denied or
# returned 0. It is below the server's documented default of 10,000 items per request.
FALLBACK_MAX_BATCH_ITEMS = 1000

# gRPC's default 4 MiB receive limit can be too small for a response to a full batch.
MAX_RECEIVE_MESSAGE_BYTES = 64 * 1024 * 1024

# ListTemplates failing with one of these codes means this caller cannot learn the limit,
# so the client falls back to FALLBACK_MAX_BATCH_ITEMS instead of failing.
_DISCOVERY_FALLBACK_CODES = frozenset(
    {grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNIMPLEMENTED}
)

_ItemT = TypeVar("_ItemT")

_SERVICE = pb.DESCRIPTOR.services_by_name["Tokenization"]


class TokenvaultClient:
    """Client over one mutual-TLS channel; safe to share between threads.

    Every RPC gets a deadline of ``timeout`` seconds, which each method can override. Inputs
    larger than ``max_batch_items`` are sent as several requests. When ``max_batch_items`` is
    None, the first Tokenize or Detokenize requests the server's limit with ListTemplates and
    caches it. A call that fails as a whole raises a ``TokenvaultClientError`` subclass.
    """

    def __init__(
        self,
        target: str,
        tls: TlsConfig,
        *,
        timeout: float = 10.0,
        max_batch_items: int | None = None,
    ) -> None:
        if not target:
            raise ValueError("target is empty: expected HOST:PORT")
        _check_timeout(timeout)
        if max_batch_items is not None and max_batch_items < 1:
            raise ValueError(f"max_batch_items must be at least 1, got {max_batch_items}")

        self._target = target
        self._timeout = timeout
        self._max_batch_items = max_batch_items
        self._discovered_max_batch_items: int | None = None
        self._discovery_lock = threading.Lock()

        credentials = grpc.ssl_channel_credentials(
            root_certificates=tls.ca_cert,
            private_key=tls.client_key,
            certificate_chain=tls.client_cert,
        )
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_RECEIVE_MESSAGE_BYTES),
        ]
        if tls.server_name:
            options.append(("grpc.ssl_target_name_override", tls.server_name))
        self._channel = grpc.secure_channel(target, credentials, options=options)

        # The method handles are built from the descriptor rather than taken from the generated
        # tokenization_pb2_grpc module, which has no type stubs and fails strict mypy checks.
        self._tokenize_rpc = self._unary_method("Tokenize", pb.TokenizeRequest, pb.TokenizeResponse)
        self._detokenize_rpc = self._unary_method(
            "Detokenize", pb.DetokenizeRequest, pb.DetokenizeResponse
        )
        self._list_templates_rpc = self._unary_method(
            "ListTemplates", pb.ListTemplatesRequest, pb.ListTemplatesResponse
        )

    def __repr__(self) -> str:
        return f"TokenvaultClient(target={self._target!r})"

    def __enter__(self) -> TokenvaultClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the channel, cancelling calls still in progress."""
        self._channel.close()

    def tokenize(
        self, items: Iterable[TokenizeItem], *, timeout: float | None = None
    ) -> list[TokenizeOutcome]:
        """Tokenize ``items`` and return one outcome per item, in input order.

        A failed item gets an outcome with ``error`` set. ``timeout`` applies to each request
        separately when the input is split.
        """
        item_list = _as_list(items, TokenizeItem)
        deadline = self._resolve_timeout(timeout)

        def send(chunk: Sequence[TokenizeItem]) -> list[TokenizeOutcome]:
            request = pb.TokenizeRequest(items=[item.to_proto() for item in chunk])
            response = self._invoke(self._tokenize_rpc, request, deadline)
            _check_result_count(len(response.results), len(chunk))
            return [
                TokenizeOutcome.from_proto(item, result)
                for item, result in zip(chunk, response.results, strict=True)
            ]

        def fail_item(item: TokenizeItem, error: TokenvaultClientError) -> TokenizeOutcome:
            return TokenizeOutcome(
                reference=item.reference,
                template=item.template,
                error=_rejected_item_error(error),
            )

        if not item_list:
            return []
        return call_in_chunks(item_list, self._chunk_size(deadline), send, fail_item)

    def detokenize(
        self,
        items: Iterable[DetokenizeItem],
        *,
        reveal: Reveal,
        purpose: str = "",
        timeout: float | None = None,
    ) -> list[DetokenizeOutcome]:
        """Detokenize ``items`` and return one outcome per item, in input order.

        ``reveal`` selects full or masked values, and ``purpose`` (at most 256 characters) is
        recorded in the audit trail with every item. A failed item gets an outcome with
        ``error`` set. ``timeout`` applies to each request separately when the input is split.
        """
        reveal_mode = Reveal(reveal).to_proto()
        item_list = _as_list(items, DetokenizeItem)
        deadline = self._resolve_timeout(timeout)

        def send(chunk: Sequence[DetokenizeItem]) -> list[DetokenizeOutcome]:
            request = pb.DetokenizeRequest(
                items=[item.to_proto() for item in chunk], reveal=reveal_mode, purpose=purpose
            )
            response = self._invoke(self._detokenize_rpc, request, deadline)
            _check_result_count(len(response.results), len(chunk))
            return [
                DetokenizeOutcome.from_proto(item, result)
                for item, result in zip(chunk, response.results, strict=True)
            ]

        def fail_item(item: DetokenizeItem, error: TokenvaultClientError) -> DetokenizeOutcome:
            return DetokenizeOutcome(
                reference=item.reference,
                template=item.template,
                error=_rejected_item_error(error),
            )

        if not item_list:
            return []
        return call_in_chunks(item_list, self._chunk_size(deadline), send, fail_item)

    def list_templates(self, *, timeout: float | None = None) -> TemplateList:
        """Return the server's templates, the caller's scopes on each, and the batch limit."""
        response = self._invoke(
            self._list_templates_rpc, pb.ListTemplatesRequest(), self._resolve_timeout(timeout)
        )
        templates = TemplateList.from_proto(response)
        if templates.max_batch_items > 0:
            self._discovered_max_batch_items = templates.max_batch_items
        return templates

    def _unary_method(self, name: str, request_type: type[Any], response_type: type[Any]) -> Any:
        method = _SERVICE.methods_by_name[name]
        return self._channel.unary_unary(
            f"/{_SERVICE.full_name}/{method.name}",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )

    def _chunk_size(self, timeout: float) -> int:
        if self._max_batch_items is not None:
            return self._max_batch_items
        with self._discovery_lock:
            if self._discovered_max_batch_items is None:
                self._discovered_max_batch_items = self._fetch_max_batch_items(timeout)
            return self._discovered_max_batch_items

    def _fetch_max_batch_items(self, timeout: float) -> int:
        try:
            limit = self.list_templates(timeout=timeout).max_batch_items
        except TokenvaultClientError as error:
            if error.code in _DISCOVERY_FALLBACK_CODES:
                return FALLBACK_MAX_BATCH_ITEMS
            raise
        return limit if limit > 0 else FALLBACK_MAX_BATCH_ITEMS

    def _resolve_timeout(self, timeout: float | None) -> float:
        if timeout is None:
            return self._timeout
        _check_timeout(timeout)
        return timeout

    @staticmethod
    def _invoke(method: Callable[..., Any], request: Any, timeout: float) -> Any:
        try:
            return method(request, timeout=timeout)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from error


def _rejected_item_error(error: TokenvaultClientError) -> ItemError:
    # The message comes from the whole request, so it may name another item's template.
    return ItemError(error.code, f"request rejected as a whole: {error.details}")


def _check_timeout(timeout: float) -> None:
    if not timeout > 0:
        raise ValueError(f"timeout must be a positive number of seconds, got {timeout}")


def _as_list(items: Iterable[_ItemT], item_type: type[_ItemT]) -> list[_ItemT]:
    item_list = list(items)
    for index, item in enumerate(item_list):
        if not isinstance(item, item_type):
            raise TypeError(
                f"item {index} is a {type(item).__name__}, expected {item_type.__name__}"
            )
    return item_list


def _check_result_count(result_count: int, item_count: int) -> None:
    # The API returns one result per item, in request order. Any other count would pair
    # outcomes with the wrong items, so the whole call fails instead.
    if result_count != item_count:
        raise TokenvaultClientError(
            grpc.StatusCode.INTERNAL,
            f"server returned {result_count} results for {item_count} items",
        )
