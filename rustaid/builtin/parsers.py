"""Built-in plugin: document parsers for plain text, Markdown, HTML, PDF and DOCX.

Each returns the text with its structure: sections under their heading path, and page
numbers for PDF. pypdf and python-docx are imported on the first file of their kind.
"""

from __future__ import annotations

import codecs
import io
import logging
import re
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import PurePosixPath
from typing import Any

from rustaid.builtin.text_headings import outline
from rustaid.errors import InvalidArgument
from rustaid.hookspecs import hookimpl
from rustaid.providers import (
    DocumentParser,
    ParsedDocument,
    PluginInfo,
    ResourceRequirements,
    Section,
)

PLUGIN = PluginInfo(
    name="document-parsers",
    version="0.1.0",
    description="Parses plain text, Markdown, HTML, PDF (pypdf) and DOCX (python-docx).",
    requirements=ResourceRequirements(min_memory_bytes=16 << 20, cores=1, thermal_impact=10),
)

log = logging.getLogger(__name__)

# A DOCX is a ZIP archive: refuse archives that expand to more than this (ZIP bombs).
MAX_UNPACKED_BYTES = 256 << 20
_BINARY_PROBE = 8192
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)
_OLE_MAGIC = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1"


def _bad(filename: str, why: str, reason: str = "DOCUMENT_UNREADABLE") -> InvalidArgument:
    return InvalidArgument(f"{filename or 'the file'} {why}", reason=reason, field="content")


def _require_content(content: bytes, filename: str) -> None:
    if not content:
        raise _bad(filename, "is empty (0 bytes): there is nothing to index", "DOCUMENT_EMPTY")


def looks_binary(head: bytes) -> bool:
    """NUL bytes or many control characters: not text in any 8-bit encoding."""
    if not head:
        return False
    if b"\x00" in head:
        return True
    controls = sum(1 for b in head if b < 32 and b not in (9, 10, 12, 13, 27))
    return controls / len(head) > 0.05


def decode_text(content: bytes, filename: str) -> str:
    """Text from bytes: a BOM's encoding, else UTF-8, else Windows-1252 (never binary)."""
    _require_content(content, filename)
    for bom, encoding in _BOMS:
        if content.startswith(bom):
            try:
                return content.decode(encoding)
            except UnicodeDecodeError as e:
                raise _bad(
                    filename, f"has a {encoding} byte-order mark but is not {encoding}: {e}"
                ) from e
    if looks_binary(content[:_BINARY_PROBE]):
        raise _bad(
            filename,
            "is binary, not text: index it with the parser for its format "
            "(supported: text, Markdown, HTML, PDF, DOCX)",
            "DOCUMENT_BINARY",
        )
    try:
        return content.decode("utf-8")
    except UnicodeDecodeError:
        return content.decode("cp1252", errors="replace")


def _normalise(text: str) -> str:
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\x00", "")
    return re.sub(r"[ \t]+\n", "\n", text).strip()


def _document(
    sections: Sequence[Section], filename: str, title: str = "", **metadata: Any
) -> ParsedDocument:
    kept = tuple(s for s in sections if s.text.strip())
    if not kept:
        raise _bad(filename, "contains no text to index", "DOCUMENT_EMPTY")
    return ParsedDocument(sections=kept, title=title, metadata=metadata)


# --- plain text ---------------------------------------------------------------------------

# Where headings are looked for in the layout ("": a file name without a suffix, such as
# README, or none at all).
_PROSE = ("", ".txt", ".text", ".rst", ".org")


class TextParser(DocumentParser):
    name = "text"
    suffixes = (".txt", ".text", ".log", ".csv", ".tsv", ".rst", ".org", ".json", ".yaml",
                ".yml", ".toml", ".ini", ".cfg", ".conf", ".py", ".rs", ".c", ".h", ".go",
                ".js", ".ts", ".sh")  # fmt: skip
    mime_types = ("text/plain", "text/csv", "application/json")

    def sniff(self, head: bytes) -> bool:
        return not looks_binary(head[:_BINARY_PROBE])

    def parse(self, content: bytes, filename: str) -> ParsedDocument:
        text = _normalise(decode_text(content, filename))
        suffix = PurePosixPath(filename).suffix.lower()
        # Prose files may show headings by their layout; data and code files do not.
        found = outline(text, org=suffix == ".org") if suffix in _PROSE else None
        if not found or not found.headings:
            return _document([Section(text)], filename)
        out = _Sections()
        for i, line in enumerate(text.split("\n")):
            if i in found.headings:
                out.heading(*found.headings[i])
            elif i not in found.decoration:
                out.add(line)
        out.flush()
        if not out.sections:  # nothing but headings: the lines are the text
            return _document([Section(text)], filename)
        return _document(out.sections, filename, out.title)


