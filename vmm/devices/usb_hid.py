"""usb-tablet, usb-mouse and usb-kbd: USB HID devices as QEMU's, behind a USB host
controller's root port (vmm/devices/uhci.py).

A device answers the standard requests on its control pipe (descriptors, strings,
address, configuration, status) and the HID class requests (report descriptor,
GET_REPORT, SET_IDLE, SET_PROTOCOL, SET_REPORT for the keyboard LEDs), and hands
its interrupt endpoint (1 IN) a report whenever its state changed, as Linux's
usbhid reads it: the tablet reports buttons, X and Y on 0..32767 and a wheel;
the mouse buttons and relative motion; the keyboard the 8-byte boot report.
Input arrives from the input layer (vmm/input.py) as from any other handler.
"""

from __future__ import annotations

import struct

from vmm.input import ABS_MAX, Handler, InputEvent
from vmm.qdev import DeviceError, DeviceType, Prop, declare

# USB packet results, as a controller reads them
ACK, NAK, STALL = "ack", "nak", "stall"
REQ_GET_STATUS, REQ_CLEAR_FEATURE, REQ_SET_FEATURE = 0, 1, 3
REQ_SET_ADDRESS, REQ_GET_DESCRIPTOR, REQ_GET_CONFIGURATION, REQ_SET_CONFIGURATION = 5, 6, 8, 9
REQ_GET_INTERFACE, REQ_SET_INTERFACE = 10, 11
HID_GET_REPORT, HID_GET_IDLE, HID_GET_PROTOCOL = 1, 2, 3
HID_SET_REPORT, HID_SET_IDLE, HID_SET_PROTOCOL = 9, 10, 11
DT_DEVICE, DT_CONFIG, DT_STRING, DT_HID, DT_REPORT = 1, 2, 3, 0x21, 0x22

KEY_QUEUE = 16                 # keyboard reports held for the guest, as QEMU's HID queue

TABLET_REPORT = bytes((
    0x05, 0x01, 0x09, 0x02, 0xA1, 0x01,          # generic desktop, mouse, application
    0x09, 0x01, 0xA1, 0x00,                      # pointer, physical
    0x05, 0x09, 0x19, 0x01, 0x29, 0x03,          # buttons 1-3
    0x15, 0x00, 0x25, 0x01, 0x95, 0x03, 0x75, 0x01, 0x81, 0x02,
    0x95, 0x01, 0x75, 0x05, 0x81, 0x01,          # 5 bits of padding
    0x05, 0x01, 0x09, 0x30, 0x09, 0x31,          # X, Y: absolute, 0..32767
    0x15, 0x00, 0x26, 0xFF, 0x7F, 0x35, 0x00, 0x46, 0xFF, 0x7F,
    0x75, 0x10, 0x95, 0x02, 0x81, 0x02,
    0x05, 0x01, 0x09, 0x38,                      # wheel: relative, -127..127
    0x15, 0x81, 0x25, 0x7F, 0x35, 0x00, 0x45, 0x00, 0x75, 0x08, 0x95, 0x01, 0x81, 0x06,
    0xC0, 0xC0))
MOUSE_REPORT = bytes((
    0x05, 0x01, 0x09, 0x02, 0xA1, 0x01, 0x09, 0x01, 0xA1, 0x00,
    0x05, 0x09, 0x19, 0x01, 0x29, 0x03, 0x15, 0x00, 0x25, 0x01, 0x95, 0x03, 0x75, 0x01,
    0x81, 0x02, 0x95, 0x01, 0x75, 0x05, 0x81, 0x01,
    0x05, 0x01, 0x09, 0x30, 0x09, 0x31, 0x09, 0x38,      # X, Y, wheel: relative
    0x15, 0x81, 0x25, 0x7F, 0x75, 0x08, 0x95, 0x03, 0x81, 0x06, 0xC0, 0xC0))
KEYBOARD_REPORT = bytes((
    0x05, 0x01, 0x09, 0x06, 0xA1, 0x01,          # generic desktop, keyboard
    0x75, 0x01, 0x95, 0x08, 0x05, 0x07, 0x19, 0xE0, 0x29, 0xE7,   # 8 modifier bits
    0x15, 0x00, 0x25, 0x01, 0x81, 0x02,
    0x95, 0x01, 0x75, 0x08, 0x81, 0x01,          # reserved byte
    0x95, 0x05, 0x75, 0x01, 0x05, 0x08, 0x19, 0x01, 0x29, 0x05, 0x91, 0x02,   # LEDs
    0x95, 0x01, 0x75, 0x03, 0x91, 0x01,
    0x95, 0x06, 0x75, 0x08, 0x15, 0x00, 0x25, 0xFF,           # 6 key codes
    0x05, 0x07, 0x19, 0x00, 0x29, 0xFF, 0x81, 0x00, 0xC0))

