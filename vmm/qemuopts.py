"""QEMU's option-string syntax: ``value,key=val,flag`` with ``,,`` for a comma,
and its size and boolean rules. Used for -m, -smp, -device, -chardev, ..."""

from __future__ import annotations

from vmm.errors import UserError

SIZE_SUFFIXES = {"": 0, "b": 0, "k": 10, "m": 20, "g": 30, "t": 40, "p": 50, "e": 60}
SIZE_HELP = ("Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n"
             "and exabytes, respectively.")


class OptsError(UserError):
    """A user error in an option string; the message is QEMU's text."""


def split_opts(text: str) -> list[str]:
    """Splits on single commas; ',,' stands for a literal comma."""
    parts, current, i = [], [], 0
    while i < len(text):
        ch = text[i]
        if ch == ",":
            if text[i + 1:i + 2] == ",":
                current.append(",")
                i += 2
                continue
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
        i += 1
    parts.append("".join(current))
    return parts


def parse_opts(text: str, implied: str | None = None) -> dict[str, str]:
    """'virtio-net-pci,id=n0,mac=...' -> {'driver': 'virtio-net-pci', 'id': 'n0', ...}.

    A bare first word becomes the ``implied`` key; other bare words are flags:
    ``foo`` means foo=on and ``nofoo`` means foo=off, as QEMU's legacy syntax.
    """
    return dict(parse_opts_repeated(text, implied))


def parse_opts_repeated(text: str, implied: str | None = None) -> list[tuple[str, str]]:
    """parse_opts' pairs in order, a key given twice twice (for list members)."""
    pairs: list[tuple[str, str]] = []
    for index, part in enumerate(split_opts(text)):
        if part == "":
            continue
        if "=" in part:
            key, value = part.split("=", 1)
            pairs.append((key, value))
        elif index == 0 and implied is not None:
            pairs.append((implied, part))
        elif part.startswith("no") and len(part) > 2:
            pairs.append((part[2:], "off"))
        else:
            pairs.append((part, "on"))
    return pairs


def parse_size(text: str, default_shift: int = 0) -> int:
    """'512M' -> 536870912; a bare number is scaled by 2**default_shift."""
    s = text.strip()
    if not s:
        raise OptsError("empty size")
    suffix = s[-1].lower() if s[-1].isalpha() else ""
    number = s[:-1] if suffix else s
    if suffix not in SIZE_SUFFIXES or not number:
        raise OptsError(f"invalid size '{text}'")
    try:
        value = float(number) if "." in number else int(number, 0)
    except ValueError:
        raise OptsError(f"invalid size '{text}'") from None
    if value < 0:
        raise OptsError(f"invalid size '{text}'")
    shift = SIZE_SUFFIXES[suffix] if suffix else default_shift
    result = int(value * (1 << shift))
    if result >= 1 << 64:
        raise OptsError(f"invalid size '{text}'")
    return result


def parse_bool(name: str, value: str) -> bool:
    if value in ("on", "yes", "true", "y"):
        return True
    if value in ("off", "no", "false", "n"):
        return False
    raise OptsError(f"Parameter '{name}' expects 'on' or 'off'")


def parse_int(name: str, value: str) -> int:
    try:
        return int(value, 0)
    except ValueError:
        raise OptsError(f"Parameter '{name}' expects integer") from None
