"""QMP input: a streaming JSON parser that behaves as QEMU 7.2's.

Input is a byte stream of tokens; newlines mean nothing. Tokens are collected
until the braces and brackets balance (or go negative), then parsed as one
value. Errors follow QEMU: a lexical error reports the offending text as
``stray '...'`` and the lexer skips ahead to the next structural or control
character; a syntax error drops the tokens collected so far, so each
leftover top-level token of a bad message gets an error of its own.

``JsonStreamParser(emit).feed(data)`` calls ``emit(value, None)`` for every
complete value and ``emit(None, message)`` for every error.
"""

from __future__ import annotations

import re
from collections.abc import Callable

MAX_TOKEN_SIZE = 64 << 20
MAX_TOKEN_COUNT = 2 * 1024 * 1024
MAX_NESTING = 1024

# token kinds
LCURLY, RCURLY, LSQUARE, RSQUARE, COLON, COMMA = "{", "}", "[", "]", ":", ","
STRING, INTEGER, FLOAT, KEYWORD = "string", "integer", "float", "keyword"
STRUCTURAL = {ord("{"): LCURLY, ord("}"): RCURLY, ord("["): LSQUARE, ord("]"): RSQUARE,
              ord(":"): COLON, ord(","): COMMA}
WHITESPACE = b" \t\r\n"

# Lexer states: a token in progress
START, RECOVERY, DQ, DQ_ESC, SQ, SQ_ESC, KEYWORD_STATE, NUMBER = range(8)

_STRING_RUN = {DQ: re.compile(rb'[\x20-\x21\x23-\x5b\x5d-\xfd]+'),
               SQ: re.compile(rb"[\x20-\x26\x28-\x5b\x5d-\xfd]+")}