# --- Markdown -----------------------------------------------------------------------------

_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
# Link text stops at any bracket and targets at any parenthesis: linear time on any input.
_IMAGE = re.compile(r"!\[([^\[\]]*)\]\([^()]*\)")
_LINK = re.compile(r"\[([^\[\]]+)\]\([^()]*\)")
_FRONT_MATTER = re.compile(r"\A---\n(.*?)\n(?:---|\.\.\.)\n", re.S)


class _Sections:
    """Collects text under a stack of headings."""

    def __init__(self) -> None:
        self.path: list[tuple[int, str]] = []
        self.lines: list[str] = []
        self.sections: list[Section] = []
        self.title = ""

    def heading(self, level: int, text: str) -> None:
        self.flush()
        text = " ".join(text.split())
        while self.path and self.path[-1][0] >= level:
            self.path.pop()
        self.path.append((level, text))
        if level == 1 and not self.title:
            self.title = text

    def add(self, line: str) -> None:
        self.lines.append(line)

    def flush(self, page: int = 0) -> None:
        text = _normalise("\n".join(self.lines))
        self.lines = []
        if text:
            self.sections.append(Section(text, tuple(h for _, h in self.path), page))


def _strip_comments(text: str) -> str:
    """Drop <!-- ... --> comments in one pass (an unclosed one runs to the end)."""
    parts: list[str] = []
    at = 0
    while (start := text.find("<!--", at)) >= 0:
        parts.append(text[at:start])
        end = text.find("-->", start + 4)
        if end < 0:
            return "".join(parts)
        at = end + 3
    parts.append(text[at:])
    return "".join(parts)


def _markdown_inline(line: str) -> str:
    return _LINK.sub(r"\1", _IMAGE.sub(r"\1", line))


class MarkdownParser(DocumentParser):
    name = "markdown"
    suffixes = (".md", ".markdown", ".mdown", ".mkd")
    mime_types = ("text/markdown", "text/x-markdown")

    def parse(self, content: bytes, filename: str) -> ParsedDocument:
        text = _normalise(decode_text(content, filename))
        text = _strip_comments(text)
        title = ""
        if match := _FRONT_MATTER.match(text + "\n"):
            for line in match.group(1).splitlines():
                key, _, value = line.partition(":")
                if key.strip().lower() == "title":
                    title = value.strip().strip("'\"")
            text = text[match.end() :]
        out = _Sections()
        fence = ""
        lines = text.split("\n")
        for i, line in enumerate(lines):
            if fence:
                out.add(line)
                if line.strip().startswith(fence):
                    fence = ""
                continue
            if m := _FENCE.match(line):
                fence = m.group(1)[0] * 3
                out.add(line)
                continue
            if m := _ATX.match(line):
                out.heading(len(m.group(1)), _markdown_inline(m.group(2) or ""))
                continue
            nxt = lines[i + 1] if i + 1 < len(lines) else ""
            setext = _SETEXT.match(nxt)
            if setext and line.strip() and not line.startswith((" " * 4, "\t", "-", "*", ">")):
                out.heading(1 if setext.group(1)[0] == "=" else 2, _markdown_inline(line))
                lines[i + 1] = ""  # the underline is consumed
                continue
            out.add(_markdown_inline(line))
        out.flush()
        return _document(out.sections, filename, title or out.title)


# --- HTML ---------------------------------------------------------------------------------

# Parsed with lxml (libxml2's forgiving HTML parser, linear time on broken markup; it
# comes with python-docx). The standard library's html.parser takes quadratic time on
# unclosed tags and comments, which a hostile upload can exploit.
_SKIP = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object", "title"}
_BLOCK = {"p", "div", "section", "article", "header", "footer", "main", "nav", "aside", "ul",
          "ol", "li", "dl", "dt", "dd", "table", "tr", "blockquote", "pre", "figure",
          "figcaption", "form", "fieldset", "address", "details", "summary", "hr",
          "br", "body"}  # fmt: skip
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_XML_DECLARATION = re.compile(r"\A\s*<\?xml[^>]*\?>")
_SPACES = re.compile(r"[ \t\n\r\f\v]+")


