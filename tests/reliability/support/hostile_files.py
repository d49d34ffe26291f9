"""The corpus's code blocks, markdown that could break the fence splitter, and huge or binary attachments."""

from __future__ import annotations

import json

from tests.reliability.support.hostile_inputs import Case, Category, Post, cases_of

SHORT_READS = {"attachment_max_bytes": 20_000}  # of 100 kB by default: faster, and most files are still cut


def _lines(count: int, line: str = "    value = compute(index)  # step\n") -> bytes:
    return (line * count).encode()


def _asking(text: str, files: tuple[tuple[str, bytes], ...]) -> Post:
    """A question with text files, each of which the stored message must include."""
    return Post(text, files=files, stored_has=tuple(f"[attached file {name}" for name, _ in files))


def code() -> Category:
    """10,000-line code blocks: as Discord turns a long paste into message.txt, and as attached files."""
    python = "def f(x):\n" + "    x = x + 1\n" * 9998 + "    return x\n"
    files: dict[str, tuple[tuple[str, bytes], ...]] = {
        "message.txt of 10,000 lines of python": (("message.txt", python.encode()),),
        "a 10,000-line .py file": (("big.py", python.encode()),),
        "10,000 lines inside a fence in a .md file": (
            ("notes.md", b"```python\n" + _lines(10_000) + b"```\n"),
        ),
        "10,000 lines with an unclosed fence": (("open.md", b"```js\n" + _lines(10_000, "let a = 1;\n")),),
        "10,000 empty lines": (("blank.txt", b"\n" * 10_000),),
        "10,000 CRLF lines": (("dos.txt", _lines(10_000, "x = 1\r\n")),),
        "10,000 lines of tabs": (("tabs.txt", _lines(10_000, "\t\t\t\n")),),
        "10,000 lines, one of 200,000 characters": (
            ("wide.txt", _lines(5_000) + b"y" * 200_000 + _lines(5_000)),
        ),
        "10,000 lines without a final newline": (("nofinal.txt", _lines(10_000).rstrip(b"\n")),),
        "10,000 lines of backtick fences": (("fences.md", _lines(10_000, "```\n")),),
        "10,000 lines of JSON": (
            ("data.json", json.dumps([{"i": i} for i in range(10_000)], indent=0).encode()),
        ),
        "10,000 lines in ten files of 1,000": tuple((f"part{i}.txt", _lines(1_000)) for i in range(10)),
        "10,000 lines of nested fences": (("nested.md", _lines(10_000, "````\n```\n")),),
    }
    cases = [Case(name, _asking("what does this do?", parts), "answered") for name, parts in files.items()]
    alone = Post(
        "", files=(("message.txt", python.encode()),), stored_has=("[attached file message.txt (cut at",)
    )
    cases.append(Case("a 10,000-line file and no words", alone, "answered"))
    fenced = {
        "a fenced block filling 4,000 characters": Post("```python\n", repeat="x = 1\n", tail="```"),
        "one-character lines filling a fence": Post("```\n", repeat="x\n", tail="```"),
        "an unclosed fence filling 4,000 characters": Post("```c\n", repeat="int a;\n"),
        "a ~~~ fence filling 4,000 characters": Post("~~~\n", repeat="y = 2\n", tail="~~~"),
    }
    cases += cases_of("answered", fenced)
    return Category("code", cases, overrides=SHORT_READS, parallel=4)


