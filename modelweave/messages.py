"""Part types of the ``modelweave.v1.Message`` envelope and helpers to read/write them.

A *part* is one typed slot of the envelope (``Text``, ``Embedding``, ``Classification``,
``Tensor``, ``Generation``, ``Verdict``). Graph edges are typed by the set of parts
available on them; model adapters declare which parts they consume and which one
part they produce.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.message import Message as ProtoMessage

from modelweave.errors import GraphSpecError
from modelweave.v1 import messages_pb2 as pb

PACKAGE = "modelweave.v1"

#: Part message class by short name, in envelope field order.
PART_CLASSES: dict[str, type[ProtoMessage]] = {
    "Text": pb.Text,
    "Embedding": pb.Embedding,
    "Classification": pb.Classification,
    "Tensor": pb.Tensor,
    "Generation": pb.Generation,
    "Verdict": pb.Verdict,
}

#: Envelope field holding each part type.
PART_FIELDS: dict[str, str] = {
    "Text": "text",
    "Embedding": "embedding",
    "Classification": "classification",
    "Tensor": "tensors",
    "Generation": "generation",
    "Verdict": "verdict",
}

FIELD_TO_PART: dict[str, str] = {v: k for k, v in PART_FIELDS.items()}


def part_name(name: str) -> str:
    """Normalises ``"modelweave.v1.Text"`` or ``"Text"`` to ``"Text"``.

    Raises:
        GraphSpecError: if the name is not a known part type.
    """
    short = name.removeprefix(PACKAGE + ".")
    if short not in PART_CLASSES:
        known = ", ".join(PART_CLASSES)
        raise GraphSpecError(f"unknown message type {name!r}; known types: {known}")
    return short


def full_name(short: str) -> str:
    """Returns the protobuf full name of a part type, e.g. ``modelweave.v1.Text``."""
    return f"{PACKAGE}.{short}"


def parts_present(message: pb.Message) -> set[str]:
    """Returns the part types that are set on ``message``."""
    present = {FIELD_TO_PART[f.name] for f, _ in message.ListFields() if f.name in FIELD_TO_PART}
    if message.tensors:
        present.add("Tensor")
    return present


def set_part(envelope: pb.Message, part: ProtoMessage, *, tensor_name: str = "") -> None:
    """Merges one produced part into the envelope (replacing any previous value).

    Args:
        envelope: The request envelope, modified in place.
        part: A part message (``Text``, ``Classification`` ...).
        tensor_name: Key for ``Tensor`` parts in ``envelope.tensors``.
    """
    short = part.DESCRIPTOR.name
    if short not in PART_FIELDS:
        raise TypeError(f"{short} is not an envelope part type")
    if short == "Tensor":
        envelope.tensors[tensor_name or "output"].CopyFrom(part)
        return
    getattr(envelope, PART_FIELDS[short]).CopyFrom(part)


def copy_parts(source: pb.Message, target: pb.Message, parts: Iterable[str]) -> None:
    """Copies the named part types from ``source`` into ``target``."""
    for short in parts:
        field = PART_FIELDS[short]
        if short == "Tensor":
            for key, tensor in source.tensors.items():
                target.tensors[key].CopyFrom(tensor)
        elif source.HasField(field):
            getattr(target, field).CopyFrom(getattr(source, field))
        else:
            target.ClearField(field)


def clone(message: pb.Message) -> pb.Message:
    """Returns an independent copy of an envelope."""
    copy = pb.Message()
    copy.CopyFrom(message)
    return copy
