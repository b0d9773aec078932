"""Character device back ends (-chardev, -serial): stdio, file, pty, socket, null,
ringbuf (and its older name, memory).

``write`` may be called from any thread (a vCPU writing its UART); input is
read on the asyncio loop and handed to the attached front end. A socket
server takes one client at a time and accepts again when it leaves.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import sys
import termios
import threading
import time
import tty
from collections.abc import Callable

from vmm import fdsets
from vmm.errors import UserError
from vmm.qemuopts import OptsError, parse_bool, parse_int

Receiver = Callable[[bytes], None]
OUTPUT_LIMIT = 16 << 20   # bytes a slow socket client may have pending before we drop it
MAX_FDS = 16              # file descriptors accepted with one message (SCM_RIGHTS)
RINGBUF_LIMIT = 1 << 30   # bytes a ringbuf chardev may hold


class ChardevError(UserError):
    pass


class Chardev:
    backend = "null"

    def __init__(self, chardev_id: str) -> None:
        self.id = chardev_id
        self.receiver: Receiver | None = None
        self.on_break: Callable[[], None] | None = None    # the front end takes a break
        self.loop: asyncio.AbstractEventLoop | None = None
        self._write_lock = threading.Lock()

    @property
    def filename(self) -> str:
        return self.backend

    def attach(self, receiver: Receiver) -> None:
        self.receiver = receiver

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def write(self, data: bytes) -> None:
        pass

    def send_break(self) -> None:
        """A break condition on the line (chardev-send-break), for the front end."""
        if self.on_break is not None:
            self.on_break()

    def close(self) -> None:
        pass

    def _deliver(self, data: bytes) -> None:
        if self.receiver is not None and data:
            self.receiver(data)

    @staticmethod
    def _write_fd(fd: int, data: bytes) -> bool:
        """Writes all of data to a possibly non-blocking fd; False if the peer is gone."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(fd, view)
            except BlockingIOError:
                select.select([], [fd], [], 1.0)
                continue
            except OSError as e:
                if e.errno == errno.EINTR:
                    continue
                return False
            view = view[n:]
        return True


class NullChardev(Chardev):
    backend = "null"


class RingbufChardev(Chardev):
    """What the front end writes, kept in a ring of `size` bytes (a power of two) that
    the monitor reads (ringbuf-read); when full, the oldest bytes go."""

    backend = "ringbuf"

    def __init__(self, chardev_id: str, size: int = 65536, backend: str = "ringbuf") -> None:
        super().__init__(chardev_id)
        if size <= 0 or size & (size - 1):
            raise ChardevError("size of ringbuf chardev must be power of two")
        if size > RINGBUF_LIMIT:           # QEMU tries to allocate it, and dies
            raise ChardevError(f"size of ringbuf chardev must be at most {RINGBUF_LIMIT}")
        self.backend = backend
        self.size = size
        self._ring = bytearray(size)
        self._produced = self._consumed = 0      # counters; their difference is the fill

    def write(self, data: bytes) -> None:
        with self._write_lock:
            mask = self.size - 1
            for byte in data[-self.size:]:
                self._ring[self._produced & mask] = byte
                self._produced += 1
            if self._produced - self._consumed > self.size:
                self._consumed = self._produced - self.size

    def read(self, count: int) -> bytes:
        with self._write_lock:
            count = min(count, self._produced - self._consumed)
            mask = self.size - 1
            out = bytes(self._ring[(self._consumed + i) & mask] for i in range(count))
            self._consumed += count
            return out


