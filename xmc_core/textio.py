"""One text policy for every input: dataset files (plain or gzip), standard input, command-line
arguments and the strings of the Python API.

Decoding (`decode_text`, `text_lines`, `text_argument`):
- Bytes are UTF-8. A leading UTF-8 byte-order mark is dropped. Nothing else is guessed: a UTF-16
  or UTF-32 file (recognised by its byte-order mark) or a byte that is not UTF-8 (a Latin-1
  0xe9, say) is a `DataFormatError` naming the source (`FILE`, `<stdin>`, `--text`), the line and
  the byte, with the command that converts the file.
- Lines end at "\\n" only; a "\\r" before it is dropped, so CRLF files read as LF files. Other
  line-break characters (U+2028, U+0085, form feed) stay inside their line, so that the lines
  of a texts file and its labels file stay aligned.

Labels (`label_name`): names read from a dataset are compared as a person sees them. Each is
NFC-normalized ("é" typed as one code point or as "e" + U+0301 is one label), and a name holding
an invisible character (a control or format character: U+200B ZERO WIDTH SPACE, U+00AD SOFT
HYPHEN, U+FEFF...) is an error naming it, so that "crude" and "crude\\u200b" can never become two
labels. (Label names handed to the Python API's train functions are taken as given.)

Texts (`normalize_texts`) are NFC-normalized where they are featurized (the TF-IDF vectorizer and
every encoder's tokenizer, `encoder.tokenize`), so the Python API, files, stdin and `--text` give
the same features; a string that is not valid Unicode (a lone surrogate, as Python makes of
undecodable argv bytes) is an error naming it.
"""

from __future__ import annotations

import os
import unicodedata
from typing import Sequence

__all__ = ["DataFormatError", "strip_bom", "decode_text", "text_lines", "text_argument", "is_invisible", "label_name", "normalize_texts"]


class DataFormatError(ValueError):
    """A dataset file (or other input) is malformed.

    ``str(e)`` is one line: ``"{path}:{line}: {field}: {message}"``; the
    ``:{line}`` part is left out when ``line`` is None (a problem with the whole
    file or folder rather than one line).

    Attributes:
        path: str, the offending file or folder (or ``<stdin>``, ``--text``).
        line: 1-based line number (int) or None.
        field: short name of what is wrong, e.g. "header", "label", "feature",
            "value", "lines", "encoding", "file", "layout".
        message: human-readable explanation.
    """

    def __init__(self, path, line: int | None, field: str, message: str):
        self.path = str(path)
        self.line = None if line is None else int(line)
        self.field = str(field)
        self.message = " ".join(str(message).split())  # keep it on one line
        where = self.path if self.line is None else f"{self.path}:{self.line}"
        super().__init__(f"{where}: {self.field}: {self.message}")

    def __reduce__(self):  # picklable (multiprocessing, Dagster)
        return (type(self), (self.path, self.line, self.field, self.message))


_UTF8_BOM = b"\xef\xbb\xbf"
# UTF-32 first: its little-endian mark starts with UTF-16's
_OTHER_BOMS = ((b"\xff\xfe\x00\x00", "UTF-32LE"), (b"\x00\x00\xfe\xff", "UTF-32BE"),
               (b"\xff\xfe", "UTF-16LE"), (b"\xfe\xff", "UTF-16BE"))


def strip_bom(raw: bytes, source: str) -> bytes:
    """`raw` without a leading UTF-8 byte-order mark (for readers of numeric text that split bytes
    themselves).

    Raises:
        DataFormatError: `source`:1: encoding: the bytes start with a UTF-16 or UTF-32 mark.
    """
    if raw.startswith(_UTF8_BOM):
        return raw[len(_UTF8_BOM):]
    for bom, name in _OTHER_BOMS:
        if raw.startswith(bom):
            raise DataFormatError(source, 1, "encoding", f"the text is {name} (byte-order mark {bom.hex(' ')}); "
                                  f"xmc reads UTF-8: convert it, e.g. iconv -f {name[:6]} -t UTF-8")
    return raw


