"""Parsers of untrusted input, fuzzed in-process: every one answers with the project's
own error type (which the gRPC edge maps to a status code) or a result, never with an
IndexError, struct.error, RecursionError, MemoryError or a hang.

- GGUF headers (rustaid/core/gguf.py): random bytes, and a real synthetic model with
  its header bytes changed, counts and lengths set huge, cut short -> GGUFError; huge
  declared counts must not allocate.
- Signed update metadata (rustaid/updates/metadata.py): random bytes, and a release
  really signed with ed25519, with its JSON changed anywhere -> MetadataRejected; the
  [updates] settings table -> InvalidArgument.
- models.toml (rustaid/core/models_toml.py): random TOML documents and damaged real
  ones -> entries and problems, never an exception.
- Document parsers (rustaid/builtin/parsers.py): damaged PDF, DOCX, HTML, Markdown and
  text files -> InvalidArgument with a message, or the parsed text.
- WebAssembly tools (rustaid/tools/wasm.py): damaged modules and modules returning any
  tool definitions -> WasmRefused, or tools.
"""

from __future__ import annotations

import io
import json
import math
import struct
import time
import tracemalloc
import zipfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rustaid.builtin import parsers
from rustaid.core import gguf
from rustaid.core.models_toml import KNOWN_KEYS, TomlModel, TomlProblem, load_models_toml
from rustaid.errors import InvalidArgument
from rustaid.providers import ParsedDocument
from rustaid.testing.proto_strategies import INTERESTING_STRINGS
from rustaid.testing.synthetic import write_llama_gguf
from rustaid.updates import config as updates_config
from rustaid.updates import metadata
from tests.fuzz.conftest import examples
from tests.rag.documents import encrypted, make_docx, make_pdf, with_outline

# One example may take this long at most (a hang shows as a failure, not a stuck run).
SLOW_S = 10.0


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fuzz-parsers")


def timed(fn: Callable[[], Any]) -> Any:
    start = time.monotonic()
    try:
        return fn()
    finally:
        elapsed = time.monotonic() - start
        assert elapsed < SLOW_S, f"took {elapsed:.1f} s: a parser must not hang on bad input"


def mutations(data: bytes, *, region: int | None = None) -> st.SearchStrategy[bytes]:
    """`data` with bytes changed (within the first `region` bytes), runs of bytes
    overwritten with extreme little-endian integers, cut short, or junk spliced in."""
    end = len(data) if region is None else min(region, len(data))
    pos = st.integers(0, max(0, end - 1))
    extremes = st.sampled_from([0, 1, 0x7F, 0xFF, 1 << 24, (1 << 31) - 1, 1 << 32, (1 << 63) - 1,
                                (1 << 64) - 1])  # fmt: skip

    def flip(changes: list[tuple[int, int]]) -> bytes:
        out = bytearray(data)
        for i, b in changes:
            out[i] = b
        return bytes(out)

    def stamp(i: int, value: int, width: int) -> bytes:
        raw = (value & ((1 << (8 * width)) - 1)).to_bytes(width, "little")
        return data[:i] + raw + data[i + width :]

    return st.one_of(
        st.lists(st.tuples(pos, st.integers(0, 255)), min_size=1, max_size=8).map(flip),
        st.builds(stamp, pos, extremes, st.sampled_from([4, 8])),
        pos.map(lambda i: data[:i]),
        st.builds(lambda i, junk: data[:i] + junk + data[i:], pos, st.binary(max_size=64)),
    )


# -- GGUF -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gguf_bytes(scratch: Path) -> bytes:
    return write_llama_gguf(scratch / "valid.gguf", seed=3).read_bytes()


def _gguf_string(s: bytes) -> bytes:
    return struct.pack("<Q", len(s)) + s


