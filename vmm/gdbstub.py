"""A gdb remote-protocol server (-s, -gdb DEVICE, HMP gdbserver), as QEMU's gdbstub:
gdb attaches over TCP or a Unix socket, reads and writes registers and memory,
sets breakpoints and watchpoints, single-steps and continues the guest.

Attaching stops the VM, as on QEMU. Each vCPU is a gdb thread (ids from 1).
Breakpoints and single-steps go through KVM_SET_GUEST_DEBUG. On a software-only
KVM such as this machine's PVM, a trap raised by guest code at CPL3 (an int3 we
planted, the single-step flag) is delivered to the guest's own IDT handler
instead of exiting to us, but that handler runs at CPL0, which PVM emulates, and
emulated code does honour hardware breakpoints. So we also put a hidden hardware
breakpoint on the guest's #DB and #BP handlers: when one is reached on our
account, we take the exception frame back off the guest's stack and report the
stop where gdb expects it (`GdbServer._hidden_handler_hit`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
import sys
from dataclasses import dataclass, field

from vmm import paging
from vmm._kvm import lib
from vmm.errors import UserError

log = logging.getLogger(__name__)

DEFAULT_DEVICE = "tcp::1234"
SIGINT, SIGTRAP, SIGABRT, SIGALRM, SIGIO, SIGXCPU = 2, 5, 6, 14, 23, 24
SIGNAL_UNKNOWN = 143
# the stop signal gdb is told for each run state the VM stops in (as QEMU's)
STOP_SIGNALS = {"debug": SIGTRAP, "paused": SIGINT, "shutdown": 3, "io-error": SIGIO,
                "watchdog": SIGALRM, "internal-error": SIGABRT, "save-vm": SIGXCPU,
                "restore-vm": SIGXCPU, "finish-migrate": SIGXCPU, "postmigrate": SIGXCPU}
EFAULT, EINVAL = 14, 22
RFLAGS_TF, RFLAGS_RF = 1 << 8, 1 << 16
DR6_BS = 1 << 14
DB_VECTOR, BP_VECTOR = 1, 3
HIDDEN_SLOTS = {DB_VECTOR: 2, BP_VECTOR: 3}     # debug registers kept for the IDT handlers
GDB_SLOTS = (0, 1)                               # what gdb's hbreak/watch may use
SEGMENTS = ("cs", "ss", "ds", "es", "fs", "gs")
GPRS = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
        "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15")
# gdb's amd64 register numbering: (name, size in bytes)
REGISTERS = ([(r, 8) for r in GPRS] + [("rip", 8), ("eflags", 4)]
             + [(s, 4) for s in SEGMENTS] + [(f"st{i}", 10) for i in range(8)]
             + [(n, 4) for n in ("fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg",
                                 "fooff", "fop")]
             + [(f"xmm{i}", 16) for i in range(16)] + [("mxcsr", 4)]
             + [("fs_base", 8), ("gs_base", 8), ("k_gs_base", 8), ("cr0", 8), ("cr2", 8),
                ("cr3", 8), ("cr4", 8), ("cr8", 8), ("efer", 8)])
REGISTER_INDEX = {name: i for i, (name, _size) in enumerate(REGISTERS)}
MSR_KERNEL_GS_BASE = 0xC0000102


def _target_xml() -> str:
    """The register description gdb asks for (qXfer:features:read:target.xml)."""
    def regs(names, **extra):
        out = []
        for name in names:
            size = dict(REGISTERS)[name]
            kind = extra.get(name) or {8: "int64", 4: "int32", 10: "i387_ext",
                                       16: "vec128"}[size]
            out.append(f'<reg name="{name}" bitsize="{size * 8}" type="{kind}" '
                       f'regnum="{REGISTER_INDEX[name]}"/>')
        return "".join(out)
    vec128 = ('<vector id="v4f" type="ieee_single" count="4"/>'
              '<vector id="v2d" type="ieee_double" count="2"/>'
              '<vector id="v16i8" type="int8" count="16"/>'
              '<vector id="v8i16" type="int16" count="8"/>'
              '<vector id="v4i32" type="int32" count="4"/>'
              '<vector id="v2i64" type="int64" count="2"/>'
              '<union id="vec128"><field name="v4_float" type="v4f"/>'
              '<field name="v2_double" type="v2d"/><field name="v16_int8" type="v16i8"/>'
              '<field name="v8_int16" type="v8i16"/><field name="v4_int32" type="v4i32"/>'
              '<field name="v2_int64" type="v2i64"/><field name="uint128" type="uint128"/>'
              '</union>')
    fpu = ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]
    flags = "".join(f'<field name="{name}" start="{bit}" end="{bit}"/>' for bit, name in
                    enumerate(("CF", "", "PF", "", "AF", "", "ZF", "SF", "TF", "IF", "DF",
                               "OF", "", "", "NT", "", "RF", "VM", "AC", "VIF", "VIP", "ID"))
                    if name) + '<field name="IOPL" start="12" end="13"/>'
    return ('<?xml version="1.0"?><!DOCTYPE target SYSTEM "gdb-target.dtd">'
            '<target version="1.0"><architecture>i386:x86-64</architecture>'
            '<feature name="org.gnu.gdb.i386.core">'
            f'<flags id="i386_eflags" size="4">{flags}</flags>'
            + regs(GPRS, rip="code_ptr", rsp="data_ptr", rbp="data_ptr")
            + regs(["rip", "eflags", *SEGMENTS], rip="code_ptr", eflags="i386_eflags")
            + regs([f"st{i}" for i in range(8)]) + regs(fpu)
            + '</feature><feature name="org.gnu.gdb.i386.sse">' + vec128
            + regs([f"xmm{i}" for i in range(16)] + ["mxcsr"])
            + '</feature><feature name="org.gnu.gdb.i386.segments">'
            + regs(["fs_base", "gs_base"])
            + '</feature><feature name="org.kvmkit.gdb.x86.system">'
            + regs(["k_gs_base", "cr0", "cr2", "cr3", "cr4", "cr8", "efer"])
            + "</feature></target>")


TARGET_XML = _target_xml().encode()


class GdbDeviceError(UserError):
    pass


def parse_device(device: str) -> tuple[str, str, int]:
    """QEMU's -gdb chardev forms this server listens on: ('tcp', host, port) from
    tcp:[HOST]:PORT or ('unix', path, 0) from unix:PATH, options after a comma ignored."""
    kind, _, rest = device.partition(":")
    where = rest.split(",", 1)[0]
    if kind == "tcp" and rest:
        host, _, port = where.rpartition(":")
        if port.isdigit() and int(port) < 65536:
            return "tcp", host or "0.0.0.0", int(port)
        raise GdbDeviceError(f"address resolution failed for {host}:{port}: Servname not supported "
                             "for ai_socktype" if port else
                             "address resolution failed: port must be specified")
    if kind == "unix" and where:
        return "unix", where, 0
    raise GdbDeviceError(f"'{kind}' is not a valid char driver")


@dataclass
class Breakpoint:
    kind: int          # 0 software, 1 hardware, 2 write, 3 read, 4 access watchpoint
    addr: int
    length: int
    saved: bytes = b""   # a software breakpoint's original byte
    slot: int | None = None   # a hardware one's debug register


@dataclass
class _Trap:
    """What we armed on the guest's behalf, so a hidden-handler hit can be told apart
    from the guest's own int3 or single-step."""
    stepping: int | None = None          # the vCPU gdb asked to step
    handlers: dict[int, int] = field(default_factory=dict)   # vector -> handler address


