"""Builders and readers for the Envoy ext_proc v3 messages the endpoint picker exchanges.

Thin helpers over the generated `xds-protos` classes, so the protocol state machine reads as
what it means (set these headers, send this body in chunks, answer 503) rather than as nested
protobuf constructors.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

import orjson
from envoy.config.core.v3 import base_pb2
from envoy.service.ext_proc.v3 import external_processor_pb2 as pb
from envoy.type.v3 import http_status_pb2
from google.protobuf import struct_pb2

from ..core.errors import InferouteError

#: Envoy implementations cap a streamed body chunk at 64 KiB; the reference picker uses 62,000.
BODY_CHUNK_LIMIT = 62_000

_OVERWRITE = base_pb2.HeaderValueOption.OVERWRITE_IF_EXISTS_OR_ADD

ProcessingRequest = pb.ProcessingRequest
ProcessingResponse = pb.ProcessingResponse


def header_map(headers: pb.HttpHeaders | None) -> dict[str, str]:
    """Lower-case name -> value (Envoy sends `raw_value` bytes, older versions `value`)."""
    out: dict[str, str] = {}
    if headers is None:
        return out
    for hv in headers.headers.headers:
        value = hv.raw_value.decode("utf-8", "replace") if hv.raw_value else hv.value
        out[hv.key.lower()] = value
    return out


def header_options(headers: Mapping[str, str]) -> list[base_pb2.HeaderValueOption]:
    """Header values that replace whatever the request carried under the same name."""
    return [base_pb2.HeaderValueOption(
        header=base_pb2.HeaderValue(key=k, raw_value=v.encode()), append_action=_OVERWRITE)
        for k, v in headers.items()]


def header_mutation(set_headers: Mapping[str, str] | None = None,
                    remove: Iterable[str] = ()) -> pb.HeaderMutation:
    return pb.HeaderMutation(set_headers=header_options(set_headers or {}),
                             remove_headers=list(remove))


def endpoint_metadata(namespace: str, key: str, value: str) -> struct_pb2.Struct:
    """Dynamic metadata `{namespace: {key: value}}` (e.g. envoy.lb / x-gateway-destination-endpoint)."""
    meta = struct_pb2.Struct()
    meta.fields[namespace].struct_value.fields[key].string_value = value
    return meta


def filter_metadata(req: pb.ProcessingRequest, namespace: str) -> dict[str, Any]:
    """The `metadata_context.filter_metadata[namespace]` struct of a request, as plain Python."""
    if not req.HasField("metadata_context"):
        return {}
    ns = req.metadata_context.filter_metadata.get(namespace)
    if ns is None:
        return {}
    return {k: _struct_value(v) for k, v in ns.fields.items()}


def _struct_value(v: struct_pb2.Value) -> Any:
    kind = v.WhichOneof("kind")
    if kind == "string_value":
        return v.string_value
    if kind == "number_value":
        return v.number_value
    if kind == "bool_value":
        return v.bool_value
    if kind == "list_value":
        return [_struct_value(x) for x in v.list_value.values]
    if kind == "struct_value":
        return {k: _struct_value(x) for k, x in v.struct_value.fields.items()}
    return None


def chunks(body: bytes, limit: int = BODY_CHUNK_LIMIT) -> Iterator[bytes]:
    """`body` cut into pieces of at most `limit` bytes (one empty piece for an empty body)."""
    if not body:
        yield b""
        return
    view = memoryview(body)
    for start in range(0, len(body), limit):
        yield bytes(view[start:start + limit])


def streamed_bodies(body: bytes, *, request: bool, end_of_stream: bool,
                    limit: int = BODY_CHUNK_LIMIT) -> list[pb.ProcessingResponse]:
    """A body sent back in streamed-response chunks; only the last one carries end_of_stream."""
    pieces = list(chunks(body, limit))
    out = []
    for i, piece in enumerate(pieces):
        common = pb.CommonResponse(body_mutation=pb.BodyMutation(
            streamed_response=pb.StreamedBodyResponse(
                body=piece, end_of_stream=end_of_stream and i == len(pieces) - 1)))
        out.append(body_response(common, request=request))
    return out


def body_response(common: pb.CommonResponse | None = None, *, request: bool,
                  metadata: struct_pb2.Struct | None = None) -> pb.ProcessingResponse:
    br = pb.BodyResponse(response=common or pb.CommonResponse())
    if request:
        return pb.ProcessingResponse(request_body=br, dynamic_metadata=metadata)
    return pb.ProcessingResponse(response_body=br, dynamic_metadata=metadata)


def headers_response(common: pb.CommonResponse | None = None, *, request: bool,
                     metadata: struct_pb2.Struct | None = None) -> pb.ProcessingResponse:
    hr = pb.HeadersResponse(response=common or pb.CommonResponse())
    if request:
        return pb.ProcessingResponse(request_headers=hr, dynamic_metadata=metadata)
    return pb.ProcessingResponse(response_headers=hr, dynamic_metadata=metadata)


def trailers_response(*, request: bool) -> pb.ProcessingResponse:
    if request:
        return pb.ProcessingResponse(request_trailers=pb.TrailersResponse())
    return pb.ProcessingResponse(response_trailers=pb.TrailersResponse())


def immediate_error(err: InferouteError) -> pb.ProcessingResponse:
    """An ImmediateResponse carrying the error's status, OpenAI JSON body and extra headers."""
    headers = {"content-type": "application/json", **{k.lower(): v for k, v in err.headers.items()}}
    return pb.ProcessingResponse(immediate_response=pb.ImmediateResponse(
        status=http_status_pb2.HttpStatus(code=err.status),
        headers=header_mutation(headers),
        body=orjson.dumps(err.to_dict()),
        details=f"inferoute_{err.code or err.error_type}"))
