"""docs/grpc-reference.md: generated from the comments in proto/ and kept current."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from google.protobuf.descriptor import Descriptor, EnumDescriptor, FileDescriptor

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    models_pb2,
    nlu_pb2,
    plugins_pb2,
    rag_pb2,
    resources_pb2,
    tools_pb2,
    updates_pb2,
)
from rustaid.api_reference import build_descriptor_set, heading_anchor, render

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "grpc-reference.md"
MODULES = [common_pb2, generate_pb2, models_pb2, nlu_pb2, plugins_pb2, rag_pb2,
           resources_pb2, tools_pb2, updates_pb2]  # fmt: skip


def test_committed_reference_matches_the_protos(tmp_path: Path) -> None:
    out = tmp_path / "grpc-reference.md"
    # The command `make api-docs` runs.
    subprocess.run(
        [sys.executable, "-m", "rustaid.api_reference", "proto", str(out)], cwd=ROOT, check=True
    )
    assert out.read_text() == REFERENCE.read_text(), (
        "docs/grpc-reference.md is out of date: run `make api-docs` and commit it"
    )


def test_reference_has_every_rpc_message_field_and_enum_value() -> None:
    text = REFERENCE.read_text()
    for module in MODULES:
        file = module.DESCRIPTOR
        for service in file.services_by_name.values():
            assert f"### {service.name}\n" in text
            for rpc in service.methods:
                assert f"#### rpc {rpc.name}\n" in text
        for message in _messages(list(file.message_types_by_name.values())):
            if message.GetOptions().map_entry:
                continue
            name = message.full_name.removeprefix("rustaid.api.v1.")
            assert f"### message {name}\n" in text
            for field in message.fields:
                assert f"| `{field.name}` | {field.number} |" in text, (name, field.name)
        for enum in _enums(file):
            name = enum.full_name.removeprefix("rustaid.api.v1.")
            assert f"### enum {name}\n" in text
            for value in enum.values:
                assert f"| `{value.name}` | {value.number} |" in text


def _messages(messages: list[Descriptor]) -> list[Descriptor]:
    found: list[Descriptor] = []
    for m in messages:
        found += [m, *_messages(list(m.nested_types))]
    return found


def _enums(file: FileDescriptor) -> list[EnumDescriptor]:
    enums = list(file.enum_types_by_name.values())
    for message in _messages(list(file.message_types_by_name.values())):
        enums += list(message.enum_types)
    return enums


SAMPLE = """\
syntax = "proto3";

package demo.v1;

import "google/protobuf/duration.proto";

// Says things.
service EchoService {
  // Echoes each line back | as it comes.
  rpc Echo(stream EchoRequest) returns (stream EchoResponse);
}

// One line.
message EchoRequest {
  // The text.
  //
  // Empty is an error.
  string text = 1;
  // How often, 0 for once.
  optional int32 times = 2;
  // Labels by name (a | b).
  map<string, Level> labels = 3;
  // Where the text comes from.
  oneof origin {
    // Typed.
    bool typed = 4;
    // Pasted.
    Inner pasted = 5;
  }
  // Pasted text.
  message Inner {
    // How long pasting took.
    google.protobuf.Duration took = 1;
  }
}

// The echo.
message EchoResponse {
  // Each echo, in order.
  repeated string lines = 1;
}

// How loud.
enum Level {
  // Not said.
  LEVEL_UNSPECIFIED = 0;
  // Loud.
  LEVEL_LOUD = 1;
}
"""


def test_reference_renders_types_streams_oneofs_and_comments(tmp_path: Path) -> None:
    (tmp_path / "demo" / "v1").mkdir(parents=True)
    (tmp_path / "demo" / "v1" / "echo.proto").write_text(SAMPLE)
    text = render(build_descriptor_set(tmp_path))
    assert "`demo.v1` contract" in text
    assert "### EchoService\n\nDefined in `demo/v1/echo.proto`.\n\nSays things.\n" in text
    assert (
        "`EchoService.Echo`: stream [`EchoRequest`](#message-echorequest)"
        " → stream [`EchoResponse`](#message-echoresponse)\n\nEchoes each line back | as it comes."
    ) in text
    assert "| `text` | 1 | `string` | The text.<br>Empty is an error. |" in text
    assert "| `times` | 2 | optional `int32` | How often, 0 for once. |" in text
    labels = "| `labels` | 3 | map<`string`, [`Level`](#enum-level)> | Labels by name (a \\| b). |"
    assert labels in text
    assert "| `pasted` | 5 | [`EchoRequest.Inner`](#message-echorequestinner) | Pasted. |" in text
    assert "### message EchoRequest.Inner\n\nPasted text.\n" in text
    assert "| `took` | 1 | `google.protobuf.Duration` | How long pasting took. |" in text
    assert "Oneof `origin` (one of `typed`, `pasted`): Where the text comes from." in text
    assert "| `lines` | 1 | repeated `string` | Each echo, in order. |" in text
    assert "### enum Level\n\nHow loud.\n" in text
    assert "| `LEVEL_LOUD` | 1 | Loud. |" in text
    # Every heading a link points to exists.
    assert "### message EchoResponse\n" in text and "### enum Level\n" in text


def test_every_link_in_the_reference_reaches_a_heading() -> None:
    text = REFERENCE.read_text()
    headings = {heading_anchor(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}
    targets = set(re.findall(r"\]\(#([^)]+)\)", text))
    assert targets, "the reference links its types"
    assert not targets - headings, sorted(targets - headings)
    # The guide links to the reference, and its links into it reach a heading too.
    guide = (ROOT / "docs" / "grpc-api.md").read_text()
    assert "(grpc-reference.md)" in guide
    into = set(re.findall(r"\(grpc-reference\.md#([^)]+)\)", guide))
    assert into and not into - headings, sorted(into - headings)