def _crafted_headers() -> st.SearchStrategy[bytes]:
    """Headers built field by field: counts, types, lengths and nesting at their limits."""
    counts = st.sampled_from([0, 1, 2, 1 << 20, (1 << 24) + 1, 1 << 40, (1 << 64) - 1])
    vtypes = st.integers(0, 14)

    def kv(key: bytes, vtype: int, payload: bytes) -> bytes:
        return _gguf_string(key) + struct.pack("<I", vtype) + payload

    nested = st.integers(1, 5000).map(  # arrays of arrays of arrays...
        lambda depth: kv(b"a", 9, (struct.pack("<IQ", 9, 1)) * depth + struct.pack("<IQ", 4, 0))
    )
    big_array = st.builds(
        lambda et, n: kv(b"tokenizer.ggml.tokens", 9, struct.pack("<IQ", et, n)), vtypes, counts
    )
    alignment = st.one_of(
        st.builds(lambda t, v: kv(b"general.alignment", t, v), st.just(8), st.binary(max_size=16)),
        st.builds(
            lambda v: kv(b"general.alignment", 4, struct.pack("<I", v)),
            st.sampled_from([0, 1, 3, (1 << 32) - 1]),
        ),
        st.builds(
            lambda v: kv(b"general.alignment", 12, struct.pack("<d", v)),
            st.sampled_from([math.nan, math.inf, -1.0, 0.5]),
        ),
    )
    body = st.lists(st.one_of(nested, big_array, alignment, st.binary(max_size=32)), max_size=3)
    tensor = st.builds(
        lambda name, dims, dim, ttype, offset: (
            _gguf_string(name)
            + struct.pack("<I", dims)
            + struct.pack("<Q", dim) * min(dims, 10)
            + struct.pack("<IQ", ttype, offset)
        ),
        st.binary(max_size=8),
        st.sampled_from([0, 1, 4, 8, 9, 1 << 31]),
        counts,
        st.integers(0, 60),
        counts,
    )

    def header(version: int, kvs: list[bytes], tensors: list[bytes], n_kv: Any, n_t: Any) -> bytes:
        n_kv = len(kvs) if n_kv is None else n_kv  # mostly the true counts, sometimes not
        n_t = len(tensors) if n_t is None else n_t
        return b"GGUF" + struct.pack("<IQQ", version, n_t, n_kv) + b"".join(kvs + tensors)

    return st.builds(
        header,
        st.sampled_from([3, 2, 4, 0]),
        body,
        st.lists(tensor, max_size=2),
        st.one_of(st.none(), st.none(), counts),
        st.one_of(st.none(), st.none(), counts),
    )