class _HTMLText:
    """Text of an lxml tree, with paragraph breaks and heading sections."""

    def __init__(self) -> None:
        self.out = _Sections()
        self.parts: list[str] = []
        self.pre = 0

    def text(self, value: str | None) -> None:
        if value:
            self.parts.append(value)

    def paragraph(self) -> None:
        text = "".join(self.parts)
        self.parts = []
        if self.pre:
            self.out.add(text)
        elif collapsed := _SPACES.sub(" ", text).strip():
            self.out.add(collapsed)
        self.out.add("")

    def walk(self, root: Any) -> None:
        from lxml import etree

        hidden = 0  # inside an element whose text is not shown (script, a heading...)
        for event, element in etree.iterwalk(root, events=("start", "end")):
            tag = element.tag.lower() if isinstance(element.tag, str) else ""
            if event == "start":
                if hidden or tag in _SKIP:
                    hidden += 1
                    continue
                if tag in _HEADINGS:
                    self.paragraph()
                    self.out.heading(_HEADINGS[tag], element.text_content())
                    hidden += 1
                    continue
                if tag in _BLOCK:
                    self.paragraph()
                    self.pre += tag == "pre"
                    if tag == "li":
                        self.parts.append("- ")
                elif tag in ("td", "th"):
                    self.parts.append(" | ")
                self.text(element.text)
            else:
                if hidden:
                    hidden -= 1
                else:
                    if tag in _BLOCK:
                        self.paragraph()
                        self.pre -= tag == "pre"
                if not hidden:
                    self.text(element.tail)

    def finish(self) -> list[Section]:
        self.paragraph()
        self.out.flush()
        return self.out.sections


class HTMLDocumentParser(DocumentParser):
    name = "html"
    suffixes = (".html", ".htm", ".xhtml")
    mime_types = ("text/html", "application/xhtml+xml")

    def sniff(self, head: bytes) -> bool:
        start = head[:1024].lstrip().lower()
        return start.startswith((b"<!doctype html", b"<html"))

    def parse(self, content: bytes, filename: str) -> ParsedDocument:
        text = _XML_DECLARATION.sub("", decode_text(content, filename))
        if not text.strip():
            raise _bad(filename, "contains no text to index", "DOCUMENT_EMPTY")
        from lxml import etree
        from lxml import html as lhtml

        parser = lhtml.HTMLParser(remove_comments=True, remove_pis=True, no_network=True)
        try:
            root = lhtml.document_fromstring(text, parser=parser)
        except (etree.ParserError, ValueError) as e:
            raise _bad(filename, f"is not readable HTML: {e}") from e
        title = " ".join((root.findtext(".//title") or "").split())
        walker = _HTMLText()
        walker.walk(root)
        sections = walker.finish()
        return _document(sections, filename, title or walker.out.title)


# --- PDF ----------------------------------------------------------------------------------


def _outline_starts(reader: Any) -> list[tuple[int, tuple[str, ...]]]:
    """(first page, heading path) of every outline (bookmark) entry, by page."""
    starts: list[tuple[int, tuple[str, ...]]] = []

    def walk(items: Any, path: tuple[str, ...]) -> None:
        last: tuple[str, ...] = path
        for item in items:
            if isinstance(item, list):
                walk(item, last)
                continue
            title = " ".join(str(getattr(item, "title", "") or "").split())
            if not title:
                continue
            last = (*path, title)
            try:
                page = reader.get_destination_page_number(item)
            except Exception:
                continue
            if page is not None and page >= 0:
                starts.append((page + 1, last))

    try:
        walk(reader.outline, ())
    except Exception:  # a broken outline only loses the headings
        return []
    starts.sort(key=lambda s: s[0])
    return starts


class PDFParser(DocumentParser):
    name = "pdf"
    suffixes = (".pdf",)
    mime_types = ("application/pdf",)

    def sniff(self, head: bytes) -> bool:
        return b"%PDF-" in head[:1024]

    def parse(self, content: bytes, filename: str) -> ParsedDocument:
        _require_content(content, filename)
        if b"%PDF-" not in content[:1024]:
            raise _bad(filename, "is not a PDF file (it does not start with %PDF-)")
        # pypdf logs every oddity of a damaged file as a warning; the error says enough.
        logging.getLogger("pypdf").setLevel(logging.ERROR)
        from pypdf import PasswordType, PdfReader
        from pypdf.errors import DependencyError, PyPdfError

        try:
            reader = PdfReader(io.BytesIO(content), strict=False)
            if reader.is_encrypted:
                try:
                    opened = reader.decrypt("")  # many PDFs only restrict printing/copying
                except DependencyError as e:
                    raise _bad(filename, f"is encrypted in a way that needs: {e}") from e
                if opened == PasswordType.NOT_DECRYPTED:
                    raise _bad(
                        filename,
                        "is encrypted with a password: remove the password and index it again",
                        "DOCUMENT_ENCRYPTED",
                    )
            pages = list(reader.pages)
        except InvalidArgument:
            raise
        except NotImplementedError as e:  # an encryption scheme pypdf does not implement
            raise _bad(
                filename,
                f"is encrypted in a way this daemon cannot open ({e}): remove the "
                "encryption and index it again",
                "DOCUMENT_ENCRYPTED",
            ) from e
        except (PyPdfError, ValueError, KeyError, TypeError, AttributeError, OSError) as e:
            raise _bad(filename, f"is not a readable PDF: {e}") from e
        except Exception as e:  # pypdf raises many more types on damaged files
            raise _bad(filename, f"is not a readable PDF ({type(e).__name__}: {e})") from e
        starts = _outline_starts(reader)
        sections: list[Section] = []
        unreadable = 0
        heading: tuple[str, ...] = ()
        cursor = 0
        for number, page in enumerate(pages, start=1):
            while cursor < len(starts) and starts[cursor][0] <= number:
                heading = starts[cursor][1]
                cursor += 1
            try:
                text = page.extract_text() or ""
            except Exception as e:  # one broken content stream loses one page
                log.warning("%s: page %d unreadable: %s", filename, number, e)
                unreadable += 1
                continue
            text = _normalise(text)
            if text:
                sections.append(Section(text, heading, number))
        if not sections:
            why = (
                "has no extractable text (scanned pages? run OCR on it first)"
                if not unreadable
                else "has no readable page"
            )
            raise _bad(filename, why, "DOCUMENT_EMPTY")
        title = ""
        try:
            metadata: Any = reader.metadata or {}
            title = str(metadata.get("/Title", "") or "").strip()
        except Exception:
            title = ""
        return _document(sections, filename, title, pages=len(pages))


