"""The gRPC shell of the endpoint picker: `envoy.service.ext_proc.v3.ExternalProcessor` on grpc.aio.

Each `Process` call is one HTTP request passing through Envoy. The servicer feeds the stream's
messages to a `PickerStream` (the pure protocol) and writes back what it returns; when flow
control makes a request wait it awaits the admission ticket; and whatever way the stream ends
(completed, Envoy closing it, cancellation, an error) it calls `PickerStream.close` in a
`finally`, so the in-flight bookkeeping can never leak.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.service.ext_proc.v3 import external_processor_pb2_grpc as pb_grpc

from ..core.errors import InferouteError
from .protocol import EndpointPicker, PickerStream

log = logging.getLogger("inferoute.extproc")

SERVICE_NAME = "envoy.service.ext_proc.v3.ExternalProcessor"

#: awaits a flow-control ticket; returns normally when released, raises InferouteError if not
TicketWaiter = Callable[[Any], Awaitable[None]]


class ExternalProcessor(pb_grpc.ExternalProcessorServicer):
    """The ext_proc servicer: one `PickerStream` per gRPC stream."""

    def __init__(self, picker: EndpointPicker, *, clock: Callable[[], float] = time.monotonic,
                 wait_ticket: TicketWaiter | None = None,
                 after_stream: Callable[[], None] | None = None) -> None:
        self.picker = picker
        self.clock = clock
        self.wait_ticket = wait_ticket
        #: called when a stream ends (the admission queue may release a waiting request)
        self.after_stream = after_stream

    async def Process(self, request_iterator: AsyncIterator[pb.ProcessingRequest],
                      context: grpc.aio.ServicerContext
                      ) -> AsyncIterator[pb.ProcessingResponse]:
        stream = self.picker.stream()
        try:
            async for req in request_iterator:
                out = stream.handle(req, self.clock())
                if stream.waiting is not None:
                    out = await self._wait(stream)
                for resp in out:
                    yield resp
                if stream.done:
                    return
        except Exception:
            log.exception("ext_proc stream failed")
            raise
        finally:  # completed, refused, cancelled by Envoy or failed: release the request
            stream.close(self.clock())
            if self.after_stream is not None:
                self.after_stream()

    async def _wait(self, stream: PickerStream) -> list[pb.ProcessingResponse]:
        ticket = stream.waiting
        if self.wait_ticket is None:
            return stream.reject(InferouteError("flow control queued a request but this "
                                                "picker has no queue runner"), self.clock())
        try:
            await self.wait_ticket(ticket)
        except InferouteError as err:
            return stream.reject(err, self.clock())
        return stream.resume(self.clock())


async def start_grpc_server(servicer: ExternalProcessor, host: str, port: int, *,
                            max_message_bytes: int = 8 * 1024 * 1024) -> tuple[grpc.aio.Server, int]:
    """Serve the ext_proc service on host:port (0 picks a free port); returns (server, port)."""
    server = grpc.aio.server(options=[
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_concurrent_streams", 100_000),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ])
    pb_grpc.add_ExternalProcessorServicer_to_server(servicer, server)
    bound = server.add_insecure_port(_address(host, port))
    if bound == 0:
        raise OSError(f"cannot listen for gRPC on {host}:{port}")
    await server.start()
    return server, bound


def _address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


async def stop_servers(*servers: grpc.aio.Server, grace: float = 2.0) -> None:
    await asyncio.gather(*(s.stop(grace) for s in servers))
