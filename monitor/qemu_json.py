"""QEMU's JSON text: how QEMU 7.2 prints a QObject (QMP replies, `qom-get` in HMP).

Objects come out in QDict order (monitor/qdict.py); Python dicts keep
insertion order, so ordering a dict the way QEMU would only needs that order
replayed. Strings escape everything outside printable ASCII as \\uXXXX
(uppercase, surrogate pairs beyond the BMP); doubles print as %.17g.
"""

from __future__ import annotations

from monitor.qdict import qdict_order

_SHORT_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\f": "\\f", "\n": "\\n",
                  "\r": "\\r", "\t": "\\t"}


def encode_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in _SHORT_ESCAPES:
            out.append(_SHORT_ESCAPES[ch])
            continue
        cp = ord(ch)
        if 0x20 <= cp < 0x7F:
            out.append(ch)
        elif 0xD800 <= cp <= 0xDFFF:
            out.append("\\uFFFD")           # not representable: QEMU's replacement
        elif cp > 0xFFFF:
            cp -= 0x10000
            out.append(f"\\u{0xD800 + (cp >> 10):04X}\\u{0xDC00 + (cp & 0x3FF):04X}")
        else:
            out.append(f"\\u{cp:04X}")
    out.append('"')
    return "".join(out)


class _Raw(str):
    """Output text, as opposed to a string value still to be encoded."""


def _scalar(value: object) -> str:
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.17g}"
    if isinstance(value, str):
        return encode_string(value)
    raise TypeError(f"cannot encode {type(value).__name__} as QMP JSON")


def encode(value: object) -> str:
    """One value in QEMU's compact format; iterative, so any nesting depth works."""
    parts: list[str] = []
    stack: list[object] = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, _Raw):
            parts.append(item)
        elif isinstance(item, dict) and item:
            pieces: list[object] = [_Raw("{")]
            for i, key in enumerate(qdict_order(list(item))):
                pieces += [_Raw((", " if i else "") + encode_string(key) + ": "), item[key]]
            pieces.append(_Raw("}"))
            stack.extend(reversed(pieces))
        elif isinstance(item, (list, tuple)) and item:
            pieces = [_Raw("[")]
            for i, element in enumerate(item):
                if i:
                    pieces.append(_Raw(", "))
                pieces.append(element)
            pieces.append(_Raw("]"))
            stack.extend(reversed(pieces))
        elif isinstance(item, dict):
            parts.append("{}")
        elif isinstance(item, (list, tuple)):
            parts.append("[]")
        else:
            parts.append(_scalar(item))
    return "".join(parts)


def pretty(value: object, indent: int = 0) -> str:
    """-qmp-pretty: QEMU's pretty printer (4 spaces, one member per line)."""
    pad = "    " * (indent + 1)
    if isinstance(value, dict) and value:
        members = [f"{pad}{encode_string(k)}: {pretty(value[k], indent + 1)}"
                   for k in qdict_order(list(value))]
        return "{\n" + ",\n".join(members) + "\n" + "    " * indent + "}"
    if isinstance(value, (list, tuple)) and value:
        items = [pad + pretty(v, indent + 1) for v in value]
        return "[\n" + ",\n".join(items) + "\n" + "    " * indent + "]"
    return encode(value)