MODIFIERS = {"ctrl": 0x01, "shift": 0x02, "alt": 0x04, "meta_l": 0x08, "ctrl_r": 0x10,
             "shift_r": 0x20, "alt_r": 0x40, "meta_r": 0x80}


def _hid_usages() -> dict[str, int]:
    table = {chr(ord("a") + i): 0x04 + i for i in range(26)}
    table.update({str((i + 1) % 10): 0x1E + i for i in range(10)})
    names = ("ret esc backspace tab spc minus equal bracket_left bracket_right backslash - "
             "semicolon apostrophe grave_accent comma dot slash caps_lock f1 f2 f3 f4 f5 f6 "
             "f7 f8 f9 f10 f11 f12 print scroll_lock pause insert home pgup delete end pgdn "
             "right left down up num_lock kp_divide kp_multiply kp_subtract kp_add kp_enter "
             "kp_1 kp_2 kp_3 kp_4 kp_5 kp_6 kp_7 kp_8 kp_9 kp_0 kp_decimal less menu").split()
    table.update({name: 0x28 + i for i, name in enumerate(names) if name != "-"})
    table.update(sysrq=0x46, compose=0x65, power=0x66, kp_equals=0x67, ro=0x87, yen=0x89,
                 henkan=0x8A, muhenkan=0x8B, kp_comma=0x85)
    return table


HID_USAGES = _hid_usages()


