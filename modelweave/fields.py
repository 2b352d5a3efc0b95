"""Type rules on envelope fields shared by node kinds: dotted field paths, conditions, type sets."""

from __future__ import annotations

from google.protobuf.descriptor import FieldDescriptor

from modelweave.errors import GraphSpecError
from modelweave.messages import FIELD_TO_PART, PART_FIELDS, full_name
from modelweave.spec_base import Condition
from modelweave.v1 import messages_pb2 as pb


def fmt_types(types: frozenset[str] | set[str]) -> str:
    """``{modelweave.v1.Text, ...}``: part types as users read them in errors."""
    return "{" + ", ".join(sorted(full_name(t) for t in types)) + "}" if types else "{}"


def field_part(path_expr: str, available: frozenset[str], where: str) -> tuple[str, FieldDescriptor | None]:
    """Validates a dotted envelope path like ``text.language`` against the protobuf schema.

    Returns:
        The part type the path reads ("" for ``metadata.*``) and the leaf field's descriptor.

    Raises:
        GraphSpecError: naming ``where`` and what is wrong.
    """
    head, _, rest = path_expr.partition(".")
    if head == "metadata":
        if not rest:
            raise GraphSpecError(f"{where}: field {path_expr!r} needs a key, e.g. metadata.lang")
        return "", None
    if head not in FIELD_TO_PART:
        fields = ", ".join(sorted([*PART_FIELDS.values(), "metadata"]))
        raise GraphSpecError(f"{where}: field {path_expr!r} does not start with one of {fields}")
    part = FIELD_TO_PART[head]
    if part not in available:
        raise GraphSpecError(
            f"{where}: field {path_expr!r} reads {full_name(part)}, which is not available here "
            f"(available: {fmt_types(available)})"
        )
    descriptor = pb.Message.DESCRIPTOR.fields_by_name[head].message_type
    fd: FieldDescriptor | None = None
    if part == "Tensor":
        return part, None  # tensors.<name>.<field>: keys are dynamic
    for piece in rest.split(".") if rest else []:
        if descriptor is None or piece not in descriptor.fields_by_name:
            raise GraphSpecError(f"{where}: {full_name(part)} has no field {piece!r} (in {path_expr!r})")
        fd = descriptor.fields_by_name[piece]
        descriptor = fd.message_type
    return part, fd


def check_condition(cond: Condition, available: frozenset[str], where: str) -> set[str]:
    """Type-checks one route condition; returns the part types it reads."""
    part, fd = field_part(cond.field, available, where)
    if fd is None and part != "Tensor" and cond.op in ("lt", "le", "gt", "ge"):
        what = "a metadata value (text)" if cond.field.startswith("metadata.") else "a whole message part"
        raise GraphSpecError(f"{where}: operator {cond.op!r} needs a numeric field; {cond.field!r} is {what}")
    if fd is not None and cond.op in ("lt", "le", "gt", "ge"):
        numeric = {FieldDescriptor.CPPTYPE_FLOAT, FieldDescriptor.CPPTYPE_DOUBLE,
                   FieldDescriptor.CPPTYPE_INT32, FieldDescriptor.CPPTYPE_INT64,
                   FieldDescriptor.CPPTYPE_UINT32, FieldDescriptor.CPPTYPE_UINT64}
        if fd.cpp_type not in numeric:
            raise GraphSpecError(f"{where}: operator {cond.op!r} needs a numeric field; {cond.field!r} is not")
        if cond.value is not None and not isinstance(cond.value, int | float):
            raise GraphSpecError(f"{where}: operator {cond.op!r} needs a numeric value, got {cond.value!r}")
    return {part} if part else set()
