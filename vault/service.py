"""Tokenize and detokenize batches: input checks, scopes, modes and the audit trail.

The servicer translates protobuf messages to the types here and each ``TokenvaultError`` to a
gRPC status. Item problems become item results; only whole-request problems raise.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from vault.abuse import AnomalyDetector, CallerSuspended
from vault.audit.trail import AuditUnavailable
from vault.call_audit import AuditRecorder, call_event, item_events, safe_template
from vault.errors import (
    InvalidValue,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    TokenvaultError,
)
from vault.formats.base import Mode, Side, Split, Template
from vault.freetext import check_free_text
from vault.identity import Caller, CallInfo
from vault.modes.vaulted import Revealed, TokenizeJob, VaultedTokenizer
from vault.modes.vaultless import VaultlessTokenizer
from vault.policy import Policy

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH_ITEMS = 10_000
MAX_INPUT_CHARS = 1024
MAX_REFERENCE_CHARS = 128
MAX_PURPOSE_CHARS = 256
MAX_METADATA_ENTRIES = 16
MAX_METADATA_VALUE_CHARS = 256
_METADATA_KEY = re.compile(r"[A-Za-z0-9_.-]{1,64}")
_TEMPLATE_NAME = re.compile(r"[a-z][a-z0-9_-]{0,63}")


@dataclass(frozen=True, repr=False)
class TokenizeItem:
    template: str
    value: str
    reference: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, repr=False)
class DetokenizeItem:
    template: str
    token: str
    reference: str = ""


@dataclass(repr=False)
class ItemResult:
    reference: str
    output: str | None = None
    error: TokenvaultError | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)


class TokenizationService:
    def __init__(
        self,
        *,
        templates: Mapping[str, Template],
        policy: Callable[[], Policy],
        vaultless: VaultlessTokenizer,
        vaulted: VaultedTokenizer,
        audit: AuditRecorder,
        anomaly: AnomalyDetector | None = None,
        max_batch_items: int = DEFAULT_MAX_BATCH_ITEMS,
    ) -> None:
        self.templates = dict(templates)
        self.max_batch_items = max_batch_items
        self._policy = policy
        self._vaultless = vaultless
        self._vaulted = vaulted
        self._audit = audit
        self._anomaly = anomaly

    async def tokenize(self, call: CallInfo, items: Sequence[TokenizeItem]) -> list[ItemResult]:
        caller = call.caller
        self._check_batch_size(len(items))
        policy = self._policy()
        results = [ItemResult(reference=item.reference) for item in items]
        self._check_templates_and_scopes(
            [item.template for item in items],
            results,
            allowed=lambda template: policy.allows(caller.identity, "tokenize", template),
            scope="tokenize",
            raise_when_all_fail=False,
        )
        if all(result.error is not None for result in results):
            await self._audit_tokenize(call, items, results)
            self._raise_if_all_failed(results)

        vaultless_jobs: list[tuple[int, Template, Split]] = []
        vaulted_jobs: list[tuple[int, TokenizeJob]] = []
        splits: dict[int, Split] = {}
        for position, item in enumerate(items):
            if results[position].error is not None:
                continue
            try:
                _check_reference(item.reference)
                template = self.templates[item.template]
                _check_metadata(template, item.metadata)
                split = template.split(_bounded(item.value, "value"), Side.VALUE)
            except TokenvaultError as error:
                results[position].error = error
                continue
            splits[position] = split
            if template.mode is Mode.VAULTLESS:
                vaultless_jobs.append((position, template, split))
            else:
                vaulted_jobs.append((position, TokenizeJob(template, split, dict(item.metadata))))

        if vaultless_jobs:
            outputs = await self._vaultless.tokenize([(t, s) for _, t, s in vaultless_jobs])
            for (position, _, _), output in zip(vaultless_jobs, outputs, strict=True):
                _store(results[position], output)
        if vaulted_jobs:
            vaulted_outputs = await self._vaulted.tokenize([job for _, job in vaulted_jobs])
            for (position, _), output in zip(vaulted_jobs, vaulted_outputs, strict=True):
                _store(results[position], output)

        await self._audit_tokenize(call, items, results)
        _log_outcome("tokenize", call, results)
        return results

    async def detokenize(
        self,
        call: CallInfo,
        items: Sequence[DetokenizeItem],
        *,
        masked: bool,
        purpose: str,
    ) -> list[ItemResult]:
        caller = call.caller
        self._check_batch_size(len(items))
        if len(purpose) > MAX_PURPOSE_CHARS:
            raise InvalidValue("purpose", f"must be at most {MAX_PURPOSE_CHARS} characters")
        check_free_text("purpose", purpose)
        policy = self._policy()
        scope = "detokenize.masked" if masked else "detokenize"
        results = [ItemResult(reference=item.reference) for item in items]
        self._check_templates_and_scopes(
            [item.template for item in items],
            results,
            allowed=lambda template: policy.may_detokenize(
                caller.identity, template, masked=masked
            ),
            scope=scope,
            raise_when_all_fail=False,
        )

        splits: dict[int, Split] = {}
        vaultless_jobs: list[tuple[int, Template, Split]] = []
        vaulted_jobs: list[tuple[int, Template, Split]] = []
        for position, item in enumerate(items):
            if results[position].error is not None:
                continue
            try:
                _check_reference(item.reference)
                template = self.templates[item.template]
                if not purpose and policy.template(template.name).purpose_required:
                    raise InvalidValue("purpose", f"is required for template {template.name}")
                split = template.split(_bounded(item.token, "token"), Side.TOKEN)
            except TokenvaultError as error:
                results[position].error = error
                continue
            splits[position] = split
            jobs = vaultless_jobs if template.mode is Mode.VAULTLESS else vaulted_jobs
            jobs.append((position, template, split))

        await self._check_anomaly(call, len(vaultless_jobs) + len(vaulted_jobs))
        if vaultless_jobs:
            outputs = await self._vaultless.detokenize([(t, s) for _, t, s in vaultless_jobs])
            for (position, _, _), output in zip(vaultless_jobs, outputs, strict=True):
                _store(results[position], output)
        if vaulted_jobs:
            revealed = await self._vaulted.detokenize([(t, s) for _, t, s in vaulted_jobs])
            for (position, _, _), outcome in zip(vaulted_jobs, revealed, strict=True):
                _store(results[position], outcome)

        if masked:
            # A masked reveal shows neither the full value nor the metadata stored with it.
            for position, result in enumerate(results):
                result.metadata = {}
                if result.output is not None:
                    result.output = self.templates[items[position].template].mask(result.output)

        await self._audit_detokenize(call, items, results, splits, masked, purpose)
        self._raise_if_all_failed(results)
        _log_outcome("detokenize", call, results)
        return results

    def template_scopes(self, caller: Caller) -> list[tuple[Template, list[str]]]:
        policy = self._policy()
        return [
            (template, policy.granted_for_template(caller.identity, name))
            for name, template in sorted(self.templates.items())
        ]

    # Whole-request checks

    def _check_batch_size(self, count: int) -> None:
        if count == 0:
            raise InvalidValue("items", f"must contain 1 to {self.max_batch_items} items")
        if count > self.max_batch_items:
            raise ResourceExhausted(
                f"items: {count} items exceed the limit of {self.max_batch_items} per request;"
                " split the batch"
            )

    def _check_templates_and_scopes(
        self,
        names: Sequence[str],
        results: list[ItemResult],
        *,
        allowed: Callable[[str], bool],
        scope: str,
        raise_when_all_fail: bool = True,
    ) -> None:
        """Mark items with unknown templates or missing scopes.

        Raises when every item fails for the same reason and ``raise_when_all_fail`` is set.
        The batch calls clear it, so they can audit the refused items before failing the call.
        """
        for position, name in enumerate(names):
            if name not in self.templates:
                results[position].error = NotFound(
                    f"template: {_printable_name(name)} is not defined"
                )
            elif not allowed(name):
                results[position].error = PermissionDenied(f"{scope}:{name}")
        if raise_when_all_fail:
            self._raise_if_all_failed(results)

    @staticmethod
    def _raise_if_all_failed(results: Sequence[ItemResult]) -> None:
        errors = [result.error for result in results]
        if all(
            isinstance(error, NotFound) and str(error).startswith("template:") for error in errors
        ):
            raise errors[0]  # type: ignore[misc]
        if all(isinstance(error, PermissionDenied) for error in errors):
            raise errors[0]  # type: ignore[misc]

    async def _check_anomaly(self, call: CallInfo, items: int) -> None:
        """Reject the call and suspend the caller if its anomaly rule requires it.

        NOTE: the guard has already charged the call to the caller's rate limit by now.
        """
        rules = self._policy().caller(call.caller.identity)
        if self._anomaly is None or rules is None or rules.anomaly is None or items == 0:
            return
        try:
            await self._anomaly.check_detokenize(call.caller.identity, items, rules.anomaly)
        except CallerSuspended:
            alert = call_event(
                call, "alert.caller_suspended", "PERMISSION_DENIED", item_count=items
            )
            try:
                await self._audit.record([alert], durable=False)
            except AuditUnavailable:
                logger.error(
                    "suspension alert not audited",
                    extra={"request_id": call.request_id, "caller": call.caller.identity},
                )
            raise

    async def _audit_tokenize(
        self, call: CallInfo, items: Sequence[TokenizeItem], results: Sequence[ItemResult]
    ) -> None:
        entries = [
            (
                safe_template(item.template, self.templates),
                status_name(result.error),
                _canonical_token(self.templates.get(item.template), result.output),
            )
            for item, result in zip(items, results, strict=True)
        ]
        try:
            await self._audit.record(item_events(call, "tokenize", entries), durable=False)
        except AuditUnavailable:
            # Tokens reveal nothing, so tokenization goes on; the gap is logged and counted.
            logger.error(
                "tokenize not audited: audit queue unavailable",
                extra={"request_id": call.request_id, "caller": call.caller.identity},
            )

    async def _audit_detokenize(
        self,
        call: CallInfo,
        items: Sequence[DetokenizeItem],
        results: Sequence[ItemResult],
        splits: Mapping[int, Split],
        masked: bool,
        purpose: str,
    ) -> None:
        """Write the detokenize events and wait for their commit; fail closed if it fails."""
        entries = [
            (
                safe_template(item.template, self.templates),
                status_name(result.error),
                splits[position].canonical if position in splits else None,
            )
            for position, (item, result) in enumerate(zip(items, results, strict=True))
        ]
        events = item_events(
            call, "detokenize", entries, reveal="masked" if masked else "full", purpose=purpose
        )
        try:
            await self._audit.record(events, durable=True)
        except AuditUnavailable:
            logger.error(
                "audit write failed, so no value was revealed",
                extra={"request_id": call.request_id, "caller": call.caller.identity},
            )
            raise


def status_name(error: TokenvaultError | None) -> str:
    """Return the gRPC status name that ``error`` maps to (``OK`` for no error)."""
    from vault.status import status_code_for

    return "OK" if error is None else status_code_for(error).name


def _store(result: ItemResult, output: str | Revealed | TokenvaultError) -> None:
    if isinstance(output, TokenvaultError):
        result.error = output
    elif isinstance(output, Revealed):
        result.output = output.value
        result.metadata = output.metadata
    else:
        result.output = output


def _bounded(text: str, field_name: str) -> str:
    if len(text) > MAX_INPUT_CHARS:
        raise InvalidValue(field_name, f"must be at most {MAX_INPUT_CHARS} characters")
    return text


def _check_reference(reference: str) -> None:
    if len(reference) > MAX_REFERENCE_CHARS:
        raise InvalidValue("reference", f"must be at most {MAX_REFERENCE_CHARS} characters")
    check_free_text("reference", reference)


def _check_metadata(template: Template, metadata: Mapping[str, str]) -> None:
    if not metadata:
        return
    if template.mode is Mode.VAULTLESS:
        raise InvalidValue("metadata", f"template {template.name} is vaultless and stores nothing")
    if len(metadata) > MAX_METADATA_ENTRIES:
        raise InvalidValue("metadata", f"must have at most {MAX_METADATA_ENTRIES} entries")
    for key, value in metadata.items():
        if not _METADATA_KEY.fullmatch(key):
            raise InvalidValue("metadata", "keys must be 1 to 64 characters of A-Z a-z 0-9 _ . -")
        check_free_text("metadata", value)
        if len(value) > MAX_METADATA_VALUE_CHARS:
            raise InvalidValue(
                "metadata", f"values must be at most {MAX_METADATA_VALUE_CHARS} characters"
            )


def _printable_name(name: str) -> str:
    return repr(name) if _TEMPLATE_NAME.fullmatch(name) else "the requested template"


def _canonical_token(template: Template | None, token: str | None) -> str | None:
    if template is None or token is None:
        return None
    return template.split(token, Side.TOKEN).canonical


def _log_outcome(operation: str, call: CallInfo, results: Sequence[ItemResult]) -> None:
    failed = sum(1 for result in results if result.error is not None)
    logger.info(
        "%s completed",
        operation,
        extra={
            "request_id": call.request_id,
            "caller": call.caller.identity,
            "items": len(results),
            "failed": failed,
        },
    )
