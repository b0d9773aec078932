"""The input layer: where keys and pointer events from the monitor (send-key,
input-send-event, HMP sendkey/mouse_*) and from VNC clients go.

Keyboards and mice register here as handlers, as in QEMU's ui/input.c: keys go
to the newest keyboard, pointer events to the current mouse (the newest one
activated, HMP mouse_set picks another). Mice are numbered as QEMU numbers them,
the PS/2 mouse being #2. Key names are QEMU's QKeyCode names; scancodes are PC
AT set 1 (what a guest reads through the i8042's translation), numbers as QEMU's
"number" keys: the set-1 code, with 0x80 added for the 0xE0-prefixed keys.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

QKEYCODES = tuple((
    "unmapped shift shift_r alt alt_r ctrl ctrl_r menu esc 1 2 3 4 5 6 7 8 9 0 minus equal "
    "backspace tab q w e r t y u i o p bracket_left bracket_right ret a s d f g h j k l "
    "semicolon apostrophe grave_accent backslash z x c v b n m comma dot slash asterisk spc "
    "caps_lock f1 f2 f3 f4 f5 f6 f7 f8 f9 f10 num_lock scroll_lock kp_divide kp_multiply "
    "kp_subtract kp_add kp_enter kp_decimal sysrq kp_0 kp_1 kp_2 kp_3 kp_4 kp_5 kp_6 kp_7 "
    "kp_8 kp_9 less f11 f12 print home pgup pgdn end left up down right insert delete stop "
    "again props undo front copy open paste find cut lf help meta_l meta_r compose pause ro "
    "hiragana henkan yen muhenkan katakanahiragana kp_comma kp_equals power sleep wake "
    "audionext audioprev audiostop audioplay audiomute volumeup volumedown mediaselect mail "
    "calculator computer ac_home ac_back ac_forward ac_refresh ac_bookmarks lang1 lang2"
).split())
BUTTONS = ("left", "middle", "right", "wheel-up", "wheel-down", "side", "extra",
           "wheel-left", "wheel-right")
AXES = ("x", "y")
ABS_MAX = 0x7FFF                    # absolute coordinates run 0..32767 (QEMU's INPUT_EVENT_ABS)


def _set1() -> dict[str, int]:
    table: dict[str, int] = {}
    plain = ("esc 1 2 3 4 5 6 7 8 9 0 minus equal backspace tab q w e r t y u i o p "
             "bracket_left bracket_right ret ctrl a s d f g h j k l semicolon apostrophe "
             "grave_accent shift backslash z x c v b n m comma dot slash shift_r kp_multiply "
             "alt spc caps_lock f1 f2 f3 f4 f5 f6 f7 f8 f9 f10 num_lock scroll_lock kp_7 kp_8 "
             "kp_9 kp_subtract kp_4 kp_5 kp_6 kp_add kp_1 kp_2 kp_3 kp_0 kp_decimal").split()
    for code, name in enumerate(plain, start=1):
        table[name] = code
    table.update(less=0x56, f11=0x57, f12=0x58, ro=0x73, kp_comma=0x7E,
                 kp_equals=0x59, henkan=0x79, muhenkan=0x7B, yen=0x7D, hiragana=0x77,
                 katakanahiragana=0x70, asterisk=0x37)
    extended = dict(kp_enter=0x1C, ctrl_r=0x1D, kp_divide=0x35, print=0x37, alt_r=0x38,
                    pause=0x46, home=0x47, up=0x48, pgup=0x49, left=0x4B, right=0x4D,
                    end=0x4F, down=0x50, pgdn=0x51, insert=0x52, delete=0x53, meta_l=0x5B,
                    meta_r=0x5C, compose=0x5D, power=0x5E, sleep=0x5F, wake=0x63, sysrq=0x37,
                    audiomute=0x20, calculator=0x21, audioplay=0x22, audiostop=0x24,
                    volumedown=0x2E, volumeup=0x30, ac_home=0x32, audioprev=0x10,
                    audionext=0x19, mail=0x6C, computer=0x6B, mediaselect=0x6D,
                    ac_back=0x6A, ac_forward=0x69, ac_refresh=0x67, ac_bookmarks=0x66,
                    stop=0x68)
    # (menu, again, props, undo, front, copy, open, paste, find, cut, help, lf, lang1
    # and lang2 have no PC scancode: QEMU's PS/2 keyboard sends nothing for them)
    table.update({name: 0xE000 | code for name, code in extended.items()})
    return table


SET1 = _set1()

# Scancode set 2 (what a keyboard sends with the controller's translation off), by
# set-1 code: the keys whose set-2 codes differ in pattern from set 1's
_SET2_PLAIN = bytes.fromhex(
    "00 76 16 1e 26 25 2e 36 3d 3e 46 45 4e 55 66 0d"      # 00-0f
    "15 1d 24 2d 2c 35 3c 43 44 4d 54 5b 5a 14 1c 1b"      # 10-1f
    "23 2b 34 33 3b 42 4b 4c 52 0e 12 5d 1a 22 21 2a"      # 20-2f
    "32 31 3a 41 49 4a 59 7c 11 29 58 05 06 04 0c 03"      # 30-3f
    "0b 83 0a 01 09 77 7e 6c 75 7d 7b 6b 73 74 79 69"      # 40-4f
    "72 7a 70 71 84 00 61 78 07 0f 00 00 00 00 00 00"      # 50-5f
    "00 00 00 00 00 00 00 00 00 00 00 00 00 00 00 00"      # 60-6f
    "13 00 00 51 00 00 00 62 00 64 00 67 00 6a 6d 00")     # 70-7f
_SET2_EXTENDED = {0x1C: 0x5A, 0x1D: 0x14, 0x35: 0x4A, 0x38: 0x11, 0x47: 0x6C, 0x48: 0x75,
                  0x49: 0x7D, 0x4B: 0x6B, 0x4D: 0x74, 0x4F: 0x69, 0x50: 0x72, 0x51: 0x7A,
                  0x52: 0x70, 0x53: 0x71, 0x5B: 0x1F, 0x5C: 0x27, 0x5D: 0x2F, 0x5E: 0x37,
                  0x5F: 0x3F, 0x63: 0x5E, 0x20: 0x23, 0x21: 0x2B, 0x22: 0x34, 0x24: 0x3B,
                  0x2E: 0x21, 0x30: 0x32, 0x32: 0x3A, 0x10: 0x15, 0x19: 0x4D, 0x6C: 0x48,
                  0x6B: 0x40, 0x6D: 0x50, 0x6A: 0x38, 0x69: 0x30, 0x67: 0x20, 0x66: 0x18,
                  0x68: 0x28}


def set2_bytes(name: str, down: bool) -> bytes:
    """The set-2 bytes of a key's make (down) or break code; b"" if it has none."""
    code = SET1.get(name)
    if code is None:
        return b""
    if code == 0xE046:                                         # pause: make only
        return bytes.fromhex("e11477e1f014f077") if down else b""
    if code == 0xE037:                                         # print screen
        return bytes.fromhex("e012e07c") if down else bytes.fromhex("e0f07ce0f012")
    if code > 0xFF:
        value = _SET2_EXTENDED.get(code & 0xFF)
        if value is None:
            return b""
        return bytes((0xE0, value)) if down else bytes((0xE0, 0xF0, value))
    value = _SET2_PLAIN[code] if code < len(_SET2_PLAIN) else 0
    if not value:
        return b""
    return bytes((value,)) if down else bytes((0xF0, value))