class GdbServer:
    """One gdb connection at a time, on the machine's event loop."""

    def __init__(self, machine) -> None:
        self.machine = machine
        self.device = ""
        self._server: asyncio.AbstractServer | None = None
        self._unix_path: str | None = None
        self._writer: asyncio.StreamWriter | None = None
        self.breakpoints: dict[tuple[int, int], Breakpoint] = {}
        self.current = 0               # the vCPU for g/G/p/P/m/M (Hg)
        self.waiting = False           # gdb sent c/s and awaits a stop reply
        self.no_ack = False
        self.trap = _Trap()
        self.stopped_cpu = 0
        self.stop_reason = ""          # "watch:ADDR;" and the like for the next reply
        machine.listeners.append(self._machine_event)
        # the guest-debug flags this KVM takes (KVM_CAP_SET_GUEST_DEBUG2), 0 if it does not say
        self._block_irq = max(machine.kvm.check_extension(lib.KVM_CAP_SET_GUEST_DEBUG2), 0)

    # -- the listening socket -------------------------------------------------
    async def start(self, device: str) -> None:
        kind, where, port = parse_device(device)
        if kind == "tcp":
            server = await asyncio.start_server(self._serve, where, port, reuse_address=True)
        else:
            if os.path.exists(where):
                os.unlink(where)
            server = await asyncio.start_unix_server(self._serve, where)
            self._unix_path = where
        await self.stop()
        self._server, self.device = server, device

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        if self._writer is not None:
            self._writer.close()
        if self._unix_path:
            try:
                os.unlink(self._unix_path)
            except OSError:
                pass
            self._unix_path = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._writer is not None:            # one debugger at a time
            writer.close()
            return
        self._writer, self.no_ack, self.waiting = writer, False, False
        self.machine.stop("paused")               # QEMU stops the VM when gdb connects
        buffer = bytearray()
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                buffer += data
                for packet in self._packets(buffer):
                    self._handle(packet)
                await writer.drain()
        except (ConnectionError, OSError):
            pass
        finally:
            self._writer = None
            self.waiting = False
            self._remove_all()
            writer.close()

    def _packets(self, buffer: bytearray):
        """Complete packets out of buffer (and ^C as b'\\x03'); acks each one."""
        while buffer:
            if buffer[0] == 0x03:
                del buffer[0]
                yield b"\x03"
                continue
            if buffer[0] != ord("$"):
                del buffer[0]               # '+', '-' and line noise
                continue
            end = buffer.find(b"#")
            if end < 0 or len(buffer) < end + 3:
                return
            body, checksum = bytes(buffer[1:end]), bytes(buffer[end + 1:end + 3])
            del buffer[:end + 3]
            good = checksum.lower() == f"{sum(body) & 0xFF:02x}".encode()
            if not self.no_ack:
                self._writer.write(b"+" if good else b"-")
            if good:
                yield _unescape(body)

    def _reply(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        body = _escape(payload)
        if self._writer is not None:
            self._writer.write(b"$" + body + b"#" + f"{sum(body) & 0xFF:02x}".encode())

    # -- run state --------------------------------------------------------------
    def _machine_event(self, event: str, data) -> None:
        if event == "STOP" and self.waiting and self._writer is not None:
            self.waiting = False
            signal = STOP_SIGNALS.get(self.machine.runstate, SIGNAL_UNKNOWN)
            thread = (self.stopped_cpu if self.machine.runstate == "debug" else self.current) + 1
            self._reply(f"T{signal:02x}thread:{thread:02x};{self.stop_reason}")
            self.stop_reason = ""
            self.current = thread - 1

    def _resume(self, step_cpu: int | None) -> None:
        self.trap.stepping = step_cpu
        self._arm()
        self.waiting = True
        if self.machine.running:
            return
        try:
            self.machine.cont()
        except UserError:
            self.waiting = False
            self._reply(f"E{EINVAL:02x}")

    def on_debug_exit(self, index: int, info: dict) -> bool:
        """A KVM_EXIT_DEBUG of vCPU index (loop thread, that vCPU stopped): True when
        it is a stop to report to gdb, False when the guest should run on."""
        vcpu = self.machine.vcpus[index].vcpu
        exception, dr6 = info["exception"], info["dr6"]
        regs = vcpu.get_regs()
        hit = None
        for vector, slot in HIDDEN_SLOTS.items():
            if exception == DB_VECTOR and dr6 & (1 << slot) \
                    and self.trap.handlers.get(vector) == regs.rip:
                hit = vector
        if hit is not None:
            return self._hidden_handler_hit(index, vcpu, regs, hit)
        if exception == BP_VECTOR and (0, regs.rip) not in self._sw_addresses():
            vcpu.set_guest_debug(self._control(index) | lib.KVM_GUESTDBG_INJECT_BP,
                                 self._debugregs())
            return False                     # the guest's own int3: its to handle
        self.stopped_cpu = index
        self.stop_reason = self._watch_reason(dr6) if exception == DB_VECTOR else ""
        return True

    def _hidden_handler_hit(self, index: int, vcpu, regs, vector: int) -> bool:
        """Our int3, or our single-step, trapped into the guest's own handler: take the
        exception frame off the stack, as if the CPU had stopped at the instruction."""
        sregs = vcpu.get_sregs()
        frame = paging.read_virtual(self.machine.memory.read, sregs, regs.rsp, 40)
        if frame is not None:
            rip, cs, rflags, rsp, ss = struct.unpack("<5Q", frame)
            ours = (vector == BP_VECTOR and (0, rip - 1) in self._sw_addresses()) or \
                (vector == DB_VECTOR and self.trap.stepping == index)
            if ours:
                regs.rip = rip - 1 if vector == BP_VECTOR else rip
                regs.rflags = rflags & ~(RFLAGS_TF | RFLAGS_RF)
                regs.rsp = rsp
                vcpu.set_regs(regs)
                _load_segment(self.machine.memory.read, sregs, "cs", cs)
                _load_segment(self.machine.memory.read, sregs, "ss", ss)
                vcpu.set_sregs(sregs)
                self.stopped_cpu = index
                self.stop_reason = ""
                return True
        regs.rflags |= RFLAGS_RF            # not ours: let the handler run past our breakpoint
        vcpu.set_regs(regs)
        return False

    def _watch_reason(self, dr6: int) -> str:
        names = {2: "watch", 3: "rwatch", 4: "awatch"}
        for bp in self.breakpoints.values():
            slot = bp.slot
            if slot is not None and dr6 & (1 << slot) and bp.kind in names:
                return f"{names[bp.kind]}:{bp.addr:x};"
        return ""

    # -- breakpoints ------------------------------------------------------------
    def _sw_addresses(self) -> set[tuple[int, int]]:
        return {(0, bp.addr) for bp in self.breakpoints.values() if bp.kind == 0}

    def _control(self, index: int) -> int:
        control = lib.KVM_GUESTDBG_ENABLE | lib.KVM_GUESTDBG_USE_HW_BP
        if any(bp.kind == 0 for bp in self.breakpoints.values()):
            control |= lib.KVM_GUESTDBG_USE_SW_BP
        if self.trap.stepping == index:
            # as QEMU where KVM can: no interrupt handler is stepped into
            control |= lib.KVM_GUESTDBG_SINGLESTEP | (self._block_irq & lib.KVM_GUESTDBG_BLOCKIRQ)
        return control

    def _debugregs(self) -> list[int]:
        """DR0-3 and DR7: gdb's hardware breakpoints and watchpoints in slots 0-1, the
        guest's #DB and #BP handlers in slots 2-3 while we may trap into them."""
        dr = [0] * 8
        dr7 = 0
        for bp in self.breakpoints.values():
            slot = bp.slot
            if slot is None:
                continue
            rw = {1: 0, 2: 1, 3: 3, 4: 3}[bp.kind]
            size = {1: 0, 2: 1, 4: 3, 8: 2}.get(bp.length, 0) if bp.kind != 1 else 0
            dr[slot] = bp.addr
            dr7 |= (2 << (slot * 2)) | ((rw | size << 2) << (16 + slot * 4))
        for vector, address in self.trap.handlers.items():
            slot = HIDDEN_SLOTS[vector]
            dr[slot] = address
            dr7 |= 2 << (slot * 2)
        dr[7] = dr7 | 0x400
        return dr

    def _arm(self) -> None:
        """Loads the guest-debug state into every vCPU before the guest runs."""
        active = bool(self.breakpoints) or self.trap.stepping is not None
        self.trap.handlers = self._idt_handlers() if active else {}
        if not self.trap.handlers.get(BP_VECTOR) or not self._sw_addresses():
            self.trap.handlers.pop(BP_VECTOR, None)
        if self.trap.stepping is None:
            self.trap.handlers.pop(DB_VECTOR, None)
        for index, runner in enumerate(self.machine.vcpus):
            control = self._control(index) if active else 0
            runner.inspect(lambda vcpu, c=control: vcpu.set_guest_debug(c, self._debugregs()))

    def _idt_handlers(self) -> dict[int, int]:
        """The addresses of the guest's #DB and #BP handlers, from its 64-bit IDT."""
        sregs = self.machine.cpu_state(self.current)["sregs"]
        if not sregs.efer & paging.EFER_LMA:
            return {}
        handlers = {}
        for vector in HIDDEN_SLOTS:
            gate = paging.read_virtual(self.machine.memory.read, sregs,
                                       sregs.idt.base + vector * 16, 16)
            if gate is None or sregs.idt.limit < vector * 16 + 15:
                continue
            low, sel, _ist, attr, mid, high = struct.unpack("<HHBBHI", gate[:12])
            if attr & 0x80:                      # present
                handlers[vector] = low | mid << 16 | high << 32
        return handlers

    def _insert(self, kind: int, addr: int, length: int) -> str:
        key = (kind, addr)
        if key in self.breakpoints:
            return "OK"
        bp = Breakpoint(kind, addr, length)
        if kind == 0:
            saved = self._read_virtual(addr, 1)
            if saved is None or not self._write_virtual(addr, b"\xcc"):
                return f"E{EINVAL:02x}"
            bp.saved = saved
        else:
            used = {b.slot for b in self.breakpoints.values()}
            free = [s for s in GDB_SLOTS if s not in used]
            if not free or (kind != 1 and length not in (1, 2, 4, 8)):
                return f"E{EINVAL:02x}"
            bp.slot = free[0]
        self.breakpoints[key] = bp
        return "OK"

    def _remove(self, kind: int, addr: int) -> str:
        bp = self.breakpoints.pop((kind, addr), None)
        if bp is None:
            return f"E{EINVAL:02x}"
        if kind == 0:
            self._write_virtual(addr, bp.saved)
        return "OK"

    def _remove_all(self) -> None:
        for kind, addr in list(self.breakpoints):
            self._remove(kind, addr)
        self.trap = _Trap()
        for runner in self.machine.vcpus:
            runner.inspect(lambda vcpu: vcpu.set_guest_debug(0))

    # -- memory -----------------------------------------------------------------
    def _read_virtual(self, addr: int, length: int) -> bytes | None:
        sregs = self.machine.cpu_state(self.current)["sregs"]
        return paging.read_virtual(self.machine.memory.read, sregs, addr, length)

    def _write_virtual(self, addr: int, data: bytes) -> bool:
        sregs = self.machine.cpu_state(self.current)["sregs"]
        done = 0
        while done < len(data):
            here = addr + done
            step = min(len(data) - done, 0x1000 - (here & 0xFFF))
            gpa = paging.translate(self.machine.memory.read, sregs, here)
            if gpa is None:
                return False
            try:
                self.machine.memory.write(gpa, data[done:done + step])
            except ValueError:
                return False
            done += step
        return True

    # -- registers --------------------------------------------------------------
    def _registers(self, index: int) -> list[bytes]:
        state = self.machine.cpu_state(index)
        regs, sregs, fpu = state["regs"], state["sregs"], state["fpu"]
        msrs = self.machine.vcpus[index].inspect(lambda v: v.get_msrs([MSR_KERNEL_GS_BASE]))
        tag = sum((0 if fpu.ftwx >> i & 1 else 3) << (2 * i) for i in range(8))
        values = {**{r: getattr(regs, r) for r in GPRS}, "rip": regs.rip,
                  "eflags": regs.rflags, **{s: getattr(sregs, s).selector for s in SEGMENTS},
                  "fctrl": fpu.fcw, "fstat": fpu.fsw, "ftag": tag, "mxcsr": fpu.mxcsr,
                  "fs_base": sregs.fs.base, "gs_base": sregs.gs.base,
                  "k_gs_base": msrs.get(MSR_KERNEL_GS_BASE, 0), "cr0": sregs.cr0,
                  "cr2": sregs.cr2, "cr3": sregs.cr3, "cr4": sregs.cr4, "cr8": sregs.cr8,
                  "efer": sregs.efer}
        out = []
        for name, size in REGISTERS:
            if name.startswith("st"):
                out.append(bytes(fpu.fpr[int(name[2:])][:10]))
            elif name.startswith("xmm"):
                out.append(bytes(fpu.xmm[int(name[3:])]))
            else:
                out.append((values.get(name, 0) & ((1 << (size * 8)) - 1))
                           .to_bytes(size, "little"))
        return out

    def _set_register(self, index: int, number: int, data: bytes) -> bool:
        """Writes one register; gdb may write the general and control-flow registers."""
        if number >= len(REGISTERS) or len(data) != REGISTERS[number][1]:
            return False
        name = REGISTERS[number][0]
        value = int.from_bytes(data, "little")
        vcpu = self.machine.vcpus[index]
        if name in GPRS or name in ("rip", "eflags"):
            def write(v):
                regs = v.get_regs()
                setattr(regs, "rflags" if name == "eflags" else name, value)
                v.set_regs(regs)
            vcpu.inspect(write)
            return True
        current = b"".join(self._registers(index)[number:number + 1])
        return current == data          # the rest is read-only: writing the same is fine

    # -- the packets ------------------------------------------------------------
    def _handle(self, packet: bytes) -> None:
        if packet == b"\x03":
            if self.machine.running:
                self.machine.stop("paused")
            return
        try:
            answer = self._answer(packet.decode("latin-1"))
        except (ValueError, IndexError):
            answer = f"E{EINVAL:02x}"
        if answer is not None:
            self._reply(answer)

    def _answer(self, p: str) -> str | None:
        cpus = len(self.machine.vcpus)
        head = p[:1]
        if p.startswith("qSupported"):
            return "PacketSize=4000;qXfer:features:read+;vContSupported+"
        if p == "QStartNoAckMode":
            self.no_ack = True
            return "OK"
        if p.startswith("qXfer:features:read:"):
            annex, _, span = p[len("qXfer:features:read:"):].partition(":")
            if annex != "target.xml":
                return "E00"
            offset, length = (int(x, 16) for x in span.split(","))
            chunk = TARGET_XML[offset:offset + length]
            return ("m" if offset + length < len(TARGET_XML) else "l") + chunk.decode()
        if p == "?":
            return f"T{SIGTRAP:02x}thread:{self.current + 1:02x};"
        if p == "qAttached":
            return "1"
        if p == "qC":
            return f"QC{self.current + 1:02x}"
        if p == "qfThreadInfo":
            return "m" + ",".join(f"{i + 1:02x}" for i in range(cpus))
        if p == "qsThreadInfo":
            return "l"
        if p.startswith("qThreadExtraInfo,"):
            index = int(p.split(",")[1], 16) - 1
            state = "halted" if self.machine.vcpus[index].vcpu.get_mp_state() == \
                lib.KVM_MP_STATE_HALTED else "running"
            return f"CPU#{index} [{state}]".encode().hex()
        if head == "H":
            thread = int(p[2:], 16) if p[2:] not in ("", "-1") else 0
            if thread > cpus:
                return "E22"
            if thread:
                self.current = thread - 1
            return "OK"
        if head == "T":
            return "OK" if 0 < int(p[1:], 16) <= cpus else "E22"
        if head == "g":
            return b"".join(self._registers(self.current)).hex()
        if head == "G":
            data = bytes.fromhex(p[1:])
            offset = 0
            for number, (_name, size) in enumerate(REGISTERS):
                if offset + size > len(data):
                    break
                self._set_register(self.current, number, data[offset:offset + size])
                offset += size
            return "OK"
        if head == "p":
            number = int(p[1:], 16)
            if number >= len(REGISTERS):
                return "E00"
            return self._registers(self.current)[number].hex()
        if head == "P":
            number, _, value = p[1:].partition("=")
            ok = self._set_register(self.current, int(number, 16), bytes.fromhex(value))
            return "OK" if ok else f"E{EFAULT:02x}"
        if head == "m":
            addr, length = (int(x, 16) for x in p[1:].split(","))
            data = self._read_virtual(addr, min(length, 0x2000))
            return data.hex() if data is not None else f"E{EFAULT:02x}"
        if head == "M":
            where, _, value = p[1:].partition(":")
            addr, _length = (int(x, 16) for x in where.split(","))
            ok = self._write_virtual(addr, bytes.fromhex(value))
            return "OK" if ok else f"E{EFAULT:02x}"
        if head in "Zz" and len(p) > 1 and p[1] in "01234":
            kind, addr, length = p[1:].split(",")[:3]
            kind_n, addr_n, length_n = int(kind), int(addr, 16), int(length, 16)
            if head == "Z":
                return self._insert(kind_n, addr_n, length_n)
            return self._remove(kind_n, addr_n)
        if head in "cs":
            if len(p) > 1:
                self._set_register(self.current, REGISTER_INDEX["rip"],
                                   int(p[1:], 16).to_bytes(8, "little"))
            self._resume(self.current if head == "s" else None)
            return None
        if p == "vCont?":
            return "vCont;c;C;s;S"
        if p.startswith("vCont;"):
            step = None
            for action in p[6:].split(";"):
                verb, _, thread = action.partition(":")
                if verb[:1] in "sS":
                    step = int(thread, 16) - 1 if thread not in ("", "-1") else self.current
            if step is not None:
                self.current = step
            self._resume(step)
            return None
        if head == "D":
            self._remove_all()
            self._reply("OK")
            if not self.machine.running:
                try:
                    self.machine.cont()
                except UserError:
                    pass
            return None
        if head == "k":
            print("kvmkit: Terminated via GDBstub", flush=True, file=sys.stderr)
            self.machine.finish(0)
            return None
        return ""                           # not supported: gdb tries another way


def _load_segment(read_phys, sregs, name: str, selector: int) -> None:
    """Sets segment register `name` of sregs from the guest's GDT, as a far return does."""
    seg = getattr(sregs, name)
    seg.selector = selector
    raw = paging.read_virtual(read_phys, sregs, sregs.gdt.base + (selector & ~7), 8)
    if raw is None or selector & ~3 == 0:
        return
    low, high = struct.unpack("<II", raw)
    limit = (low & 0xFFFF) | (high & 0xF0000)
    granular = bool(high >> 23 & 1)
    seg.base = (low >> 16) | ((high & 0xFF) << 16) | (high & 0xFF000000)
    seg.limit = (limit << 12) | 0xFFF if granular else limit
    seg.type = high >> 8 & 0xF
    seg.s = high >> 12 & 1
    seg.dpl = high >> 13 & 3
    seg.present = high >> 15 & 1
    seg.avl = high >> 20 & 1
    seg.l = high >> 21 & 1
    seg.db = high >> 22 & 1
    seg.g = int(granular)
    seg.unusable = 0


def _escape(payload: bytes) -> bytes:
    out = bytearray()
    for byte in payload:
        if byte in b"$#}*":
            out += bytes([0x7D, byte ^ 0x20])
        else:
            out.append(byte)
    return bytes(out)


def _unescape(body: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(body):
        if body[i] == 0x7D and i + 1 < len(body):
            out.append(body[i + 1] ^ 0x20)
            i += 2
        else:
            out.append(body[i])
            i += 1
    return bytes(out)
