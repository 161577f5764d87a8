"""The built-in document parsers on real files: text in several encodings, Markdown,
HTML, PDFs written byte by byte (outlined and encrypted with pypdf), DOCX from
python-docx; and every kind of bad file."""

from __future__ import annotations

import codecs
import contextlib
import io
import os
import time
import zipfile

import pytest

from rustaid.builtin import parsers
from rustaid.builtin.parsers import (
    DocxParser,
    HTMLDocumentParser,
    MarkdownParser,
    PDFParser,
    TextParser,
)
from rustaid.errors import InvalidArgument
from rustaid.rag.documents import choose_parser
from tests.rag.documents import encrypted, make_docx, make_pdf, with_outline

ALL = {p.name: p for p in (cls() for cls in parsers.PARSERS)}


def bad(fn: object, content: bytes, filename: str) -> InvalidArgument:
    with pytest.raises(InvalidArgument) as info:
        fn(content, filename)  # type: ignore[operator]
    return info.value


# -- text --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ("héllo wörld\r\nline two".encode(), "héllo wörld\nline two"),
        (codecs.BOM_UTF8 + b"bom text", "bom text"),
        ("utf-16 text".encode("utf-16"), "utf-16 text"),
        ("café crème".encode("cp1252"), "café crème"),  # not UTF-8: Windows-1252
    ],
)
def test_text_decodes_common_encodings(content: bytes, expected: str) -> None:
    doc = TextParser().parse(content, "a.txt")
    assert doc.text == expected
    assert doc.sections[0].heading_path == () and doc.sections[0].page == 0


def test_text_refuses_empty_and_binary_files() -> None:
    e = bad(TextParser().parse, b"", "empty.txt")
    assert "empty (0 bytes)" in e.message and e.reason == "DOCUMENT_EMPTY"
    e = bad(TextParser().parse, b"\x7fELF\x02\x01\x01\x00" + os.urandom(2000), "prog.txt")
    assert "binary" in e.message and e.reason == "DOCUMENT_BINARY"
    e = bad(TextParser().parse, b"   \n\n\t ", "blank.txt")
    assert "no text" in e.message


# -- Markdown ----------------------------------------------------------------------------

MARKDOWN = b"""---
title: The Guide
---
# Install

Run the [installer](https://example.org) first.
![diagram](img.png)

## From source

```sh
# not a heading: a comment in a code block
make
```

Setext heading
--------------

Text under setext.

# Use
<!-- hidden comment -->
Start it.
"""


def test_markdown_sections_follow_the_headings() -> None:
    doc = MarkdownParser().parse(MARKDOWN, "guide.md")
    assert doc.title == "The Guide"
    paths = [s.heading_path for s in doc.sections]
    assert paths == [
        ("Install",),
        ("Install", "From source"),
        ("Install", "Setext heading"),
        ("Use",),
    ]
    first = doc.sections[0].text
    assert "Run the installer first." in first and "https://" not in first
    assert "diagram" in first
    assert "# not a heading" in doc.sections[1].text  # code blocks keep their lines
    assert "hidden comment" not in doc.text


def test_markdown_without_headings_is_one_section() -> None:
    doc = MarkdownParser().parse(b"just a paragraph\n\nand another", "notes.md")
    assert len(doc.sections) == 1 and doc.sections[0].heading_path == ()


# -- headings in plain text -------------------------------------------------------------

MAN_PAGE = b"""ssh (OpenSSH client)

NAME
       ssh - OpenSSH remote login client

DESCRIPTION
       ssh is a program for logging into a remote machine.

   Escape characters
       When a pseudo-terminal has been requested, ssh supports escapes.

       ControlMaster
               Enables the sharing of multiple sessions.

       For example:
           ssh -L 80:localhost:80 host

ENVIRONMENT
       SSH_AUTH_SOCK names the agent's socket.
"""


def test_text_laid_out_like_a_manual_page_gets_its_sections() -> None:
    doc = TextParser().parse(MAN_PAGE, "ssh.txt")
    assert doc.title == "ssh (OpenSSH client)"
    by_path = {s.heading_path: s.text for s in doc.sections}
    title = ("ssh (OpenSSH client)",)
    assert list(by_path) == [
        (*title, "NAME"),
        (*title, "DESCRIPTION"),
        (*title, "DESCRIPTION", "Escape characters"),
        (*title, "ENVIRONMENT"),
    ]
    # A term of a definition list and a line ending in a colon stay in their section.
    escapes = by_path[(*title, "DESCRIPTION", "Escape characters")]
    assert "ControlMaster" in escapes and "For example:" in escapes
    assert "SSH_AUTH_SOCK" in by_path[(*title, "ENVIRONMENT")]