class UsbHid:
    """One HID device: its descriptors, its control pipe and its interrupt reports."""

    def __init__(self, kind: str, product: str, serial: str) -> None:
        self.kind = kind                        # "tablet", "mouse" or "keyboard"
        self.product = product
        self.serial = serial
        self.port: int | None = None            # the root port it is plugged into
        self.report_descriptor = {"tablet": TABLET_REPORT, "mouse": MOUSE_REPORT,
                                  "keyboard": KEYBOARD_REPORT}[kind]
        self.handler: Handler | None = None
        self.reset()

    def reset(self) -> None:
        self.address = 0
        self.new_address: int | None = None
        self.configuration = 0
        self.protocol = 1                       # report protocol
        self.idle = 0
        self.leds = 0
        self.pending_in = b""                   # the data stage of the last SETUP
        self.setup_status = ACK
        self.changed = False                    # a report waits for the interrupt pipe
        self.buttons = 0
        self.x = self.y = 0
        self.dx = self.dy = self.dz = 0
        self.keys: list[int] = []
        self.modifiers = 0
        self.queued: list[bytes] = []           # keyboard reports the guest has not read

    # -- descriptors -----------------------------------------------------------
    def _device_descriptor(self) -> bytes:
        return struct.pack("<BBHBBBBHHHBBBB", 18, DT_DEVICE, 0x0200 if self.kind != "keyboard"
                           else 0x0110, 0, 0, 0, 8, 0x0627, 0x0001, 0x0000, 1, 2, 3, 1)

    def _config_descriptor(self) -> bytes:
        subclass, protocol = (1, 1) if self.kind == "keyboard" else \
            (1, 2) if self.kind == "mouse" else (0, 0)
        interface = struct.pack("<BBBBBBBBB", 9, 4, 0, 0, 1, 3, subclass, protocol, 0)
        hid = struct.pack("<BBHBBBH", 9, DT_HID, 0x0001, 0, 1, DT_REPORT,
                          len(self.report_descriptor))
        size = 8 if self.kind == "keyboard" else 6 if self.kind == "tablet" else 4
        endpoint = struct.pack("<BBBBHB", 7, 5, 0x81, 0x03, size, 10)
        body = interface + hid + endpoint
        head = struct.pack("<BBHBBBBB", 9, DT_CONFIG, 9 + len(body), 1, 1, 4, 0xA0, 50)
        return head + body

    def _string(self, index: int) -> bytes | None:
        if index == 0:
            return bytes((4, DT_STRING, 0x09, 0x04))          # English (US)
        text = {1: "QEMU", 2: self.product, 3: self.serial, 4: "HID " + self.kind.title(),
                5: "Endpoint1 Interrupt Pipe"}.get(index)
        if text is None:
            return None
        data = text.encode("utf-16-le")
        return bytes((2 + len(data), DT_STRING)) + data

    # -- the control pipe -------------------------------------------------------
    def setup(self, packet: bytes) -> str:
        """A SETUP packet: runs the request; its data stage is then read by IN."""
        request_type, request, value, index, length = struct.unpack("<BBHHH", packet)
        data: bytes | None = b""
        if request_type == 0x80 and request == REQ_GET_DESCRIPTOR:
            kind, number = value >> 8, value & 0xFF
            data = self._device_descriptor() if kind == DT_DEVICE else \
                self._config_descriptor() if kind == DT_CONFIG else \
                self._string(number) if kind == DT_STRING else None
        elif request_type == 0x81 and request == REQ_GET_DESCRIPTOR and value >> 8 == DT_REPORT:
            data = self.report_descriptor
        elif request_type == 0x00 and request == REQ_SET_ADDRESS:
            self.new_address = value & 0x7F          # taken once the status stage is done
        elif request_type == 0x00 and request == REQ_SET_CONFIGURATION:
            self.configuration = value & 0xFF
        elif request_type == 0x80 and request == REQ_GET_CONFIGURATION:
            data = bytes((self.configuration,))
        elif request_type in (0x80, 0x81, 0x82) and request == REQ_GET_STATUS:
            data = bytes(2)
        elif request_type in (0x00, 0x01, 0x02) and request in (REQ_CLEAR_FEATURE,
                                                               REQ_SET_FEATURE):
            pass
        elif request_type == 0x81 and request == REQ_GET_INTERFACE:
            data = bytes(1)
        elif request_type == 0x01 and request == REQ_SET_INTERFACE:
            pass
        elif request_type == 0xA1 and request == HID_GET_REPORT:
            data = self.report()
        elif request_type == 0xA1 and request == HID_GET_IDLE:
            data = bytes((self.idle,))
        elif request_type == 0xA1 and request == HID_GET_PROTOCOL:
            data = bytes((self.protocol,))
        elif request_type == 0x21 and request == HID_SET_IDLE:
            self.idle = value >> 8
        elif request_type == 0x21 and request == HID_SET_PROTOCOL:
            self.protocol = value & 1
        elif request_type == 0x21 and request == HID_SET_REPORT:
            pass                                   # the LED byte follows as OUT data
        else:
            data = None
        if data is None:
            self.pending_in, self.setup_status = b"", STALL
            return STALL
        self.pending_in, self.setup_status = data[:length], ACK
        return ACK

    def control_in(self, max_length: int) -> tuple[str, bytes]:
        if self.setup_status == STALL:
            return STALL, b""
        if self.new_address is not None:              # SET_ADDRESS's status stage
            self.address, self.new_address = self.new_address, None
        data, self.pending_in = self.pending_in[:max_length], self.pending_in[max_length:]
        return ACK, data

    def control_out(self, data: bytes) -> str:
        if self.kind == "keyboard" and len(data) == 1:
            self.leds = data[0]                    # SET_REPORT's data: the LEDs
        return ACK

    # -- the interrupt pipe and input ---------------------------------------------
    def interrupt_in(self, max_length: int) -> tuple[str, bytes]:
        if self.on_poll is not None:                 # a mouse the guest reads is current
            self.on_poll(self)
        if self.queued:                              # keyboard: a report per key event
            return ACK, self.queued.pop(0)[:max_length]
        if not self.changed:
            return NAK, b""
        self.changed = False
        return ACK, self.report()[:max_length]

    on_poll = None                                 # set by the board: the mouse becomes current

    def report(self) -> bytes:
        if self.kind == "keyboard":
            keys = (self.keys + [0] * 6)[:6] if len(self.keys) <= 6 else [1] * 6
            return bytes((self.modifiers, 0, *keys))
        if self.kind == "tablet":
            dz, self.dz = max(-127, min(127, self.dz)), 0
            return struct.pack("<BHHb", self.buttons, self.x, self.y, dz)
        dx, dy, dz = (max(-127, min(127, v)) for v in (self.dx, self.dy, self.dz))
        self.dx, self.dy, self.dz = self.dx - dx, self.dy - dy, self.dz - dz
        return struct.pack("<Bbbb", self.buttons, dx, dy, dz)

    def events(self, events: list[InputEvent]) -> None:
        bits = {"left": 1, "right": 2, "middle": 4}
        for event in events:
            if event.kind == "key":
                self._key(event.key, event.value)
                if len(self.queued) < KEY_QUEUE:
                    self.queued.append(self.report())
                continue
            elif event.kind == "btn" and event.button in bits:
                bit = bits[event.button]
                self.buttons = self.buttons | bit if event.value else self.buttons & ~bit
            elif event.kind == "btn" and event.button in ("wheel-up", "wheel-down"):
                if event.value:
                    self.dz += 1 if event.button == "wheel-up" else -1
            elif event.kind == "abs":
                value = max(0, min(ABS_MAX, event.value))
                if event.axis == "x":
                    self.x = value
                else:
                    self.y = value
            elif event.kind == "rel":
                if event.axis == "x":
                    self.dx += event.value
                else:
                    self.dy += event.value
        self.changed = self.changed or any(e.kind != "key" for e in events)

    def _key(self, qcode: str, down: int) -> None:
        if qcode in MODIFIERS:
            bit = MODIFIERS[qcode]
            self.modifiers = self.modifiers | bit if down else self.modifiers & ~bit
            return
        usage = HID_USAGES.get(qcode)
        if usage is None:
            return
        if down and usage not in self.keys:
            self.keys.append(usage)
        elif not down and usage in self.keys:
            self.keys.remove(usage)

    def save_state(self) -> dict:
        return {"address": self.address, "configuration": self.configuration,
                "protocol": self.protocol, "idle": self.idle, "leds": self.leds,
                "pointer": [self.buttons, self.x, self.y, self.dx, self.dy, self.dz],
                "keys": list(self.keys), "modifiers": self.modifiers,
                "queued": [bytes(r) for r in self.queued],
                "changed": self.changed, "port": self.port}

    def load_state(self, state: dict) -> None:
        self.address, self.configuration = state["address"], state["configuration"]
        self.protocol, self.idle, self.leds = state["protocol"], state["idle"], state["leds"]
        self.buttons, self.x, self.y, self.dx, self.dy, self.dz = state["pointer"]
        self.keys, self.modifiers = list(state["keys"]), state["modifiers"]
        self.changed = state["changed"]
        self.queued = list(state.get("queued", []))


