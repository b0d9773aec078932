"""Where a migration stream goes and comes from: QEMU's URIs.

    tcp:HOST:PORT   unix:PATH   exec:COMMAND   fd:NAME (or a number, incoming)

Outgoing, ``connect`` gives a Channel to write; incoming, ``listen`` gives a
Listener whose ``accept`` waits for the source and gives a Channel to read.
exec: runs the command with /bin/sh, the stream on its stdin (outgoing) or its
stdout (incoming), as QEMU does: ``exec:cat > FILE`` saves a VM to a file.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from typing import BinaryIO

from vmm.errors import UserError

PROTOCOLS = ("tcp:", "unix:", "exec:", "fd:")


class ChannelError(UserError):
    pass


def check_uri(uri: str) -> None:
    if not uri.startswith(PROTOCOLS):
        raise ChannelError("Parameter 'uri' expects a valid migration protocol")


def _inet(address: str) -> tuple[str, int]:
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        raise ChannelError(f"error parsing address '{address}'")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class Channel:
    """One end of a stream: ``file`` to read or write, ``abort`` from another thread
    to cut it (migrate_cancel), ``close`` when done (an exec's command is waited
    for, a socket closed)."""

    def __init__(self, file: BinaryIO, abort: Callable[[], None],
                 process: subprocess.Popen | None = None,
                 sock: socket.socket | None = None) -> None:
        self.file = file
        self._abort = abort
        self.process = process
        self.sock = sock

    def abort(self) -> None:
        try:
            self._abort()
        except OSError:
            pass

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass
        if self.sock is not None:
            self.sock.close()
        if self.process is not None:
            self.process.wait()


def _socket_channel(sock: socket.socket, mode: str) -> Channel:
    return Channel(sock.makefile(mode), lambda: sock.shutdown(socket.SHUT_RDWR), sock=sock)


def connect(uri: str, fd: int | None = None) -> Channel:
    """The outgoing end (``fd``: the descriptor an fd: URI named, already looked up)."""
    check_uri(uri)
    kind, _, rest = uri.partition(":")
    if kind in ("tcp", "unix"):
        family = socket.AF_UNIX if kind == "unix" else None
        try:
            if family is None:
                sock = socket.create_connection(_inet(rest))
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.connect(rest)
                except OSError:
                    sock.close()
                    raise
        except OSError as e:
            raise ChannelError(f"Failed to connect to '{rest}': {e.strerror or e}") from None
        return _socket_channel(sock, "wb")
    if kind == "exec":
        process = subprocess.Popen(["/bin/sh", "-c", rest], stdin=subprocess.PIPE,
                                   start_new_session=True)
        return Channel(process.stdin, process.kill, process)
    return Channel(os.fdopen(fd, "wb"), lambda: _shutdown(fd))


def _shutdown(fd: int) -> None:
    """Cuts a passed descriptor if it is a socket (a pipe or file just ends)."""
    try:
        sock = socket.socket(fileno=os.dup(fd))
    except OSError:
        return
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    finally:
        sock.close()


class Listener:
    """The incoming end before the source arrives; ``socket_address`` is what
    query-migrate shows of it."""

    def __init__(self, uri: str, fd: int | None = None) -> None:
        check_uri(uri)
        self.kind, _, self.rest = uri.partition(":")
        self.sock: socket.socket | None = None
        self.fd = fd
        self.socket_address: list[dict] = []
        if self.kind == "tcp":
            host, port = _inet(self.rest)
            try:
                infos = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                           flags=socket.AI_PASSIVE)
                family, _, _, _, address = infos[0]
                self.sock = socket.socket(family, socket.SOCK_STREAM)
                self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                self.sock.bind(address)
                self.sock.listen(1)
            except OSError as e:
                if self.sock is not None:
                    self.sock.close()
                raise ChannelError(f"Failed to bind socket: {e.strerror or e}") from None
            bound = self.sock.getsockname()
            self.socket_address = [{"port": str(bound[1]), "ipv4": family == socket.AF_INET,
                                    "host": host or bound[0], "type": "inet"}
                                   if family == socket.AF_INET else
                                   {"port": str(bound[1]), "ipv6": True, "host": host,
                                    "type": "inet"}]
        elif self.kind == "unix":
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                if os.path.exists(self.rest):
                    os.unlink(self.rest)
                self.sock.bind(self.rest)
                self.sock.listen(1)
            except OSError as e:
                self.sock.close()
                raise ChannelError(f"Failed to bind socket: {e.strerror or e}") from None
            self.socket_address = [{"path": self.rest, "type": "unix"}]

    def accept(self) -> Channel:
        """Waits for the source (blocking: call off the loop)."""
        if self.sock is not None:
            conn, _ = self.sock.accept()
            self.close()
            return _socket_channel(conn, "rb")
        if self.kind == "exec":
            process = subprocess.Popen(["/bin/sh", "-c", self.rest], stdout=subprocess.PIPE,
                                       start_new_session=True)
            return Channel(process.stdout, process.kill, process)
        fd = self.fd
        return Channel(os.fdopen(fd, "rb"), lambda: _shutdown(fd))

    def close(self) -> None:
        """Stops listening (a unix socket's file is left, as QEMU leaves it)."""
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