def test_underlined_titles_nest_in_the_order_their_styles_appear() -> None:
    rst = b"""=====
Guide
=====

Read this first.

Install
-------

Run the installer.

From source
~~~~~~~~~~~
Build it.

Use
---
Start it.
"""
    doc = TextParser().parse(rst, "guide.rst")
    assert doc.title == "Guide"
    assert [s.heading_path for s in doc.sections] == [
        ("Guide",),
        ("Guide", "Install"),
        ("Guide", "Install", "From source"),
        ("Guide", "Use"),
    ]
    assert "---" not in doc.text and "~~~" not in doc.text and "===" not in doc.text


def test_org_outlines_are_headings() -> None:
    doc = TextParser().parse(b"* Tasks\nBuy milk.\n** Later\nFix the bike.\n", "todo.org")
    assert [s.heading_path for s in doc.sections] == [("Tasks",), ("Tasks", "Later")]


def test_prose_data_and_code_keep_their_lines() -> None:
    letter = b"Dear Sam,\n\nThe meeting moved.\nSee you THEN\n\nNOTE that it is early.\n"
    doc = TextParser().parse(letter, "letter.txt")
    assert [s.heading_path for s in doc.sections] == [()]  # no short title, no capitals line
    assert doc.text.count("\n") == letter.decode().strip().count("\n")
    config = b"[server]\n\nPORT\n8080\n\nname = x\n=======\n"
    assert TextParser().parse(config, "notes.txt").sections[0].heading_path  # read as prose
    for name in ("settings.conf", "data.csv", "tool.py"):
        assert [s.heading_path for s in TextParser().parse(config, name).sections] == [()]


def test_text_that_is_all_headings_is_kept_as_text() -> None:
    doc = TextParser().parse(b"SHOPPING\n\nEGGS\n\nMILK\n", "list.txt")
    assert doc.text == "SHOPPING\n\nEGGS\n\nMILK"


def test_hostile_text_is_parsed_in_linear_time() -> None:
    hostile = b"TITLE\n\n" + b"   Sub\n\n" * 100_000 + b"\n" * 200_000 + b"       text\n"
    hostile += b"x\n" + b"=" * 1000 + b"\n" + b"\nA\n---\n" * 50_000
    t0 = time.perf_counter()
    doc = TextParser().parse(hostile, "hostile.txt")
    assert time.perf_counter() - t0 < 5
    assert "text" in doc.text


# -- HTML --------------------------------------------------------------------------------

HTML = b"""<!DOCTYPE html><html><head><title>Page &amp; Title</title>
<style>body { color: red }</style><script>var secret = "do not index";</script>
<body>
<h1>Main</h1><p>First   paragraph
with spaces.</p>
<h2>Details</h2><ul><li>one</li><li>two</li></ul>
<table><tr><td>a</td><td>b</td></tr></table>
<pre>  keep   this</pre>
<noscript>enable js</noscript>
</body></html>"""


def test_html_text_headings_and_title() -> None:
    doc = HTMLDocumentParser().parse(HTML, "page.html")
    assert doc.title == "Page & Title"
    assert [s.heading_path for s in doc.sections] == [("Main",), ("Main", "Details")]
    assert "First paragraph with spaces." in doc.sections[0].text
    details = doc.sections[1].text
    assert "- one" in details and "| a | b" in details and "  keep   this" in details
    assert "secret" not in doc.text and "color" not in doc.text and "enable js" not in doc.text


def test_html_without_closing_head_keeps_the_body() -> None:
    doc = HTMLDocumentParser().parse(b"<html><head><title>t</title><body><p>body text</p>", "x.htm")
    assert "body text" in doc.text


# -- PDF ---------------------------------------------------------------------------------


def test_pdf_pages_outline_and_title() -> None:
    pdf = make_pdf(
        [["Chapter one text.", "More (with parentheses)."], ["Second page."], ["Third page."]],
        title="Report",
    )
    doc = PDFParser().parse(with_outline(pdf, [("One", 0), ("Two", 1)]), "r.pdf")
    assert doc.title == "Report" and doc.metadata["pages"] == 3
    assert [(s.page, s.heading_path) for s in doc.sections] == [
        (1, ("One",)),
        (2, ("Two",)),
        (3, ("Two",)),
    ]
    assert "More (with parentheses)." in doc.sections[0].text


