"""HMP integer expressions (`balloon 2*256`, `xp 0x1000+$eax`), with QEMU's messages."""

from __future__ import annotations

from collections.abc import Callable


class ExprError(ValueError):
    pass


class ExprParser:
    """sum := prod (('+'|'-') prod)*; prod := logic (('*'|'/'|'%') logic)*;
    logic := unary (('&'|'|'|'^') unary)*; unary := ('+'|'-'|'~') unary | '(' sum ')'
    | '$'register | number | 'c'"""

    def __init__(self, text: str, pos: int, register: Callable[[str], int] | None) -> None:
        self.text = text
        self.pos = pos
        self.register = register

    def _peek(self) -> str:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1
        return self.text[self.pos] if self.pos < len(self.text) else ""

    def parse(self) -> int:
        return self._sum()

    def _sum(self) -> int:
        value = self._prod()
        while (op := self._peek()) in ("+", "-") and op:
            self.pos += 1
            rhs = self._prod()
            value = value + rhs if op == "+" else value - rhs
        return value

    def _prod(self) -> int:
        value = self._logic()
        while (op := self._peek()) in ("*", "/", "%") and op:
            self.pos += 1
            rhs = self._logic()
            if op == "*":
                value *= rhs
            else:
                if rhs == 0:
                    raise ExprError("division by zero")
                value = int(value / rhs) if op == "/" else value - rhs * int(value / rhs)
        return value

    def _logic(self) -> int:
        value = self._unary()
        while (op := self._peek()) in ("&", "|", "^") and op:
            self.pos += 1
            rhs = self._unary()
            value = value & rhs if op == "&" else value | rhs if op == "|" else value ^ rhs
        return value

    def _unary(self) -> int:
        ch = self._peek()
        if ch == "":
            raise ExprError("unexpected end of expression")
        if ch in "+-~":
            self.pos += 1
            value = self._unary()
            return value if ch == "+" else -value if ch == "-" else ~value
        if ch == "(":
            self.pos += 1
            value = self._sum()
            if self._peek() != ")":
                raise ExprError("')' expected")
            self.pos += 1
            return value
        if ch == "'":
            if self.pos + 2 < len(self.text) and self.text[self.pos + 2] == "'":
                value = ord(self.text[self.pos + 1])
                self.pos += 3
                return value
            raise ExprError("invalid char in expression")
        if ch == "$":
            start = self.pos = self.pos + 1
            while self.pos < len(self.text) and (self.text[self.pos].isalnum()
                                                 or self.text[self.pos] in "._"):
                self.pos += 1
            name = self.text[start:self.pos]
            if self.register is None:
                raise ExprError("no cpu defined")
            try:
                return self.register(name)
            except KeyError:
                raise ExprError("unknown register") from None
        return self._number()

    def _number(self) -> int:
        text, start = self.text, self.pos
        if text.startswith(("0x", "0X"), start):
            end = start + 2
            while end < len(text) and text[end] in "0123456789abcdefABCDEF":
                end += 1
            digits, base = text[start + 2:end], 16
        elif text.startswith("0", start):
            end = start + 1
            while end < len(text) and text[end] in "01234567":
                end += 1
            digits, base = text[start:end], 8
        else:
            end = start
            while end < len(text) and text[end].isdigit():
                end += 1
            digits, base = text[start:end], 10
        if not digits:
            raise ExprError(f"invalid char '{text[start]}' in expression")
        value = int(digits, base)
        if value >= 1 << 64:
            raise ExprError("number too large")
        self.pos = end
        return value
