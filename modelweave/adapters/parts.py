"""Adapters that reuse a part an earlier node already wrote, instead of running a model again.

Why: in an ensemble, the cheap tier's vote is often the answer the cheap model gave a few
hops earlier (``triage``: TF-IDF classifies, uncertain requests escalate to a ``parallel``
node whose second branch was TF-IDF again, on the same text). Re-running it costs a model call
and returns the same part; :class:`KeepPart` hands the envelope's part on as the branch's vote.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

from google.protobuf.message import Message as ProtoMessage
from pydantic import BaseModel, ConfigDict, field_validator

from modelweave.adapters.base import ModelAdapter
from modelweave.errors import FailedPrecondition, GraphSpecError
from modelweave.messages import PART_CLASSES, PART_FIELDS, part_name
from modelweave.v1 import messages_pb2 as pb


class KeepPartParams(BaseModel):
    """Parameters of :class:`KeepPart`.

    Attributes:
        part: The part type to hand on (``Classification``, ``Text`` ...; not ``Tensor``).
    """

    model_config = ConfigDict(extra="forbid")

    part: str = "Classification"

    @field_validator("part")
    @classmethod
    def _known_single_part(cls, value: str) -> str:
        try:
            short = part_name(value)
        except GraphSpecError as exc:  # as a ValueError, pydantic names the field: "params.part: ..."
            raise ValueError(str(exc)) from None
        if short == "Tensor":
            raise ValueError("Tensor parts are a map of named tensors; KeepPart hands on one part")
        return short


class KeepPart(ModelAdapter):
    """Returns the envelope's ``part`` unchanged: an earlier node's output as this node's.

    The checker sees a node that consumes and produces ``part``, so a graph that uses it where
    no earlier node wrote the part is refused before it deploys.
    """

    Params = KeepPartParams
    blocking: ClassVar[bool] = False

    @classmethod
    def signature(cls, params: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
        """Consumes and produces ``params.part``."""
        part = cls.validate_params(params).part
        return (part,), part

    def predict(self, batch: Sequence[pb.Message]) -> list[ProtoMessage]:
        """A copy of each envelope's part.

        Raises:
            FailedPrecondition: an envelope lacks the part (a graph the checker could not follow).
        """
        field = PART_FIELDS[self.params.part]
        out: list[ProtoMessage] = []
        for message in batch:
            if not message.HasField(field):
                raise FailedPrecondition(f"KeepPart: the envelope has no {self.params.part} to keep")
            part = PART_CLASSES[self.params.part]()
            part.CopyFrom(getattr(message, field))
            out.append(part)
        return out