PRODUCTS = {"usb-tablet": ("tablet", "QEMU USB Tablet", "28754", "QEMU HID Tablet", True),
            "usb-mouse": ("mouse", "QEMU USB Mouse", "89126", "QEMU HID Mouse", False),
            "usb-kbd": ("keyboard", "QEMU USB Keyboard", "68284", "QEMU HID Keyboard",
                        False)}


def _realize(board, device):
    kind, product, serial, handler_name, absolute = PRODUCTS[device.driver]
    controller = device.parent.obj if device.parent is not None else None
    if controller is None or not hasattr(controller, "attach"):
        raise DeviceError(f"No 'usb-bus' bus found for device '{device.driver}'")
    hid = UsbHid(kind, product, device.props.get("serial") or serial)
    controller.attach(hid, device.props.get("port"))
    hid.qdev_id = device.id or ""
    hub = board.input
    pointer = kind != "keyboard"
    hid.handler = hub.register(Handler(handler_name, not pointer, pointer, absolute,
                                       hid.events, qdev_id=device.id or ""))
    if not pointer:
        hub.activate(hid.handler)                 # a keyboard takes keys at once
    else:                                          # a mouse once the guest reads it
        hid.on_poll = lambda h: hub.activate(h.handler) if hub.current_mouse() is not \
            h.handler else None
    return hid


def _unrealize(board, device) -> None:
    hid = device.obj
    board.input.unregister(hid.handler)
    device.parent.obj.detach(hid)


USB_PROPS = (Prop("port", "str"), Prop("serial", "str"), Prop("msos-desc", "bool", True,
                                                                  "on/off", honoured=False),
             Prop("pcap", "str", honoured=False),
             Prop("attached", "bool", None, qdev=False, writable=False, honoured=False))
declare(DeviceType("usb-device", "device", abstract=True, bus="usb-bus", hotpluggable=True))
declare(DeviceType("usb-hid", "usb-device", abstract=True))
declare(DeviceType("usb-tablet", "usb-hid", category="Input",
                   realize=_realize, unrealize=_unrealize, props=(
                       Prop("usb_version", "uint32", 2, honoured=False),
                       Prop("display", "str", honoured=False),
                       Prop("head", "uint32", 0, honoured=False)) + USB_PROPS))
declare(DeviceType("usb-mouse", "usb-hid", category="Input",
                   realize=_realize, unrealize=_unrealize, props=(
                       Prop("usb_version", "uint32", 2, honoured=False),) + USB_PROPS))
declare(DeviceType("usb-kbd", "usb-hid", category="Input",
                   realize=_realize, unrealize=_unrealize, props=(
                       Prop("usb_version", "uint32", 2, honoured=False),
                       Prop("display", "str", honoured=False)) + USB_PROPS))