# --- DOCX ---------------------------------------------------------------------------------

_HEADING_STYLE = re.compile(r"^heading\s*(\d)$", re.I)


def _check_zip(content: bytes, filename: str) -> None:
    if content.startswith(_OLE_MAGIC):
        raise _bad(
            filename,
            "is a password-protected Office file or a legacy .doc: save it as an "
            "unprotected .docx and index it again",
            "DOCUMENT_ENCRYPTED",
        )
    try:
        with zipfile.ZipFile(io.BytesIO(content)) as archive:
            unpacked = sum(info.file_size for info in archive.infolist())
            names = set(archive.namelist())
    except (zipfile.BadZipFile, ValueError, OSError) as e:
        raise _bad(filename, f"is not a DOCX file (not a valid ZIP package: {e})") from e
    if "word/document.xml" not in names:
        raise _bad(filename, "is a ZIP archive but not a Word document (no word/document.xml)")
    if unpacked > MAX_UNPACKED_BYTES:
        raise _bad(
            filename,
            f"expands to {unpacked >> 20} MiB (limit {MAX_UNPACKED_BYTES >> 20} MiB)",
            "DOCUMENT_TOO_LARGE",
        )


def _docx_blocks(document: Any) -> Iterator[tuple[str, str]]:
    """(style name, text) of paragraphs and table rows, in document order."""
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    for child in document.element.body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            paragraph = Paragraph(child, document)
            style = paragraph.style.name if paragraph.style is not None else ""
            yield style or "", paragraph.text
        elif tag == "tbl":
            for row in Table(child, document).rows:
                cells: list[str] = []
                for cell in row.cells:
                    text = " ".join(cell.text.split())
                    if not cells or cells[-1] != text:  # merged cells repeat their text
                        cells.append(text)
                yield "", " | ".join(cells)


class DocxParser(DocumentParser):
    name = "docx"
    suffixes = (".docx",)
    mime_types = ("application/vnd.openxmlformats-officedocument.wordprocessingml.document",)

    def sniff(self, head: bytes) -> bool:
        return head.startswith(b"PK\x03\x04") and b"word/" in head[:4096]

    def parse(self, content: bytes, filename: str) -> ParsedDocument:
        _require_content(content, filename)
        _check_zip(content, filename)
        import docx

        try:
            document = docx.Document(io.BytesIO(content))
            blocks = list(_docx_blocks(document))
        except Exception as e:  # python-docx raises many types for broken packages
            raise _bad(filename, f"is not a readable DOCX file: {e}") from e
        out = _Sections()
        title = ""
        for style, text in blocks:
            if m := _HEADING_STYLE.match(style.strip()):
                if text.strip():
                    out.heading(int(m.group(1)), text)
                continue
            if style.strip().lower() == "title" and text.strip():
                title = title or " ".join(text.split())
                out.heading(1, text)
                continue
            out.add(text)
            out.add("")
        out.flush()
        core_title = ""
        try:
            core_title = (document.core_properties.title or "").strip()
        except Exception:
            core_title = ""
        return _document(out.sections, filename, core_title or title or out.title)


PARSERS: tuple[type[DocumentParser], ...] = (
    TextParser,
    MarkdownParser,
    HTMLDocumentParser,
    PDFParser,
    DocxParser,
)


@hookimpl
def register_document_parsers(register: Any) -> None:
    for parser in PARSERS:
        register(parser())
