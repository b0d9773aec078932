"""One QMP client connection: greeting, negotiation, in-order dispatch, OOB, events.

Requests (and stream errors) are answered strictly in the order they
arrived, except ``exec-oob`` requests for commands that allow it, which run
as soon as they are parsed, as QEMU's. Events reach a client only once it
has left negotiation mode, and an event raised while a command runs goes out
before that command's reply.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from monitor.commands.core import version_info
from monitor.errors import COMMAND_NOT_FOUND, QmpError
from monitor.monitor import Monitor, Session
from monitor.qdict import qdict_order
from qmp.json_stream import JsonStreamParser
from qmp.wire import message
from vmm import trace

log = logging.getLogger(__name__)

NEGOTIATION_HINT = "Expecting capabilities negotiation with 'qmp_capabilities'"
_MISSING = object()


def greeting() -> dict:
    return {"QMP": {"version": version_info(), "capabilities": ["oob"]}}


def error_response(error: QmpError, request_id: Any = _MISSING) -> dict:
    response: dict = {"error": error.to_json()}
    if request_id is not _MISSING:
        response["id"] = request_id
    return response


def check_request(request: Any, allow_oob: bool) -> None:
    """QEMU's qmp_dispatch_check_obj: members checked in QDict order."""
    if not isinstance(request, dict):
        raise QmpError("QMP input must be a JSON object")
    for key in qdict_order(list(request)):
        value = request[key]
        if key == "execute" or (key == "exec-oob" and allow_oob):
            if not isinstance(value, str):
                raise QmpError(f"QMP input member '{key}' must be a string")
        elif key == "arguments":
            if not isinstance(value, dict):
                raise QmpError("QMP input member 'arguments' must be an object")
        elif key != "id":
            raise QmpError(f"QMP input member '{key}' is unexpected")


class QmpSession:
    def __init__(self, monitor: Monitor, write: Callable[[bytes], None],
                 pretty: bool = False, state: Session | None = None) -> None:
        self.monitor = monitor
        self.write = write
        self.pretty = pretty
        self.state = state or Session()
        self.state.negotiated = False
        self.state.capabilities = set()
        self.parser = JsonStreamParser(self._parsed)
        self.queue: asyncio.Queue = asyncio.Queue()
        self.worker: asyncio.Task | None = None
        self.closed = False

    @property
    def oob_enabled(self) -> bool:
        return self.state.negotiated and "oob" in self.state.capabilities

    def start(self) -> None:
        self.monitor.subscribe(self._event)
        self.worker = asyncio.get_running_loop().create_task(self._work())
        self._send(greeting())

    def feed(self, data: bytes) -> None:
        self.parser.feed(data)

    def end_of_input(self) -> None:
        self.parser.flush()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.monitor.unsubscribe(self._event)
        if self.worker is not None:
            self.worker.cancel()

    # -- output ------------------------------------------------------------
    def _send(self, value: dict) -> None:
        if not self.closed:
            self.write(message(value, self.pretty))

    def _event(self, event: dict) -> None:
        if self.state.negotiated:
            self._send(event)

    # -- input -------------------------------------------------------------
    def _parsed(self, value: Any, error: str | None) -> None:
        if error is not None:
            self.queue.put_nowait((None, QmpError(error)))
            return
        if self.oob_enabled and isinstance(value, dict) and "exec-oob" in value \
                and "execute" not in value:
            asyncio.get_running_loop().create_task(self._answer(value, allow_oob=True))
            return
        self.queue.put_nowait((value, None))

    async def _work(self) -> None:
        while True:
            request, error = await self.queue.get()
            if error is not None:
                self._send(error_response(error))
                continue
            await self._answer(request, allow_oob=self.oob_enabled)

    async def _answer(self, request: Any, allow_oob: bool) -> None:
        request_id = request.get("id", _MISSING) if isinstance(request, dict) else _MISSING
        try:
            result = await self._dispatch(request, allow_oob)
        except QmpError as e:
            if not self.state.negotiated and e.error_class == COMMAND_NOT_FOUND:
                e = QmpError(NEGOTIATION_HINT, COMMAND_NOT_FOUND)
            self._send(error_response(e, request_id))
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:  # a bug in a command must not take the monitor down
            log.exception("QMP command failed")
            self._send(error_response(QmpError(f"internal error: {e}"), request_id))
            return
        response: dict = {"return": result}
        if request_id is not _MISSING:
            response["id"] = request_id
        self._send(response)

    async def _dispatch(self, request: Any, allow_oob: bool) -> Any:
        check_request(request, allow_oob)
        name = request.get("execute")
        oob = False
        if name is None:
            name = request.get("exec-oob")
            oob = name is not None
        if name is None:
            raise QmpError("QMP input lacks member 'execute'")
        if not self.state.negotiated and name != "qmp_capabilities":
            raise QmpError(f"The command {name} has not been found", COMMAND_NOT_FOUND)
        command = self.monitor.find(name)
        if oob and not command.allow_oob:
            raise QmpError(f"The command {name} does not support OOB")
        if not oob and trace.monitor_qmp_cmd_in_band.enabled:
            trace.monitor_qmp_cmd_in_band(id=json.dumps(request["id"]) if "id" in request
                                          else "")
        return await self.monitor.execute(command, request.get("arguments", {}), self.state)