def check_gguf(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    tracemalloc.start()
    try:
        try:
            info = timed(lambda: gguf.read_gguf(path))
        except gguf.GGUFError as e:
            assert str(e).strip()
        else:
            assert isinstance(info, gguf.GGUFInfo)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # The file is at most a few hundred KB: a parse that needs much more memory than that
    # believed a count in the file instead of the file's size.
    assert peak < 64 << 20, f"parsing a {len(data)}-byte file allocated {peak >> 20} MiB"


@settings(max_examples=examples(200))
@given(data=st.data())
def test_gguf_mutated_header(scratch: Path, gguf_bytes: bytes, data: st.DataObject) -> None:
    # The header, metadata (with the vocabulary) and tensor table: the first ~20 KB.
    blob = data.draw(mutations(gguf_bytes, region=20_000), label="file")
    check_gguf(scratch / "mutated.gguf", blob)


@settings(max_examples=examples(200))
@given(blob=st.one_of(_crafted_headers(), st.binary(max_size=512)))
def test_gguf_crafted_and_random(scratch: Path, blob: bytes) -> None:
    check_gguf(scratch / "crafted.gguf", blob)


# -- signed update metadata ---------------------------------------------------------------


@pytest.fixture(scope="module")
def signing() -> tuple[Any, metadata.Trust]:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

    key = Ed25519PrivateKey.generate()
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return key, metadata.Trust.from_keys([public], 1)


def _release_signed() -> dict[str, Any]:
    artifact = {
        "id": "tiny",
        "kind": "model",
        "version": "1.2.0",
        "size": 1234,
        "sha256": "ab" * 32,
        "url": "artifacts/tiny/1.2.0/tiny.gguf",
        "rollout": 50,
    }
    return {
        "_type": "release",
        "spec_version": 1,
        "version": 7,
        "expires": "2099-01-01T00:00:00Z",
        "channels": {"stable": [artifact], "beta": []},
    }


_JSON_LEAVES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(1 << 70), 1 << 70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(INTERESTING_STRINGS),
    st.text(max_size=20),
    st.sampled_from(
        [
            "0001-01-01T00:00:00+01:00",
            "9999-12-31T23:59:59-01:00",
            "2030-01-01T00:00:00",
            "ed25519:" + "0" * 64,
            "\ud800",
        ]
    ),
)
JSON = st.recursive(
    _JSON_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from _paths(v, (*prefix, i))


def replaced(doc: Any, where: tuple[Any, ...], value: Any) -> Any:
    """A copy of `doc` with the value at path `where` replaced (the whole doc for ())."""
    if not where:
        return value
    copy = json.loads(json.dumps(doc))
    node = copy
    for step in where[:-1]:
        node = node[step]
    node[where[-1]] = value
    return copy


def json_mutations(doc: Any) -> st.SearchStrategy[Any]:
    paths = list(_paths(doc))
    return st.builds(replaced, st.just(doc), st.sampled_from(paths), JSON)


def _check_metadata(fn: Callable[[], Any]) -> None:
    try:
        timed(fn)
    except (metadata.MetadataRejected, InvalidArgument) as e:
        assert e.message.strip()


@settings(max_examples=examples(250))
@given(data=st.data())
def test_release_metadata(signing: tuple[Any, metadata.Trust], data: st.DataObject) -> None:
    """A release changed anywhere, then (re-)signed so that the content checks are
    reached, or left with the signature of the original."""
    key, trust = signing
    signed = data.draw(json_mutations(_release_signed()), label="signed")
    sign_again = data.draw(st.booleans(), label="sign again")
    original = _release_signed()
    try:
        signature = metadata.sign(signed if sign_again else original, key)
    except (metadata.MetadataRejected, UnicodeEncodeError, TypeError, ValueError):
        signature = metadata.sign(original, key)  # not signable: keep the old signature
    envelope = {"signed": signed, "signatures": [signature]}
    raw = data.draw(
        st.one_of(
            st.just(json.dumps(envelope).encode()),
            json_mutations(envelope).map(lambda d: json.dumps(d).encode()),
            mutations(json.dumps(envelope).encode()),
        ),
        label="raw",
    )
    now = datetime(2030, 1, 1, tzinfo=UTC)
    _check_metadata(lambda: metadata.verify_release(raw, trust, now=now, floor=3))


@settings(max_examples=examples(120))
@given(raw=st.one_of(st.binary(max_size=256), JSON.map(lambda v: json.dumps(v).encode()),
                     st.sampled_from([b"[" * 100_000, b'{"a":' * 50_000, b"1" * 5_000,
                                      b'{"signed": {}, "signatures": []}'])))  # fmt: skip
def test_metadata_envelope(signing: tuple[Any, metadata.Trust], raw: bytes) -> None:
    _, trust = signing
    _check_metadata(lambda: metadata.parse_document(raw, "metadata.json"))
    _check_metadata(lambda: metadata.next_trust(trust, raw, "root/1.json"))


@settings(max_examples=examples(120))
@given(data=st.data())
def test_root_rotation(signing: tuple[Any, metadata.Trust], data: st.DataObject) -> None:
    key, trust = signing
    root = metadata.root_signed(1, trust.keys.values(), 1)
    signed = data.draw(json_mutations(root), label="root")
    try:
        signature = metadata.sign(signed, key)
    except (metadata.MetadataRejected, UnicodeEncodeError, TypeError, ValueError):
        signature = metadata.sign(root, key)
    raw = json.dumps({"signed": signed, "signatures": [signature]}).encode()
    _check_metadata(lambda: metadata.next_trust(trust, raw, "root/1.json"))


@settings(max_examples=examples(120))
@given(
    section=st.one_of(
        JSON,
        st.dictionaries(
            st.sampled_from(sorted(updates_config._KEYS)), JSON, max_size=6
        ),  # the known keys with any values
    )
)
def test_updates_settings(scratch: Path, section: Any) -> None:
    try:
        timed(lambda: updates_config.load_config(section, scratch))
    except InvalidArgument as e:
        assert e.message.strip()


# -- models.toml --------------------------------------------------------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            "nan"
            if math.isnan(value)
            else ("inf" if value > 0 else "-inf")
            if math.isinf(value)
            else repr(value)
        )
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return (
            "{" + ", ".join(f"{json.dumps(k)} = {_toml_value(v)}" for k, v in value.items()) + "}"
        )
    raise TypeError(value)


