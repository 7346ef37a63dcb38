"""Typed items, outcomes and template descriptions for the Tokenvault client.

Values and tokens are sensitive, so the ``repr`` of every item and outcome shows only the
template, the reference and, on failure, the item error. Item errors never contain the value,
because the server promises that for every item-level message.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field

import grpc
from google.rpc import status_pb2
from tokenvault.v1 import tokenization_pb2 as pb

_STATUS_CODE_BY_NUMBER = {status.value[0]: status for status in grpc.StatusCode}


class Reveal(enum.Enum):
    """How much of each value Detokenize returns."""

    # The whole value, which needs the detokenize:<template> scope.
    FULL = "full"
    # The value with its sensitive part replaced by '*', which needs detokenize.masked:<template>
    # or detokenize:<template>.
    MASKED = "masked"

    def to_proto(self) -> pb.RevealMode:
        if self is Reveal.FULL:
            return pb.REVEAL_MODE_FULL
        return pb.REVEAL_MODE_MASKED


@dataclass(frozen=True)
class ItemError:
    """Failure of one item in a batch. The other items of the batch are unaffected."""

    code: grpc.StatusCode
    message: str

    @classmethod
    def from_status(cls, status: status_pb2.Status) -> ItemError:
        """Convert a google.rpc.Status, mapping code numbers unknown to gRPC to UNKNOWN."""
        code = _STATUS_CODE_BY_NUMBER.get(status.code, grpc.StatusCode.UNKNOWN)
        return cls(code=code, message=status.message)


@dataclass(frozen=True)
class TokenizeItem:
    """One value to tokenize.

    ``reference`` is echoed back in the outcome, and the server accepts at most 128 characters.
    ``metadata`` contains non-sensitive labels that vaulted templates store with the token.
    Vaultless templates reject metadata.
    """

    template: str
    value: str = field(repr=False)
    reference: str = ""
    metadata: Mapping[str, str] | None = field(default=None, repr=False)

    def to_proto(self) -> pb.TokenizeItem:
        return pb.TokenizeItem(
            template=self.template,
            value=self.value,
            reference=self.reference,
            metadata=dict(self.metadata) if self.metadata else None,
        )


@dataclass(frozen=True)
class DetokenizeItem:
    """One token to turn back into its value. ``reference`` is also recorded in the audit trail."""

    template: str
    token: str = field(repr=False)
    reference: str = ""

    def to_proto(self) -> pb.DetokenizeItem:
        return pb.DetokenizeItem(template=self.template, token=self.token, reference=self.reference)


@dataclass(frozen=True)
class TokenizeOutcome:
    """Result of one ``TokenizeItem``: a token, or an error when ``token`` is None.

    ``template`` is copied from the input item because the server does not echo it.
    """

    reference: str
    template: str
    token: str | None = field(default=None, repr=False)
    error: ItemError | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_proto(cls, item: TokenizeItem, result: pb.TokenizeResult) -> TokenizeOutcome:
        if result.WhichOneof("outcome") == "token":
            return cls(reference=result.reference, template=item.template, token=result.token)
        return cls(
            reference=result.reference,
            template=item.template,
            error=_item_error(result.error if result.HasField("error") else None),
        )


@dataclass(frozen=True)
class DetokenizeOutcome:
    """Result of one ``DetokenizeItem``: a value, or an error when ``value`` is None.

    ``metadata`` is what Tokenize stored with a vaulted token, and is empty for vaultless
    templates. ``template`` is copied from the input item because the server does not echo it.
    """

    reference: str
    template: str
    value: str | None = field(default=None, repr=False)
    error: ItemError | None = None
    metadata: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def ok(self) -> bool:
        return self.error is None

    @classmethod
    def from_proto(cls, item: DetokenizeItem, result: pb.DetokenizeResult) -> DetokenizeOutcome:
        metadata = dict(result.metadata)
        if result.WhichOneof("outcome") == "value":
            return cls(
                reference=result.reference,
                template=item.template,
                value=result.value,
                metadata=metadata,
            )
        return cls(
            reference=result.reference,
            template=item.template,
            error=_item_error(result.error if result.HasField("error") else None),
            metadata=metadata,
        )


@dataclass(frozen=True)
class TemplateInfo:
    """A template defined on the server, with the scopes granted to the calling identity."""

    name: str
    # pan, iban, ssn, account_number, email, phone, name or generic.
    type: str
    # "vaultless" (FF1) or "vaulted" (random token stored encrypted).
    mode: str
    granted_scopes: tuple[str, ...]


@dataclass(frozen=True)
class TemplateList:
    """Response of ListTemplates."""

    templates: tuple[TemplateInfo, ...]
    # Largest number of items the server accepts in one request; 0 if the server sent none.
    max_batch_items: int

    @classmethod
    def from_proto(cls, response: pb.ListTemplatesResponse) -> TemplateList:
        templates = tuple(
            TemplateInfo(
                name=template.name,
                type=template.type,
                mode=template.mode,
                granted_scopes=tuple(template.granted_scopes),
            )
            for template in response.templates
        )
        return cls(templates=templates, max_batch_items=response.max_batch_items)


def _item_error(status: status_pb2.Status | None) -> ItemError:
    # A result with neither output nor error breaks the API contract; report it as an item
    # error so that one malformed result does not hide the rest of the batch.
    if status is None:
        return ItemError(grpc.StatusCode.UNKNOWN, "server returned neither an output nor an error")
    return ItemError.from_status(status)