class FdChardev(Chardev):
    """Reads from in_fd (if any) on the loop and writes to out_fd."""

    def __init__(self, chardev_id: str, in_fd: int | None, out_fd: int) -> None:
        super().__init__(chardev_id)
        self.in_fd = in_fd
        self.out_fd = out_fd

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        super().start(loop)
        if self.in_fd is None:
            return
        try:
            loop.add_reader(self.in_fd, self._readable)
        except PermissionError:
            # A regular file or /dev/null (epoll refuses them; they never block):
            # read it to its end in turns of the loop, as QEMU takes such a stdin.
            loop.call_soon(self._drain_file)
        except OSError:
            self.in_fd = None            # no usable input (stdin closed): output only

    def _drain_file(self) -> None:
        try:
            data = os.read(self.in_fd, 4096)
        except OSError:
            return
        if data:
            self._deliver(data)
            assert self.loop is not None
            self.loop.call_soon(self._drain_file)

    def _readable(self) -> None:
        try:
            data = os.read(self.in_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            assert self.loop is not None
            self.loop.remove_reader(self.in_fd)
            return
        self._deliver(data)

    def write(self, data: bytes) -> None:
        with self._write_lock:
            self._write_fd(self.out_fd, data)

    def close(self) -> None:
        if self.loop is not None and self.in_fd is not None:
            try:
                self.loop.remove_reader(self.in_fd)
            except (ValueError, RuntimeError):
                pass


class StdioChardev(FdChardev):
    backend = "stdio"

    def __init__(self, chardev_id: str, signal: bool = True) -> None:
        super().__init__(chardev_id, sys.stdin.fileno(), sys.stdout.fileno())
        self._saved_tty = None
        self.signal = signal

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if os.isatty(self.in_fd):
            self._saved_tty = termios.tcgetattr(self.in_fd)
            tty.setraw(self.in_fd)
            if self.signal:  # keep Ctrl-C as a signal to kvmkit, as QEMU's signal=on
                attrs = termios.tcgetattr(self.in_fd)
                attrs[3] |= termios.ISIG
                attrs[1] |= termios.OPOST | termios.ONLCR
                termios.tcsetattr(self.in_fd, termios.TCSANOW, attrs)
        super().start(loop)

    def close(self) -> None:
        super().close()
        if self._saved_tty is not None:
            termios.tcsetattr(self.in_fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None


class FileChardev(FdChardev):
    backend = "file"

    def __init__(self, chardev_id: str, path: str, append: bool = False) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | (os.O_APPEND if append else os.O_TRUNC)
        try:
            fd = fdsets.open_path(path, flags, 0o666)
        except OSError as e:
            raise ChardevError(f"Could not open '{path}': {e.strerror}") from None
        super().__init__(chardev_id, None, fd)
        self.path = path

    @property
    def filename(self) -> str:
        return f"file:{self.path}"

    def close(self) -> None:
        os.close(self.out_fd)


class PtyChardev(FdChardev):
    backend = "pty"

    def __init__(self, chardev_id: str) -> None:
        master, slave = os.openpty()
        attrs = termios.tcgetattr(slave)
        tty.setraw(slave)
        del attrs
        os.set_blocking(master, False)
        self.slave_fd = slave
        self.pty_name = os.ttyname(slave)
        super().__init__(chardev_id, master, master)
        print(f"char device redirected to {self.pty_name} (label {chardev_id})", file=sys.stderr)

    @property
    def filename(self) -> str:
        return f"pty:{self.pty_name}"

    def _readable(self) -> None:
        try:
            data = os.read(self.in_fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: nobody has the slave open; wait for a reader
            return
        self._deliver(data)

    def write(self, data: bytes) -> None:
        with self._write_lock:
            try:
                os.write(self.out_fd, data)  # a pty nobody reads drops output, as QEMU's
            except OSError:
                pass


class SocketChardev(Chardev):
    """unix:PATH or tcp:HOST:PORT, as a server (one client at a time) or a client."""

    backend = "socket"

    def __init__(self, chardev_id: str, *, path: str | None = None, host: str | None = None,
                 port: int | None = None, server: bool = False, wait: bool = True,
                 listen_fd: int | None = None, connected_fd: int | None = None) -> None:
        super().__init__(chardev_id)
        self.path, self.host, self.port = path, host, port
        self.server, self.wait = server, wait
        self.listener: socket.socket | None = None
        self.client: socket.socket | None = None
        self.on_connect: Callable[[], None] | None = None
        self.on_disconnect: Callable[[], None] | None = None
        self.on_fds: Callable[[list[int]], None] | None = None
        self._out = bytearray()      # output the client has not taken yet
        self._writer_armed = False
        if listen_fd is not None:
            self.listener = socket.socket(fileno=listen_fd)
            self.server = True
        elif connected_fd is not None:          # one end of a socketpair (QEMUMachine)
            self.client = socket.socket(fileno=connected_fd)
            if self.client.family == socket.AF_UNIX:
                self.path = self.client.getsockname() or ""
        elif server:
            self.listener = self._listen()
        else:
            self.client = self._connect()

    def _family_address(self):
        if self.path is not None:
            return socket.AF_UNIX, self.path
        return socket.AF_INET6 if self.host and ":" in self.host else socket.AF_INET, \
            (self.host or "0.0.0.0", self.port)

    def _listen(self) -> socket.socket:
        family, address = self._family_address()
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            if family == socket.AF_UNIX:
                try:
                    os.unlink(address)
                except FileNotFoundError:
                    pass
            else:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(1)
        except OSError as e:
            sock.close()
            raise ChardevError(f"Failed to bind socket to {self._describe()}: "
                               f"{e.strerror}") from None
        return sock

    def _connect(self) -> socket.socket:
        family, address = self._family_address()
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.connect(address)
        except OSError as e:
            sock.close()
            raise ChardevError(f"Failed to connect to '{self._describe()}': "
                               f"{e.strerror}") from None
        return sock

    def _describe(self) -> str:
        return self.path if self.path is not None else f"{self.host}:{self.port}"

    @property
    def filename(self) -> str:
        if self.path is not None:
            base = f"unix:{self.path}"
        else:
            base = f"tcp:{self.host}:{self.port}"
        waiting = self.server and self.client is None       # a server with no client
        return ("disconnected:" if waiting else "") + base + (",server=on" if self.server else "")

    def yank(self) -> None:
        """Drops the connection at once (QMP yank), as if the peer had gone."""
        if self.client is not None:
            try:
                self.client.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        super().start(loop)
        if self.listener is not None:
            if self.wait and self.client is None:
                self.listener.setblocking(True)
                client, _ = self.listener.accept()
                self._adopt(client)
            self.listener.setblocking(False)
            if self.client is None:
                loop.add_reader(self.listener.fileno(), self._accept)
        elif self.client is not None:
            self._adopt(self.client)

    def _accept(self) -> None:
        try:
            client, _ = self.listener.accept()
        except (BlockingIOError, InterruptedError):
            return
        self._adopt(client)

    def _adopt(self, client: socket.socket) -> None:
        client.setblocking(False)
        self.client = client
        if self.listener is not None and self.loop is not None:
            try:
                self.loop.remove_reader(self.listener.fileno())
            except (ValueError, RuntimeError):
                pass
        if self.loop is not None:
            self.loop.add_reader(client.fileno(), self._readable)
        if self.on_connect:
            self.on_connect()

    def _readable(self) -> None:
        client = self.client
        if client is None:
            return
        fds: list[int] = []
        try:
            if client.family == socket.AF_UNIX:
                data, fds, _flags, _addr = socket.recv_fds(client, 65536, MAX_FDS)
            else:
                data = client.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if fds:
            if self.on_fds is not None:
                self.on_fds(fds)
            else:
                for fd in fds:
                    os.close(fd)
        if not data:
            self._drop_client()
            return
        self._deliver(data)

    def _drop_client(self) -> None:
        with self._write_lock:
            client, self.client = self.client, None
            self._out.clear()
            if self._writer_armed and client is not None and self.loop is not None:
                self.loop.remove_writer(client.fileno())
            self._writer_armed = False
        if client is not None:
            if self.loop is not None:
                try:
                    self.loop.remove_reader(client.fileno())
                except (ValueError, RuntimeError):
                    pass
            client.close()
            if self.on_disconnect:
                self.on_disconnect()
        if self.listener is not None and self.loop is not None:
            self.loop.add_reader(self.listener.fileno(), self._accept)

    def write(self, data: bytes) -> None:
        """Never blocks: what the client cannot take yet waits in a bounded buffer."""
        with self._write_lock:
            client = self.client
            if client is None:
                return  # output with nobody connected is dropped, as QEMU's
            if not self._out:
                try:
                    sent = client.send(data)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    self._schedule(self._drop_client)
                    return
                data = data[sent:]
                if not data:
                    return
            if len(self._out) + len(data) > OUTPUT_LIMIT:
                self._schedule(self._drop_client)   # a client that never reads
                return
            self._out += data
            if not self._writer_armed:
                self._writer_armed = True
                self._schedule(self._arm_writer)

    def _schedule(self, func: Callable[[], None]) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(func)

    def _arm_writer(self) -> None:
        client = self.client
        if client is not None and self.loop is not None:
            self.loop.add_writer(client.fileno(), self._writable)

    def _writable(self) -> None:
        with self._write_lock:
            client = self.client
            if client is None:
                return
            try:
                sent = client.send(self._out)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                self._schedule(self._drop_client)
                return
            del self._out[:sent]
            if not self._out and self.loop is not None:
                self.loop.remove_writer(client.fileno())
                self._writer_armed = False

    def flush(self, timeout: float = 2.0) -> None:
        """Blocks until pending output is sent (used before the process exits)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._write_lock:
                client = self.client
                if client is None or not self._out:
                    return
                try:
                    sent = client.send(self._out)
                    del self._out[:sent]
                except BlockingIOError:
                    pass
                except OSError:
                    return
            if time.monotonic() > deadline:
                return
            select.select([], [client], [], 0.1)

    def close(self) -> None:
        self.flush()
        if self.client is not None:
            self.client.close()
            self.client = None
        if self.listener is not None:
            self.listener.close()
            if self.path is not None:
                try:
                    os.unlink(self.path)
                except OSError:
                    pass


MUX_ESCAPE = 0x01   # Ctrl-a
MUX_HELP = ("C-a h    print this help", "C-a x    exit emulator",
            "C-a s    save disk data back to file (if -snapshot)",
            "C-a t    toggle console timestamps", "C-a b    send break (magic sysrq)",
            "C-a c    switch between console and monitor", "C-a C-a  sends C-a")


class MuxChardev(Chardev):
    """Several front ends (serial, monitor) on one back end, as QEMU's mux=on.

    Output from every front end goes out; input goes to the one with focus.
    Ctrl-a c moves the focus, Ctrl-a x ends the VMM, Ctrl-a h lists the keys.
    """

    backend = "mux"

    def __init__(self, chardev_id: str, inner: Chardev) -> None:
        super().__init__(chardev_id)
        self.inner = inner
        self.frontends: list[tuple[Receiver, Callable[[bool], None] | None]] = []
        self.focus = 0
        self.escaped = False
        self.on_terminate: Callable[[], None] | None = None
        inner.attach(self._input)

    @property
    def filename(self) -> str:
        return self.inner.filename

    def attach(self, receiver: Receiver, on_focus: Callable[[bool], None] | None = None) -> None:
        self.frontends.append((receiver, on_focus))
        self.receiver = receiver

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        super().start(loop)
        self.inner.start(loop)
        if self.frontends and self.frontends[0][1] is not None:
            self.frontends[0][1](True)

    def write(self, data: bytes) -> None:
        self.inner.write(data)

    def _input(self, data: bytes) -> None:
        passthrough = bytearray()
        for byte in data:
            if self.escaped:
                self.escaped = False
                if byte == MUX_ESCAPE:
                    passthrough.append(byte)
                    continue
                self._flush(passthrough)
                self._command(byte)
            elif byte == MUX_ESCAPE:
                self.escaped = True
            else:
                passthrough.append(byte)
        self._flush(passthrough)

    def _flush(self, data: bytearray) -> None:
        if data and self.frontends:
            self.frontends[self.focus][0](bytes(data))
        data.clear()

    def _command(self, byte: int) -> None:
        key = chr(byte)
        if key in ("h", "?"):
            self.inner.write(("\n\r" + "".join(f"{line}\n\r" for line in MUX_HELP)).encode())
        elif key == "x":
            self.inner.write(b"QEMU: Terminated\n\r")
            if self.on_terminate is not None:
                self.on_terminate()
        elif key == "c" and len(self.frontends) > 1:
            old = self.focus
            self.focus = (self.focus + 1) % len(self.frontends)
            for index, focused in ((old, False), (self.focus, True)):
                callback = self.frontends[index][1]
                if callback is not None:
                    callback(focused)

    def close(self) -> None:
        self.inner.close()


def _socket_from_fd(chardev_id: str, fd: int, wait: bool) -> SocketChardev:
    """fd=N: an inherited socket, listening (libvirt's) or connected (QEMUMachine's
    socketpair), whichever it is, as QEMU takes either."""
    try:
        listening = socket.socket(fileno=os.dup(fd))
    except OSError as e:
        raise ChardevError(f"Unable to parse FD number {fd}: {e.strerror}") from None
    try:
        accepting = listening.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
    except OSError as e:
        raise ChardevError(f"File descriptor '{fd}' is not a socket: {e.strerror}") from None
    finally:
        listening.close()
    if accepting:
        return SocketChardev(chardev_id, listen_fd=fd, wait=wait)
    return SocketChardev(chardev_id, connected_fd=fd)


def make_chardev(spec, on_terminate: Callable[[], None]) -> Chardev:
    """A chardev from its -chardev spec (vmm.config.ChardevSpec); mux=on puts a
    multiplexer in front, whose C-a x calls ``on_terminate``. ChardevError
    names the option."""
    o = spec.options
    try:
        if spec.backend == "stdio":
            chardev: Chardev = StdioChardev(spec.id,
                                            signal=parse_bool("signal", o.get("signal", "on")))
        elif spec.backend == "file":
            chardev = FileChardev(spec.id, o["path"],
                                  append=parse_bool("append", o.get("append", "off")))
        elif spec.backend == "pty":
            chardev = PtyChardev(spec.id)
        elif spec.backend in ("ringbuf", "memory"):
            chardev = RingbufChardev(spec.id, parse_int("size", o.get("size", "65536")),
                                     spec.backend)
        elif spec.backend == "socket":
            server = parse_bool("server", o.get("server", "off"))
            wait = parse_bool("wait", o.get("wait", "on"))
            if "fd" in o:
                chardev = _socket_from_fd(spec.id, parse_int("fd", o["fd"]), wait)
            elif "path" in o:
                chardev = SocketChardev(spec.id, path=o["path"], server=server, wait=wait)
            else:
                chardev = SocketChardev(spec.id, host=o.get("host", "0.0.0.0"),
                                        port=parse_int("port", o.get("port", "")),
                                        server=server, wait=wait)
        else:
            chardev = NullChardev(spec.id)
    except (ChardevError, OptsError) as e:
        raise ChardevError(f"-chardev {spec.backend},id={spec.id}: {e}") from None
    if o.get("mux") == "on":
        mux = MuxChardev(spec.id, chardev)
        mux.on_terminate = on_terminate
        return mux
    return chardev