def test_pdf_bad_files() -> None:
    e = bad(PDFParser().parse, b"", "e.pdf")
    assert e.reason == "DOCUMENT_EMPTY"
    e = bad(PDFParser().parse, os.urandom(4096), "garbage.pdf")
    assert "not a PDF file" in e.message
    e = bad(PDFParser().parse, b"%PDF-1.7\n" + os.urandom(4096), "broken.pdf")
    assert "not a readable PDF" in e.message
    pdf = make_pdf([["secret text"]])
    e = bad(PDFParser().parse, encrypted(pdf, "s3cret"), "locked.pdf")
    assert "encrypted with a password" in e.message and e.reason == "DOCUMENT_ENCRYPTED"
    blank = make_pdf([[]])
    e = bad(PDFParser().parse, blank, "scan.pdf")
    assert "no extractable text" in e.message


def test_pdf_with_an_empty_user_password_opens() -> None:
    # Owner-password-only PDFs (printing/copying restricted) open without a password.
    doc = PDFParser().parse(encrypted(make_pdf([["open me"]]), ""), "restricted.pdf")
    assert "open me" in doc.text


# -- DOCX --------------------------------------------------------------------------------


def test_docx_headings_paragraphs_and_tables() -> None:
    content = make_docx(
        [("h1", "Intro"), ("p", "Hello there."), ("h2", "Sub"), ("p", "Deeper text.")],
        title="Handbook",
        table=[["name", "value"], ["threads", "2"]],
    )
    doc = DocxParser().parse(content, "h.docx")
    assert doc.title == "Handbook"
    assert [s.heading_path for s in doc.sections] == [("Intro",), ("Intro", "Sub")]
    assert "name | value" in doc.sections[1].text and "threads | 2" in doc.sections[1].text


def test_docx_bad_files(monkeypatch: pytest.MonkeyPatch) -> None:
    e = bad(DocxParser().parse, os.urandom(3000), "junk.docx")
    assert "not a DOCX file" in e.message
    ole = b"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1" + os.urandom(3000)  # encrypted OOXML / .doc
    e = bad(DocxParser().parse, ole, "locked.docx")
    assert "password-protected" in e.message and e.reason == "DOCUMENT_ENCRYPTED"
    other_zip = io.BytesIO()
    with zipfile.ZipFile(other_zip, "w") as z:
        z.writestr("hello.txt", "not word")
    e = bad(DocxParser().parse, other_zip.getvalue(), "fake.docx")
    assert "not a Word document" in e.message
    # A ZIP bomb is refused by its declared size before anything is unpacked.
    monkeypatch.setattr(parsers, "MAX_UNPACKED_BYTES", 1000)
    e = bad(DocxParser().parse, make_docx([("p", "x" * 5000)]), "bomb.docx")
    assert e.reason == "DOCUMENT_TOO_LARGE"


# -- choosing a parser -------------------------------------------------------------------


def test_parser_choice_by_suffix_mime_and_content() -> None:
    pdf = make_pdf([["x"]])
    assert choose_parser(ALL, "A.PDF", "", b"whatever").name == "pdf"
    assert choose_parser(ALL, "", "text/markdown; charset=utf-8", b"# x").name == "markdown"
    assert choose_parser(ALL, "", "", pdf).name == "pdf"
    assert choose_parser(ALL, "noext", "", make_docx([("p", "x")])).name == "docx"
    assert choose_parser(ALL, "", "", b"<!doctype html><p>x").name == "html"
    assert choose_parser(ALL, "notes.unknown", "", b"plain words").name == "text"
    with pytest.raises(InvalidArgument) as info:
        choose_parser(ALL, "blob.bin", "", b"\x00\x01\x02" * 100)
    assert "no parser for '.bin' files" in info.value.message and ".pdf" in info.value.message


def test_hostile_markdown_is_parsed_in_linear_time() -> None:
    # Backtracking link patterns took minutes on this; a generous bound catches that.
    hostile = b"[" * 200_000 + b"](" * 1000 + b"words\n" + b"<!--" * 50_000 + b"\n![" * 50_000
    t0 = time.perf_counter()
    doc = MarkdownParser().parse(hostile + b"\ntail text", "hostile.md")
    assert time.perf_counter() - t0 < 5
    assert "words" in doc.text


def test_hostile_html_is_parsed_in_linear_time() -> None:
    # The standard library's html.parser is quadratic on these; lxml is not.
    t0 = time.perf_counter()
    for hostile in (b"<a " * 50_000 + b"x", b"<!--" * 50_000 + b"x", b"<" * 200_000 + b"x"):
        with contextlib.suppress(InvalidArgument):
            HTMLDocumentParser().parse(hostile, "hostile.html")
    assert time.perf_counter() - t0 < 5
