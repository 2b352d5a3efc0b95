"""Input columns to graph input parts, and the pre-flight checks of batch jobs (no Ray)."""

from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from modelweave.batch.inputs import ColumnChoice, InputMapping, derive_mapping, messages_from_table, parse_column_flags
from modelweave.batch.preflight import check_output, preflight, read_schema
from modelweave.batch.rows import append_columns, check_result_columns
from modelweave.batch.runner import JobOptions
from modelweave.checker import check_graph
from modelweave.errors import InvalidArgument
from modelweave.spec import load_graph
from modelweave.v1 import messages_pb2 as pb

MIXED = pa.schema([("id", pa.int64()), ("body", pa.string()), ("features", pa.list_(pa.float32())),
                   ("image", pa.list_(pa.list_(pa.uint8())))])


def test_mapping_is_derived_from_the_graph_inputs_and_the_schema() -> None:
    text = pa.schema([("id", pa.int64()), ("text", pa.string()), ("customer", pa.string())])
    assert derive_mapping(text, ["Text"]) == InputMapping(text="text")  # the column named like the part
    assert derive_mapping(MIXED, ["Text"]) == InputMapping(text="body")  # else the only string column
    assert derive_mapping(MIXED, ["modelweave.v1.Embedding"]) == InputMapping(embedding="features")
    both = derive_mapping(MIXED, ["Text", "Embedding", "Tensor"])
    assert both == InputMapping(text="body", embedding="features", tensors=(("image", "image"),))
    assert both.columns() == ["body", "features", "image"]
    # eval leaves the label column out of derivation.
    assert derive_mapping(text, ["Text"], exclude=["text"], columns={"Text": "customer"}).text == "customer"


def test_flags_override_the_derived_mapping() -> None:
    flags = parse_column_flags(["Embedding=features", "Tensor.pixels=image"])
    got = derive_mapping(MIXED, ["Embedding", "Tensor"], columns=flags)
    assert got == InputMapping(embedding="features", tensors=(("pixels", "image"),))
    assert derive_mapping(MIXED, ["Embedding", "Tensor"], columns=got.overrides()) == got
    assert derive_mapping(MIXED, ["Text"], text_column="id").text == "id"  # any scalar (CSV digits are int64)
    assert derive_mapping(MIXED, ["Text"], columns={"text": "body"}).text == "body"  # envelope field names work
    assert derive_mapping(MIXED, ["Text"], message_column="body") == InputMapping(message="body")