def decode_text(raw: bytes, source: str) -> str:
    """`raw` as text under the policy above (UTF-8, BOM dropped; lines are not split).

    Raises:
        DataFormatError: `source`:LINE: encoding: ... for a UTF-16/32 byte-order mark or the first
            byte that is not UTF-8 (its value and column).
    """
    raw = strip_bom(raw, source)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = raw.rfind(b"\n", 0, e.start) + 1
        line_no = raw.count(b"\n", 0, e.start) + 1
        raise DataFormatError(
            source, line_no, "encoding",
            f"invalid UTF-8 byte 0x{raw[e.start]:02x} at byte {e.start - line_start + 1} of the line "
            "(xmc reads UTF-8; convert the text, e.g. iconv -f LATIN1 -t UTF-8)",
        ) from None


def text_lines(raw: bytes, source: str) -> list[str]:
    """The lines of `raw` (decoded by `decode_text`), split on "\\n" only, a trailing "\\r"
    dropped from each; no empty last line for a final newline."""
    text = decode_text(raw, source)
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    if "\r" in text:
        lines = [ln[:-1] if ln.endswith("\r") else ln for ln in lines]
    return lines


def text_argument(value: str, source: str) -> str:
    """A command-line argument as text: Python decodes argv bytes that are not UTF-8 to lone
    surrogates (PEP 383); those bytes are checked as any input is.

    Raises:
        DataFormatError: `source`:1: encoding: ... naming the byte.
    """
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:
        raw = os.fsencode(value)  # the bytes behind PEP 383's surrogates
    except UnicodeEncodeError as e:  # a surrogate no byte decodes to: not from argv
        raise DataFormatError(source, 1, "encoding", f"not valid Unicode: lone surrogate U+{ord(value[e.start]):04X}") from None
    return decode_text(raw, source)


def is_invisible(ch: str) -> bool:
    """Whether the character `ch` is a control or format character (Unicode categories Cc, Cf):
    nothing a person sees. Returns bool."""
    return unicodedata.category(ch) in ("Cc", "Cf")


def label_name(name: str, source: str, line: int | None) -> str:
    """A label name as a person sees it: NFC-normalized.

    Raises:
        DataFormatError: `source`:`line`: label: the name holds an invisible character (named).
    """
    if name.isprintable():  # no control, format or unassigned character: the common case
        return name if name.isascii() else unicodedata.normalize("NFC", name)
    bad = next((ch for ch in name if is_invisible(ch)), None)
    if bad is not None:
        shown = name.encode("ascii", "backslashreplace").decode()
        what = unicodedata.name(bad, "a control character")
        raise DataFormatError(source, line, "label", f"label '{shown}' holds an invisible character "
                              f"U+{ord(bad):04X} ({what}); remove it")
    return name if name.isascii() else unicodedata.normalize("NFC", name)


def normalize_texts(texts: Sequence[str], source: str = "texts") -> list[str]:
    """`texts` NFC-normalized (ASCII texts as they are).

    Raises:
        DataFormatError: `source`[i]: encoding: a text that is not valid Unicode (a lone surrogate).
    """
    out = list(texts)
    for i, t in enumerate(out):
        if not isinstance(t, str):
            raise TypeError(f"{source}[{i}]: expected str, got {type(t).__name__}")
        if t.isascii():
            continue
        try:
            t.encode("utf-8")
        except UnicodeEncodeError as e:
            raise DataFormatError(f"{source}[{i}]", None, "encoding",
                                  f"not valid Unicode: lone surrogate U+{ord(t[e.start]):04X} at character "
                                  f"{e.start + 1} (text decoded from bytes that are not UTF-8?)") from None
        if not unicodedata.is_normalized("NFC", t):
            out[i] = unicodedata.normalize("NFC", t)
    return out