_RECOVERY_RUN = re.compile(rb"[\x09\x20-\x2b\x2d-\x39\x3b-\x5a\x5c\x5e-\x7a\x7c\x7e-\xfd]+")
_WS_RUN = re.compile(rb"[ \t\r\n]+")
_NUMBER = re.compile(rb"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_NUMBER_CHARS = frozenset(b"0123456789+-.eE")
_NUMBER_PREFIX = re.compile(
    rb"-|-?(?:0|[1-9][0-9]*)(?:\.(?:[0-9]+(?:[eE](?:[-+]?(?:[0-9]+)?)?)?)?"
    rb"|[eE](?:[-+]?(?:[0-9]+)?)?)?")

Emit = Callable[[object, "str | None"], None]


class JsonError(ValueError):
    pass


class JsonStreamParser:
    def __init__(self, emit: Emit) -> None:
        self.emit = emit
        self.state = START
        self.token = bytearray()
        self.tokens: list[tuple[str, bytes]] = []
        self.brace = 0
        self.bracket = 0
        self.token_size = 0

    # -- lexer -------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        pos, n = 0, len(data)
        while pos < n:
            state = self.state
            if state in (DQ, SQ):
                match = _STRING_RUN[state].match(data, pos)
                if match:
                    # QEMU flushes a token the moment it passes MAX_TOKEN_SIZE
                    end = min(match.end(), pos + MAX_TOKEN_SIZE + 1 - len(self.token))
                    self.token += data[pos:end]
                    pos = end
                    if len(self.token) > MAX_TOKEN_SIZE:
                        self._oversized_token()
                    continue
            elif state == RECOVERY:
                match = _RECOVERY_RUN.match(data, pos)
                if match:
                    pos = match.end()
                    continue
            elif state == START:
                match = _WS_RUN.match(data, pos)
                if match:
                    pos = match.end()
                    continue
            if self._feed_byte(data[pos]):
                pos += 1

    def _feed_byte(self, ch: int) -> bool:
        """Handles one byte; returns False when it must be looked at again (lookahead)."""
        state = self.state
        if state == START:
            if ch in STRUCTURAL:
                self._token(STRUCTURAL[ch], bytes([ch]))
            elif ch in WHITESPACE:
                pass
            elif ch == 0x22:
                self.state, self.token = DQ, bytearray(b'"')
            elif ch == 0x27:
                self.state, self.token = SQ, bytearray(b"'")
            elif 0x61 <= ch <= 0x7A:
                self.state, self.token = KEYWORD_STATE, bytearray([ch])
            elif ch == 0x2D or 0x30 <= ch <= 0x39:
                self.state, self.token = NUMBER, bytearray([ch])
            else:
                self._lex_error(bytes([ch]))
            return True
        if state == RECOVERY:
            # Resynchronise on a structural byte, a control byte other than tab,
            # or the impossible UTF-8 bytes 0xFE/0xFF; look at it again from START.
            if ch in STRUCTURAL or (ch < 0x20 and ch != 0x09) or ch >= 0xFE:
                self.state = START
                return False
            return True
        if state in (DQ, SQ):
            quote = 0x22 if state == DQ else 0x27
            if ch == quote:
                self.token.append(ch)
                self._token(STRING, bytes(self.token))
                self.state = START
            elif ch == 0x5C:
                self.token.append(ch)
                self.state = DQ_ESC if state == DQ else SQ_ESC
            elif 0x20 <= ch <= 0xFD:
                self.token.append(ch)
            else:
                self._lex_error(bytes(self.token) + bytes([ch]))
            return True
        if state in (DQ_ESC, SQ_ESC):
            self.token.append(ch)
            if 0x20 <= ch <= 0xFD:
                self.state = DQ if state == DQ_ESC else SQ
            else:
                self._lex_error(bytes(self.token))
            return True
        if state == KEYWORD_STATE:
            if 0x61 <= ch <= 0x7A:
                self.token.append(ch)
                return True
            self._token(KEYWORD, bytes(self.token))
            self.state = START
            return False
        # NUMBER: grow while the text can still become a number; a complete
        # number ends at the first byte that cannot extend it (lookahead).
        candidate = bytes(self.token) + bytes([ch])
        if ch in _NUMBER_CHARS and self._number_prefix_ok(candidate):
            self.token.append(ch)
            return True
        text = bytes(self.token)
        leading_zero = text in (b"0", b"-0") and 0x30 <= ch <= 0x39   # QEMU: an error
        if _NUMBER.fullmatch(text) and not leading_zero:
            is_float = any(c in text for c in b".eE")
            self._token(FLOAT if is_float else INTEGER, text)
            self.state = START
            return False
        self._lex_error(candidate)
        return True

    @staticmethod
    def _number_prefix_ok(text: bytes) -> bool:
        """Whether text can still grow into a JSON number (QEMU's lexer states)."""
        return _NUMBER_PREFIX.fullmatch(text) is not None

    def _lex_error(self, text: bytes) -> None:
        self.token = bytearray()
        self.state = RECOVERY
        self._stream_error(f"JSON parse error, stray '{_display(text)}'")

    def _oversized_token(self) -> None:
        self.token = bytearray()
        self.state = START
        self._stream_error("JSON token size limit exceeded")

    def flush(self) -> None:
        """End of input (the client went away): parse what is pending, as QEMU does."""
        if self.state == KEYWORD_STATE:
            self._token(KEYWORD, bytes(self.token))
        elif self.state == NUMBER and _NUMBER.fullmatch(bytes(self.token)):
            text = bytes(self.token)
            self._token(FLOAT if any(c in text for c in b".eE") else INTEGER, text)
        self.state, self.token = START, bytearray()
        if self.tokens:
            self._parse_and_emit()

    # -- streamer ----------------------------------------------------------
    def _token(self, kind: str, text: bytes) -> None:
        if kind == LCURLY:
            self.brace += 1
        elif kind == RCURLY:
            self.brace -= 1
        elif kind == LSQUARE:
            self.bracket += 1
        elif kind == RSQUARE:
            self.bracket -= 1
        if self.token_size + len(text) + 1 > MAX_TOKEN_SIZE:
            self._stream_error("JSON token size limit exceeded")
            return
        if len(self.tokens) + 1 > MAX_TOKEN_COUNT:
            self._stream_error("JSON token count limit exceeded")
            return
        if self.brace + self.bracket > MAX_NESTING:
            self._stream_error("JSON nesting depth limit exceeded")
            return
        self.tokens.append((kind, text))
        self.token_size += len(text)
        if (self.brace > 0 or self.bracket > 0) and self.brace >= 0 and self.bracket >= 0:
            return
        self._parse_and_emit()

    def _reset(self) -> None:
        self.tokens = []
        self.brace = self.bracket = 0
        self.token_size = 0

    def _stream_error(self, message: str) -> None:
        self._reset()
        self.emit(None, message)

    def _parse_and_emit(self) -> None:
        tokens = self.tokens
        self._reset()
        try:
            value = _Parser(tokens).parse()
        except JsonError as e:
            self.emit(None, f"JSON parse error, {e}")
            return
        except Exception as e:  # a parser bug must still leave an answer, never a hang
            self.emit(None, f"JSON parse error, {e}")
            return
        self.emit(value, None)


def _display(text: bytes) -> str:
    """How QEMU shows raw input in an error: invalid UTF-8 becomes U+FFFD."""
    return text.decode("utf-8", errors="replace")


# -- parser ---------------------------------------------------------------------
_SIMPLE_ESCAPES = {ord('"'): '"', ord("'"): "'", ord("\\"): "\\", ord("/"): "/",
                   ord("b"): "\b", ord("f"): "\f", ord("n"): "\n", ord("r"): "\r",
                   ord("t"): "\t"}
_HEX4 = re.compile(rb"[0-9a-fA-F]{4}")


def valid_codepoint(cp: int) -> bool:
    """QEMU's rule: no surrogates, no noncharacters, nothing past U+10FFFF."""
    if cp < 0 or cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
        return False
    return not (0xFDD0 <= cp <= 0xFDEF or (cp & 0xFFFE) == 0xFFFE)


def _decode_utf8_char(raw: bytes, pos: int) -> tuple[str, int] | None:
    first = raw[pos]
    if first == 0xC0 and pos + 1 < len(raw) and raw[pos + 1] == 0x80:
        return "\0", pos + 2  # modified UTF-8 for U+0000
    length = 1 if first < 0x80 else 2 if first >> 5 == 6 else 3 if first >> 4 == 14 else \
        4 if first >> 3 == 30 else 0
    if not length:
        return None
    try:
        ch = raw[pos:pos + length].decode("utf-8")
    except UnicodeDecodeError:
        return None
    if len(ch) != 1 or not valid_codepoint(ord(ch)):
        return None
    return ch, pos + length


def parse_string_token(raw: bytes) -> str:
    out: list[str] = []
    pos = 1
    end = len(raw) - 1
    while pos < end:
        ch = raw[pos]
        if ch == 0x5C:
            begin = pos
            esc = raw[pos + 1]
            pos += 2
            if esc in _SIMPLE_ESCAPES:
                out.append(_SIMPLE_ESCAPES[esc])
                continue
            if esc != ord("u"):
                raise JsonError("invalid escape sequence in string")
            cp = int(raw[pos:pos + 4], 16) if _HEX4.fullmatch(raw[pos:pos + 4]) else -1
            pos += 4
            if 0xD800 <= cp <= 0xDBFF and raw[pos:pos + 2] == b"\\u":
                trailing = raw[pos + 2:pos + 6]
                low = int(trailing, 16) if _HEX4.fullmatch(trailing) else -1
                if 0xDC00 <= low <= 0xDFFF:
                    cp = 0x10000 + ((cp & 0x3FF) << 10) + (low & 0x3FF)
                    pos += 6
                else:
                    cp = -1
            if cp != 0 and not valid_codepoint(cp):
                shown = raw[begin:pos].decode("utf-8", errors="replace")
                raise JsonError(f"{shown} is not a valid Unicode character")
            out.append(chr(cp))
            continue
        decoded = _decode_utf8_char(raw, pos)
        if decoded is None:
            raise JsonError("invalid UTF-8 sequence in string")
        out.append(decoded[0])
        pos = decoded[1]
    return "".join(out)


class _Parser:
    """QEMU's recursive-descent parser, run on an explicit stack: values nest up
    to MAX_NESTING levels, far deeper than Python's recursion limit allows."""

    def __init__(self, tokens: list[tuple[str, bytes]]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> tuple[str, bytes] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def pop(self) -> tuple[str, bytes]:
        token = self.peek()
        if token is None:
            raise JsonError("premature EOI")
        self.pos += 1
        return token

    def literal(self, kind: str, text: bytes) -> object:
        if kind == STRING:
            return parse_string_token(text)
        if kind == INTEGER:
            number = int(text)
            return number if -(1 << 63) <= number < (1 << 64) else float(text)
        if kind == FLOAT:
            return float(text)
        word = text.decode()
        if word in ("true", "false", "null"):
            return {"true": True, "false": False, "null": None}[word]
        raise JsonError(f"invalid keyword '{word}'")

    def parse(self) -> object:
        # frames: ["key", dict, None] | ["value", dict, key] | ["item", list]
        stack: list[list] = []
        while True:
            kind, text = self.pop()
            if kind == LCURLY:
                if self.peek() is None:
                    raise JsonError("premature EOI")
                if self.peek()[0] == RCURLY:
                    self.pos += 1
                    result: object = {}
                else:
                    stack.append(["key", {}, None])
                    continue
            elif kind == LSQUARE:
                if self.peek() is None:
                    raise JsonError("premature EOI")
                if self.peek()[0] == RSQUARE:
                    self.pos += 1
                    result = []
                else:
                    stack.append(["item", []])
                    continue
            elif kind in (STRING, INTEGER, FLOAT, KEYWORD):
                result = self.literal(kind, text)
            else:
                raise JsonError("expecting value")
            # hand the finished value to the containers waiting for it
            while True:
                if not stack:
                    return result
                frame = stack[-1]
                if frame[0] == "key":
                    if not isinstance(result, str):
                        raise JsonError("key is not a string in object")
                    if self.pop()[0] != COLON:
                        raise JsonError("missing : in object pair")
                    frame[0], frame[2] = "value", result
                    break
                if frame[0] == "value":
                    if frame[2] in frame[1]:
                        raise JsonError("duplicate key")
                    frame[1][frame[2]] = result
                    token = self.pop()
                    if token[0] == RCURLY:
                        result = stack.pop()[1]
                        continue
                    if token[0] != COMMA:
                        raise JsonError("expected separator in dict")
                    if self.peek() is None:
                        raise JsonError("premature EOI")
                    frame[0] = "key"
                    break
                frame[1].append(result)
                token = self.pop()
                if token[0] == RSQUARE:
                    result = stack.pop()[1]
                    continue
                if token[0] != COMMA:
                    raise JsonError("expected separator in list")
                break