_TOML_LEAVES = st.one_of(
    st.booleans(),
    st.integers(-(1 << 63), (1 << 63) - 1),
    st.floats(),
    st.sampled_from(
        [
            "tiny.gguf",
            "~nobody-here/x.gguf",
            "~/x.gguf",
            "/etc/passwd",
            "a\x00b",
            "http://127.0.0.1:1/v1",
            "ftp://x",
            "1.5 GB",
            "9" * 400 + " TB",
            "10m",
            "-1",
            "1e999",
            "Chat",
            "openai",
            "llama.cpp",
            "",
            "x" * 5000,
        ]
    ),
    st.text(st.characters(exclude_categories=["Cs"]), max_size=12),
)
_TOML_VALUES = st.recursive(
    _TOML_LEAVES,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
_MODEL_KEYS = st.one_of(
    st.sampled_from(sorted(KNOWN_KEYS)),
    st.text(min_size=1, max_size=8),
)


def _toml_document(tables: list[dict[str, Any]], top: dict[str, Any]) -> str:
    lines = [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in top.items()]
    for table in tables:
        lines.append("[[model]]")
        lines += [f"{json.dumps(k)} = {_toml_value(v)}" for k, v in table.items()]
    return "\n".join(lines) + "\n"


TOML_DOCS = st.one_of(
    st.builds(
        _toml_document,
        st.lists(st.dictionaries(_MODEL_KEYS, _TOML_VALUES, max_size=6), max_size=3),
        st.dictionaries(st.sampled_from(["model", "x"]), _TOML_VALUES, max_size=1),
    ),
    st.text(max_size=200),
)
VALID_TOML = """\
[[model]]
id = "chat"
path = "tiny.gguf"
priority = 10
tags = ["chat", "fast"]
quality = 6.5
keep_alive = "10m"
min_memory = "1 GB"

[[model]]
id = "remote"
provider = "openai"
url = "http://127.0.0.1:8080/v1"
"""


@settings(max_examples=examples(250))
@given(
    text=st.one_of(
        TOML_DOCS, mutations(VALID_TOML.encode()).map(lambda b: b.decode("utf-8", "replace"))
    )
)
def test_models_toml(scratch: Path, text: str) -> None:
    source = scratch / "models.toml"
    source.write_text(text, encoding="utf-8", errors="surrogatepass")
    entries, problems = timed(
        lambda: load_models_toml(source, scratch / "models", ["llama.cpp", "openai"])
    )
    assert all(isinstance(e, TomlModel) for e in entries)
    assert all(isinstance(p, TomlProblem) and p.reason.strip() for p in problems)


# -- document parsers ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def documents() -> dict[str, bytes]:
    pdf = make_pdf([["Install the daemon.", "Copy the model."], ["Page two (text)."]], "T")
    return {
        "doc.pdf": pdf,
        "outline.pdf": with_outline(pdf, [("Start", 0), ("End", 1)]),
        "locked.pdf": encrypted(pdf, "secret"),
        "doc.docx": make_docx(
            [("h1", "Title"), ("p", "Body text."), ("h2", "More")], table=[["a", "b"], ["c", "d"]]
        ),
        "page.html": b"<!doctype html><html><head><title>T</title></head><body><h1>Hi</h1>"
        b"<p>Paris <b>is</b> the capital.</p><table><tr><td>x</td></tr></table></body></html>",
        "notes.md": b"---\ntitle: x\n---\n# Install\n\nCopy [the](x) file.\n\n```\ncode\n```\n"
        b"Setext\n===\n![img](y)\n",
        "notes.txt": "Caf\u00e9 and tea.\r\nLine two.\n".encode(),
    }


NASTY = {
    "nested.html": b"<html><body>" + b"<div>" * 20_000 + b"x" + b"</div>" * 20_000,
    "nested.md": b"> " * 10_000 + b"x\n" + b"[" * 50_000 + b"](" * 50_000,
    "brackets.md": b"![" * 30_000 + b"]" * 30_000 + b"(" * 30_000,
    "selfref.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog /Pages 2 0 R >> endobj\n"
    b"2 0 obj << /Type /Pages /Kids [2 0 R] /Count 1 >> endobj\n"
    b"trailer << /Root 1 0 R >>\n%%EOF\n",
    "deep.pdf": b"%PDF-1.4\n1 0 obj " + b"[" * 5000 + b"]" * 5000 + b" endobj\ntrailer << /Root 1"
    b" 0 R >>\n%%EOF\n",
    "bomb.docx": b"",  # filled in by the fixture: a ZIP whose member claims a huge size
}


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return out.getvalue()


def docx_mutations(docx: bytes) -> st.SearchStrategy[bytes]:
    """The package rebuilt with one member's XML damaged (the ZIP stays valid, so the
    damage reaches python-docx), or the ZIP bytes damaged."""
    with zipfile.ZipFile(io.BytesIO(docx)) as z:
        members = {n: z.read(n) for n in z.namelist()}
    names = sorted(members)

    def damage(name: str, body: bytes) -> bytes:
        return _zip({**members, name: body})

    return st.one_of(
        st.sampled_from(names).flatmap(
            lambda n: mutations(members[n]).map(lambda body, n=n: damage(n, body))
        ),
        st.sampled_from(names).map(lambda n: _zip({k: v for k, v in members.items() if k != n})),
        mutations(docx),
    )


PARSER_FOR = {".pdf": parsers.PDFParser(), ".docx": parsers.DocxParser(),
              ".html": parsers.HTMLDocumentParser(), ".md": parsers.MarkdownParser(),
              ".txt": parsers.TextParser()}  # fmt: skip


def check_parse(filename: str, content: bytes, parser: Any = None) -> None:
    parser = parser or PARSER_FOR[Path(filename).suffix]
    try:
        doc = timed(lambda: parser.parse(content, filename))
    except InvalidArgument as e:
        assert e.message.strip() and e.reason, e
    else:
        assert isinstance(doc, ParsedDocument) and doc.sections


@settings(max_examples=examples(200))
@given(data=st.data())
def test_document_parsers_mutated(documents: dict[str, bytes], data: st.DataObject) -> None:
    name = data.draw(st.sampled_from(sorted(documents)), label="file")
    original = documents[name]
    if name.endswith(".docx"):
        content = data.draw(docx_mutations(original), label="content")
    else:
        content = data.draw(mutations(original), label="content")
    check_parse(name, content)


@settings(max_examples=examples(100))
@given(
    parser=st.sampled_from(sorted(PARSER_FOR)),
    content=st.one_of(st.binary(max_size=512), st.text(max_size=200).map(str.encode)),
)
def test_document_parsers_random(parser: str, content: bytes) -> None:
    check_parse("random" + parser, content)


@pytest.mark.parametrize("name", sorted(NASTY))
def test_document_parsers_nasty(name: str) -> None:
    content = NASTY[name]
    if name == "bomb.docx":
        content = _zip({"word/document.xml": b"<w/>" + b" " * (300 << 20)})
    check_parse(name, content)


# -- WebAssembly tool modules -------------------------------------------------------------


@pytest.fixture(scope="module")
def wasm_runtime() -> Iterator[Any]:
    from rustaid.tools import wasm

    runtime = wasm._Runtime()
    yield runtime
    runtime.close()


def _wat_bytes(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


def tool_module(definitions: bytes, packed: int | None, call_result: bytes) -> bytes:
    """A module following the ABI whose tool_definitions() returns `definitions` (or
    the raw i64 `packed`) and whose tool_call() returns `call_result`."""
    import wasmtime

    defs_at, call_at = 16, 32_768
    packed_defs = packed if packed is not None else (defs_at << 32) | len(definitions)
    wat = f"""
    (module
      (memory (export "memory") 1)
      (data (i32.const {defs_at}) "{_wat_bytes(definitions)}")
      (data (i32.const {call_at}) "{_wat_bytes(call_result)}")
      (func (export "alloc") (param i32) (result i32) (i32.const 40000))
      (func (export "tool_definitions") (result i64) (i64.const {packed_defs}))
      (func (export "tool_call") (param i32 i32 i32 i32) (result i64)
        (i64.const {(call_at << 32) | len(call_result)})))
    """
    return bytes(wasmtime.wat2wasm(wat))


_SCHEMAS = st.one_of(
    st.just({"type": "object", "properties": {"text": {"type": "string"}}}),
    st.just({"$ref": "#"}),
    st.just({"$ref": "#/definitions/nope"}),
    st.just({"type": "object", "properties": {"a": {"pattern": "(a+)+$"}}}),
    st.just({"type": "object", "properties": {"a": {"pattern": "("}}}),
    st.just({"$schema": "http://example.com/nope", "type": "object"}),
    JSON,
)
_DEFINITION = st.fixed_dictionaries(
    {"name": st.one_of(st.sampled_from(["word_count", "a", "x" * 100, "", "1bad"]), st.text())},
    optional={"description": JSON, "parameters": _SCHEMAS, "result": _SCHEMAS},
)


@settings(max_examples=examples(120))
@given(
    definitions=st.one_of(
        st.lists(_DEFINITION, max_size=3).map(lambda d: json.dumps(d).encode()),
        JSON.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
        st.sampled_from([b"[" * 20_000, b"[" + b"9" * 5_000 + b"]"]),
    ),
    packed=st.one_of(st.none(), st.integers(-(1 << 63), (1 << 63) - 1)),
    call_result=st.binary(max_size=32),
)
def test_wasm_tool_definitions(
    scratch: Path, wasm_runtime: Any, definitions: bytes, packed: int | None, call_result: bytes
) -> None:
    from rustaid.tools.config import WasmLimits

    module = tool_module(definitions, packed, call_result)
    check_wasm(wasm_runtime, scratch / "tool.wasm", module, WasmLimits(timeout_s=5.0))


@settings(max_examples=examples(120))
@given(data=st.data())
def test_wasm_mutated_module(scratch: Path, wasm_runtime: Any, data: st.DataObject) -> None:
    import wasmtime

    from rustaid.tools.config import WasmLimits
    from tests.tools.conftest import EXAMPLE_WAT

    valid = bytes(wasmtime.wat2wasm(EXAMPLE_WAT.read_text()))
    module = data.draw(st.one_of(mutations(valid), st.binary(max_size=256)), label="module")
    check_wasm(wasm_runtime, scratch / "mutated.wasm", module, WasmLimits(timeout_s=5.0))


def check_wasm(runtime: Any, path: Path, module: bytes, limits: Any) -> None:
    from rustaid.tools import wasm

    try:
        plugin = timed(lambda: wasm.WasmPlugin(runtime, path, module, limits))
    except wasm.WasmRefused as e:
        assert str(e).strip()
    else:
        assert plugin.tools and all(isinstance(name, str) for name in plugin.tools)
