"""gRPC health checking for the picker: liveness, readiness and the ext_proc service name.

Kubernetes probes ask `grpc.health.v1.Health/Check` with service `liveness` or `readiness`;
Envoy (or a gateway controller) may ask for `envoy.service.ext_proc.v3.ExternalProcessor`. The
process is live as soon as it serves; it is ready, and the service SERVING, once discovery has
synchronised its endpoints (at once for a static config, after the first list for Kubernetes).
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .server import SERVICE_NAME, _address

LIVENESS = "liveness"
READINESS = "readiness"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class GrpcHealth:
    """The health service and its states; `set_ready(True)` when discovery has synced."""

    def __init__(self) -> None:
        self.servicer = health.aio.HealthServicer()
        self.ready = False

    async def start(self) -> None:
        await self.servicer.set("", SERVING)
        await self.servicer.set(LIVENESS, SERVING)
        await self.set_ready(self.ready)

    async def set_ready(self, ready: bool) -> None:
        self.ready = ready
        status = SERVING if ready else NOT_SERVING
        await self.servicer.set(READINESS, status)
        await self.servicer.set(SERVICE_NAME, status)


async def start_health_server(h: GrpcHealth, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(h.servicer, server)
    bound = server.add_insecure_port(_address(host, port))
    if bound == 0:
        raise OSError(f"cannot listen for gRPC health on {host}:{port}")
    await server.start()
    await h.start()
    return server, bound