NUMBER_TO_QCODE = {(code & 0x7F) | (0x80 if code > 0xFF else 0): name
                   for name, code in reversed(SET1.items())}


def qcode_of_number(number: int) -> str:
    """QEMU's key number (set 1, +0x80 for 0xE0 keys) as a QKeyCode name."""
    return NUMBER_TO_QCODE.get(number, "unmapped")


@dataclass
class InputEvent:
    """One event of QEMU's InputEvent union."""
    kind: str                        # "key", "btn", "rel", "abs"
    key: str = ""                    # key: the QKeyCode
    button: str = ""                 # btn
    axis: str = ""                   # rel, abs
    value: int = 0                   # rel, abs: the amount; key, btn: 1 down, 0 up


@dataclass
class Handler:
    """A guest device that takes input: a keyboard, a mouse or a tablet."""
    name: str
    keyboard: bool
    pointer: bool
    absolute: bool
    receive: Callable[[list[InputEvent]], None]      # a batch, then a sync
    index: int = 0
    qdev_id: str = ""

    @property
    def accepts(self) -> set[str]:
        """The kinds of events it takes (QEMU's handler masks)."""
        if self.keyboard:
            return {"key"}
        return {"btn", "abs"} if self.absolute else {"btn", "rel"}


@dataclass
class InputHub:
    handlers: list[Handler] = field(default_factory=list)    # most recently active first
    _next_index: int = 0

    def register(self, handler: Handler, index: int | None = None) -> Handler:
        handler.index = self._next_index if index is None else index
        self._next_index = max(self._next_index, handler.index) + 1
        self.handlers.append(handler)
        return handler

    def unregister(self, handler: Handler) -> None:
        if handler in self.handlers:
            self.handlers.remove(handler)

    def activate(self, handler: Handler) -> None:
        """Makes ``handler`` the one its kind of events go to first."""
        if handler in self.handlers:
            self.handlers.remove(handler)
            self.handlers.insert(0, handler)

    def mice(self) -> list[Handler]:
        return [h for h in self.handlers if h.pointer]

    def current_mouse(self) -> Handler | None:
        return next(iter(self.mice()), None)

    def send(self, events: list[InputEvent]) -> None:
        """Each event to the first handler that takes its kind, as QEMU routes them:
        keys to the keyboard, relative motion to the first relative mouse, absolute
        to the first tablet, buttons to the current mouse; then each handler gets
        its share as one batch."""
        batches: dict[int, tuple[Handler, list[InputEvent]]] = {}
        for event in events:
            handler = next((h for h in self.handlers if event.kind in h.accepts), None)
            if handler is not None:
                batches.setdefault(id(handler), (handler, []))[1].append(event)
        for handler, batch in batches.values():
            handler.receive(batch)