def markdown() -> Category:
    """Markdown that could break the fence splitter: the echo model answers with it, the splitter cuts it."""
    texts = {
        "an opening fence only": "```",
        "an unclosed fence": "```python\nprint('hi')",
        "a closing fence only": "text\n```",
        "nested fences": "````md\n```python\nx = 1\n```\n````",
        "a fence with a language": "```rust\nfn main() {}\n```",
        "a fence with a strange language": '```c++/cli;"weird"\nint x;\n```',
        "a fence with words after the language": "```python extra words\nx\n```",
        "a 100-character language tag": "```" + "l" * 100 + "\nbody\n```",
        "backticks inside the language tag": "```a`b\nbody\n```",
        "tilde fences": "~~~\ncode\n~~~",
        "an unclosed tilde fence": "~~~python\ncode",
        "indented fences": "   ```\n   indented\n   ```",
        "a fence inside a quote": "> ```\n> quoted code\n> ```",
        "a fence inside a list": "- item\n  ```\n  code\n  ```",
        "inline triple backticks": "say ```inline``` please",
        "runs of many backticks": "`````````` ``` ````",
        "a zero-width space inside a fence marker": "`\u200b``\ncode\n`\u200b``",
        "empty fences": "```\n```\n```\n```",
        "CRLF fences": "```\r\ncode\r\n```\r\n",
        "spoilered fence": "||```\nsecret\n```||",
        "a heading made of a fence": "# ```",
    }
    filled = {
        "500 tiny fences": Post("", repeat="```\n```\n"),
        "a fence opening right at the cut": Post("a" * 1985 + "\n```python\n", repeat="x = 1\n", tail="```"),
        "a fence closing right at the cut": Post("```\n" + "b" * 1990 + "\n```\n", repeat="after "),
        "a code line longer than a message": Post("```\n", repeat="z", tail="\n```"),
        "alternating languages": Post("", repeat="```py\nx\n```\n```js\ny\n```\n"),
        "an unclosed fence filling 4,000": Post("```python\n", repeat="long_line = 1  # comment\n"),
        "tilde and backtick fences mixed": Post("", repeat="~~~\n```\nx\n~~~\n```\n"),
        "paragraphs inside a fence": Post("```\n", repeat="para\n\n", tail="```"),
        "nested fences filling 4,000": Post("````\n", repeat="```\ninner\n```\n", tail="````"),
    }
    return Category("markdown", cases_of("answered", texts) + cases_of("answered", filled), model="echo")


def _png(size: int) -> bytes:
    return b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * (size // 256)


def attachments() -> Category:
    """Huge and binary attachments, and file names that try things."""
    eight_mb = 8 * 1024 * 1024
    read = {
        "an 8 MB text file": (("huge.txt", b"line of text\n" * (eight_mb // 13)),),
        "binary bytes named .txt": (("sneaky.txt", bytes(range(256)) * 4096),),
        "a NUL-only text file": (("zeros.txt", b"\x00" * 50_000),),
        "an empty text file": (("empty.txt", b""),),
        "invalid UTF-8": (("latin.txt", "café naïve".encode("latin-1") * 100),),
        "UTF-16 with a byte-order mark": (("wide.txt", "hello world".encode("utf-16")),),
        "a 5 MB JSON file": (("big.json", b'{"k": "' + b"v" * (5 * 1024 * 1024) + b'"}'),),
        "a right-to-left file name": (("\u202egnp.txt", b"text"),),
        "a file name with @everyone": (("@everyone.txt", b"text"),),
        "a file name with markdown": (("**bold**_and_`code`.md", b"text"),),
        "ten text files": tuple((f"f{i}.txt", b"x" * 1000) for i in range(10)),
    }
    cases = [
        Case(name, Post("read this", files=files, stored_has=tuple(f"[attached file {n}" for n, _ in files)),
             "answered")
        for name, files in read.items()
    ]  # fmt: skip
    declined = {
        "an 8 MB binary file": ("blob.bin", bytes(range(256)) * (eight_mb // 256)),
        "a PNG": ("cat.png", _png(50_000)),
        "a zip": ("archive.zip", b"PK\x03\x04" + bytes(1000)),
        "a gzip bomb": ("bomb.gz", b"\x1f\x8b\x08\x00" + bytes(100_000)),
        "an executable": ("run.exe", b"MZ" + bytes(4000)),
        "an image with an invisible name": ("\u200b\u202e.png", _png(1000)),
        "an image named @everyone": ("@everyone.png", _png(1000)),
    }
    for name, file in declined.items():
        cases.append(
            Case(f"{name} and no words", Post("", files=(file,), notice="I can't look at"), "declined")
        )
        asking = Post("what is it?", files=(file,), notice="answering from")
        cases.append(Case(f"{name} with a question", asking, "answered"))
    long_names = tuple((("n" * 200) + f"{i}.png", _png(300)) for i in range(10))
    cases += [
        Case("ten images with 200-character names", Post("", files=long_names, notice="I can't look at"),
             "declined"),
        Case("a text file and an image", Post("both", files=(("a.txt", b"text"), ("b.png", _png(300))),
             stored_has=("[attached file a.txt",), notice="answering from"), "answered"),
    ]  # fmt: skip
    return Category("attachments", cases, overrides=SHORT_READS, parallel=4)


def file_categories() -> list[Category]:
    return [code(), markdown(), attachments()]