@pytest.mark.parametrize(("kwargs", "inputs", "message"), [
    ({"text_column": "features"}, ["Text"], "--text-column features: column 'features' is list<"),
    ({"text_column": "body"}, ["Embedding"], "--text-column body: the graph takes no Text input (its input: Em"),
    ({"columns": {"Embedding": "nope"}}, ["Embedding"], "--column Embedding=nope: input has no column 'nope'"),
    ({"columns": {"Embedding": "body"}}, ["Embedding"], "column 'body' is string; Embedding needs a list<float>"),
    ({"columns": {"Image": "body"}}, ["Text"], "--column Image=body: unknown part"),
    ({"columns": {"Verdict": "body"}}, ["Text"], "the graph takes no Verdict input (its input: Text)"),
    ({"columns": {"Classification": "body"}}, ["Text", "Classification"], "--message-column"),
    ({"columns": {"Text.x": "body"}}, ["Text"], "only Tensor takes a name"),
    ({"message_column": "features"}, ["Text"], "must hold protobuf JSON strings"),
    ({"message_column": "body", "text_column": "body"}, ["Text"], "do not combine"),
    ({}, ["Embedding", "Text"], None),
], ids=lambda v: str(v)[:30])
def test_bad_mappings_are_one_line_errors_naming_the_flag_and_column(kwargs: dict, inputs: list[str],
                                                                     message: str | None) -> None:
    schema = pa.schema([("body", pa.string()), ("features", pa.list_(pa.float64())), ("extra", pa.string())])
    if message is None:  # two string columns: Text is ambiguous, so it is left out unless required
        assert derive_mapping(schema, inputs) == InputMapping(embedding="features")
        with pytest.raises(InvalidArgument, match=r"no input column for the graph's Text input .* --column Text="):
            derive_mapping(schema, inputs, required={"Text"})
        return
    with pytest.raises(InvalidArgument) as info:
        derive_mapping(schema, inputs, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_rows_become_envelopes_and_bad_rows_become_their_errors() -> None:
    table = pa.table({
        "body": ["hi", None, "yo"],
        "features": pa.array([[1.0, 2.0], None, [3.0, None]], type=pa.list_(pa.float32())),
        "image": pa.array([[[1, 2], [3, 4]], [[1], [2, 3]], None], type=pa.list_(pa.list_(pa.uint8()))),
    })
    mapping = InputMapping(text="body", embedding="features", tensors=(("img", "image"),))
    first, second, third = messages_from_table(table, mapping)
    assert isinstance(first, pb.Message) and first.text.content == "hi" and list(first.embedding.values) == [1, 2]
    tensor = first.tensors["img"]
    assert tensor.dtype == pb.DTYPE_UINT8 and list(tensor.shape) == [2, 2] and tensor.data == bytes([1, 2, 3, 4])
    assert isinstance(second, InvalidArgument) and "not a rectangular tensor" in str(second)
    assert isinstance(third, InvalidArgument) and "'features' has a null value" in str(third)
    floats = messages_from_table(pa.table({"t": pa.array([[0.5, 1.5]], type=pa.list_(pa.float64()))}),
                                 InputMapping(tensors=(("t", "t"),)))[0]
    assert isinstance(floats, pb.Message)
    assert np.frombuffer(floats.tensors["t"].data, dtype=np.float64).tolist() == [0.5, 1.5]


def test_rows_a_block_cannot_convert_fail_alone_instead_of_the_whole_block() -> None:
    # Each of these raised out of the conversion before, losing every row of the batch.
    ints = pa.table({"px": pa.array([[1, None], [3, 4]], type=pa.list_(pa.int64()))})
    bad, good = messages_from_table(ints, InputMapping(tensors=(("px", "px"),)))
    assert isinstance(bad, InvalidArgument) and "'px': has a null value" in str(bad)
    assert isinstance(good, pb.Message) and list(good.tensors["px"].shape) == [2]
    floats = pa.table({"px": pa.array([[1.0, None]], type=pa.list_(pa.float32()))})
    (nan,) = messages_from_table(floats, InputMapping(tensors=(("px", "px"),)))
    assert isinstance(nan, InvalidArgument)  # not a silent NaN
    huge = pa.table({"m": ['{"text": {"content": "x"}, "n": ' + "1" * 5000 + "}", '{"text": {"content": "ok"}}']})
    too_long, fine = messages_from_table(huge, InputMapping(message="m"))
    assert isinstance(too_long, InvalidArgument) and "integer literal" in str(too_long)
    assert isinstance(fine, pb.Message)
    latin1 = pa.table({"body": pa.array([b"caf\xe9", "caf\u00e9".encode()], type=pa.binary())})
    not_utf8, utf8 = messages_from_table(latin1, InputMapping(text="body"))
    assert isinstance(not_utf8, InvalidArgument) and "not UTF-8" in str(not_utf8)
    assert isinstance(utf8, pb.Message) and utf8.text.content == "caf\u00e9"  # not "b'caf\\xc3\\xa9'"


def test_a_later_block_without_a_mapped_column_or_with_another_type_converts_its_rows() -> None:
    # The mapping comes from the first file: a JSON-lines file whose rows never hold a key
    # yields blocks without that column, or with a column of nulls.
    (row,) = messages_from_table(pa.table({"other": ["x"]}), InputMapping(text="body"))
    assert isinstance(row, pb.Message) and row.text.content == ""  # as a null text: the executor names it
    empty = pa.table({"px": pa.array([[], None], type=pa.list_(pa.null()))})
    assert all(isinstance(m, pb.Message) and not m.tensors for m in
               messages_from_table(empty, InputMapping(tensors=(("px", "px"),))))
    shorts = pa.table({"px": pa.array([[1, 2]], type=pa.list_(pa.int16()))})
    (odd,) = messages_from_table(shorts, InputMapping(tensors=(("px", "px"),)))
    assert isinstance(odd, InvalidArgument) and "int16" in str(odd)


def test_a_message_column_carries_any_parts_as_protobuf_json() -> None:
    good = json.dumps({"text": {"content": "hi"}, "embedding": {"values": [0.5]}, "metadata": {"k": "v"}})
    deep = json.dumps({"metadata": {"k": "v"}, "x": [[[[[[[[1]]]]]]]]})
    table = pa.table({"m": [good, "{not json", '{"bogus": 1}', None, deep]})
    ok, not_json, unknown, null, too_deep = messages_from_table(table, InputMapping(message="m"), max_json_depth=4)
    assert isinstance(ok, pb.Message) and ok.text.content == "hi" and ok.metadata["k"] == "v"
    assert "is not JSON" in str(not_json) and "bogus" in str(unknown) and "null in this row" in str(null)
    assert "deeper than 4 levels" in str(too_deep)


def test_result_column_collisions_name_the_column_and_the_prefix_flag() -> None:
    with pytest.raises(InvalidArgument, match=r"input column\(s\) 'label' collide .* --prefix"):
        check_result_columns(["id", "label"])
    check_result_columns(["id", "label"], prefix="mw_")
    with pytest.raises(InvalidArgument, match="'trace_json'"):
        check_result_columns(["trace_json"], include_trace=True)
    with pytest.raises(InvalidArgument, match="'error'"):  # the graph stage refuses it the same way
        append_columns(pa.table({"error": [1]}), [{}])


# -- pre-flight ---------------------------------------------------------------------------------


@pytest.fixture
def files(tmp_path: pathlib.Path) -> pathlib.Path:
    table = pa.table({"id": [1, 2], "text": ["a", "b"], "label": ["x", "y"],
                      "features": pa.array([[1.0], [2.0]], type=pa.list_(pa.float32()))})
    pq.write_table(table, tmp_path / "in.parquet")
    pacsv.write_csv(table.select(["id", "text"]), tmp_path / "in.csv")
    (tmp_path / "in.jsonl").write_text('{"text": "a", "features": [1.5, 2]}\n{"text": "b", "features": [1]}\n')
    (tmp_path / "folder").mkdir()
    pq.write_table(table, tmp_path / "folder" / "part-0.parquet")
    (tmp_path / "folder" / "_SUCCESS").write_text("")
    return tmp_path


def test_the_schema_comes_from_the_first_file_of_a_file_folder_or_glob(files: pathlib.Path) -> None:
    schema, fmt = read_schema(str(files / "in.parquet"))
    assert fmt == "parquet" and schema.field("features").type == pa.list_(pa.float32())
    assert read_schema(str(files / "in.csv"))[0].names == ["id", "text"]
    schema, fmt = read_schema(str(files / "in.jsonl"))
    assert fmt == "json" and schema.field("features").type == pa.list_(pa.float64())
    assert read_schema(str(files / "folder"))[0].names == schema_names(files)
    assert read_schema(str(files / "*.csv"))[1] == "csv"


def schema_names(files: pathlib.Path) -> list[str]:
    return pq.read_schema(files / "in.parquet").names


@pytest.mark.parametrize(("path", "fmt", "message"), [
    ("missing.parquet", None, "input '{d}/missing.parquet' does not exist"),
    ("*.orc", None, "no files match"),
    ("in.csv", "parquet", "is not readable as parquet"),
    ("empty", None, "holds no parquet, CSV or JSON-lines files"),
    ("noext", None, "cannot tell the format"),
])
def test_unreadable_inputs_are_one_line_errors(files: pathlib.Path, path: str, fmt: str | None,
                                               message: str) -> None:
    (files / "empty").mkdir()
    (files / "noext").write_text("x")
    with pytest.raises(InvalidArgument) as info:
        read_schema(str(files / path), fmt)
    assert message.format(d=files) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.skipif(sys.platform == "win32" or os.geteuid() == 0, reason="root reads any file")
def test_an_input_without_read_permission_is_named(files: pathlib.Path) -> None:
    (files / "in.csv").chmod(0)
    with pytest.raises(InvalidArgument, match="is not readable"):
        read_schema(str(files / "in.csv"))


def test_the_output_must_be_absent_or_overwritten_and_writable(tmp_path: pathlib.Path) -> None:
    assert check_output(str(tmp_path / "new" / "out")) == "parquet"
    assert check_output(str(tmp_path / "out.jsonl")) == "json"
    (tmp_path / "done").mkdir()
    (tmp_path / "done" / "part-0.parquet").write_text("x")
    with pytest.raises(InvalidArgument, match="already exists; remove it or pass --overwrite"):
        check_output(str(tmp_path / "done"))
    assert check_output(str(tmp_path / "done"), overwrite=True) == "parquet"
    (tmp_path / "file").write_text("x")
    with pytest.raises(InvalidArgument, match="is a file"):
        check_output(str(tmp_path / "file"), overwrite=True)
    with pytest.raises(InvalidArgument, match="cannot be created: .* is a file"):
        check_output(str(tmp_path / "file" / "out"))
    with pytest.raises(InvalidArgument, match="unknown format"):
        check_output(str(tmp_path / "o"), "xlsx")
    if os.geteuid() != 0:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(InvalidArgument, match="not writable"):
            check_output(str(locked / "out"))


def test_preflight_runs_every_check_and_returns_the_mapping(files: pathlib.Path, demo_path: pathlib.Path,
                                                            tmp_path: pathlib.Path) -> None:
    demo = check_graph(load_graph(demo_path))
    options = JobOptions(input_path=str(files / "in.parquet"), output_path=str(tmp_path / "out"), prefix="mw_")
    found = preflight(demo, options)
    assert found.mapping == InputMapping(text="text") and found.input_format == found.output_format == "parquet"
    with pytest.raises(InvalidArgument, match="'label' collide"):
        preflight(demo, JobOptions(input_path=str(files / "in.parquet"), output_path=str(tmp_path / "out")))
    choice = ColumnChoice({"Text": "nope"})
    with pytest.raises(InvalidArgument, match="no column 'nope'"):
        choice.derive(found.schema, demo)


def test_eval_reads_any_envelope_field_from_a_batch_row() -> None:
    from modelweave.codecs import to_json
    from modelweave.evaluate import outcome_from_row

    message = pb.Message(classification=pb.Classification(label="7", model="knn"), metadata={"shelf": "b2"})
    row = {"result_json": to_json(message).decode(), "trace_json": None, "error": None}
    assert outcome_from_row(row, "7").predicted == "7"
    assert outcome_from_row(row, "knn", "classification.model").predicted == "knn"
    assert outcome_from_row(row, "b2", "metadata.shelf").predicted == "b2"
    failed = outcome_from_row({"result_json": None, "error": "INVALID_ARGUMENT: x"}, "7")
    assert failed.predicted is None and failed.error == "INVALID_ARGUMENT: x"
