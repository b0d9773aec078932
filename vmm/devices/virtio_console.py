"""virtio-console ("virtio-serial", virtio spec 5.3) with its console port 0.

QEMU's device: MULTIPORT and EMERG_WRITE offered, up to 31 ports, queues laid
out as port 0 (receive, transmit), control (receive, transmit), then two per
further port. A driver that does not negotiate MULTIPORT (as this probe's)
sees one console on queues 0 and 1: what it transmits goes to the console's
chardev, what the chardev receives fills its receive buffers (held on the host
side until the guest posts some). The multiport control protocol is not
implemented yet, so drivers that negotiate MULTIPORT get no port announcements.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from vmm.errors import UserError
from vmm.qdev import (
    CHARDEV_DESCRIPTION,
    IOEVENTFD,
    DeviceError,
    DeviceType,
    Prop,
    declare,
    fixed,
    on_off,
    vectors,
)
from vmm.virtio import spec
from vmm.virtio.device import VirtioDevice
from vmm.virtio.proxy import declare_proxies, realize_proxy
from vmm.virtio.spec import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, feature

F_MULTIPORT = feature(spec.VIRTIO_CONSOLE_F_MULTIPORT)
F_EMERG_WRITE = feature(spec.VIRTIO_CONSOLE_F_EMERG_WRITE)
RX_Q, TX_Q = 0, 1
MAX_PENDING = 1 << 20                  # host-side input kept while the guest reads none


class VirtioConsole(VirtioDevice):
    name = "virtio-serial"
    device_type = spec.VIRTIO_ID_CONSOLE
    config_size = 12                   # cols, rows, max_nr_ports, emerg_wr
    features = F_MULTIPORT | F_EMERG_WRITE | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX

    def __init__(self, max_ports: int = 31) -> None:
        super().__init__()
        self.max_ports = max_ports
        self.queue_sizes = (128,) * (2 * (max_ports + 1))
        self.output: Callable[[bytes], None] | None = None   # the console's chardev
        self.pending = bytearray()

    def save_state(self) -> dict:
        return {**super().save_state(), "pending": bytes(self.pending)}

    def load_state(self, state: dict) -> None:
        pending = state.get("pending") if isinstance(state, dict) else None
        if not isinstance(pending, bytes):
            raise UserError("virtio-serial: saved state does not fit this device")
        super().load_state({k: v for k, v in state.items() if k != "pending"})
        self.pending[:] = pending[:MAX_PENDING]

    def config_bytes(self) -> bytes:
        return struct.pack("<HHII", 0, 0, self.max_ports, 0)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset == 8 and self.output is not None:          # emerg_wr: one character
            self.output(bytes([value & 0xFF]))

    def queue_notify(self, index: int) -> None:
        if index == TX_Q:
            queue = self.transport.queue(TX_Q)
            while (chain := queue.pop()) is not None:
                data = chain.read_all()
                if self.output is not None and data:
                    self.output(data)
                queue.push(chain.head, 0)
            self.transport.interrupt_queue(TX_Q)
        elif index == RX_Q:
            self._fill_rx()

    def receive(self, data: bytes) -> None:
        """Input from the console's chardev."""
        self.pending += data[:MAX_PENDING - len(self.pending)]
        self._fill_rx()

    def _fill_rx(self) -> None:
        queue = self.transport.queue(RX_Q) if self.transport is not None else None
        if queue is None or not self.pending:
            return
        while self.pending and (chain := queue.pop()) is not None:
            written = chain.write(self.pending)
            del self.pending[:written]
            queue.push(chain.head, written)
        self.transport.interrupt_queue(RX_Q)


# -- the models, as QEMU declares them -------------------------------------
def _realize_serial(board, device):
    props = device.props
    props["class"] = 0x0780              # QEMU's PCI_CLASS_COMMUNICATION_OTHER
    console = VirtioConsole(props["max_ports"])
    return realize_proxy(board, device, console, 0x078000, props["vectors"])


def _realize_console(board, device):
    """The console port (nr 0) of its virtio-serial bus."""
    console = device.parent.obj.backend
    if device.props["nr"] not in (0, 0xFFFFFFFF):
        raise DeviceError("virtio-serial-bus: kvmkit has only the console port, nr 0")
    if console.output is not None:
        raise DeviceError("virtio-serial-bus: A port already exists at id 0")
    device.props["nr"] = 0
    chardev = board.chardevs.get(device.props.get("chardev") or "")
    if chardev is not None:
        console.output = chardev.write
        chardev.attach(lambda data: board.host_input(console.receive, data))
    else:
        console.output = lambda data: None
    return console


# its port bus is named after the proxy's id ("vs0.0"), else "virtio-serial-bus.0"
declare(DeviceType("virtio-serial-device", "virtio-device", user_creatable=False,
                   buses=(("{id}.0|virtio-serial-bus.0", "virtio-serial-bus"),), props=(
    Prop("max_ports", "uint32", 31), on_off("emergency-write", True, honoured=False))))
declare_proxies("virtio-serial-pci", "virtio-serial-device", _realize_serial,
                (IOEVENTFD, vectors(2), fixed("class", "uint32", 0)), category="Input",
                alias="virtio-serial")
declare(DeviceType("virtio-serial-port", "device", abstract=True, bus="virtio-serial-bus",
                   props=(Prop("nr", "uint32", 0xFFFFFFFF), Prop("name", "str"))))
declare(DeviceType("virtserialport", "virtio-serial-port", user_creatable=False, props=(
    Prop("chardev", "str", None, CHARDEV_DESCRIPTION, kind="chardev"),)))
declare(DeviceType("virtconsole", "virtserialport", category="Input",
                   realize=_realize_console))
