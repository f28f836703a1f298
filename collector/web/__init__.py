"""The timeline page: ``gpuguard collector --http ADDR`` (off by default).

Read-only. The static page carries no data; every ``/api/*`` call needs a bearer token with the reader
role (the same identities as the gRPC queries) and is answered by the same QueryService methods the CLI
uses, run on the collector's event loop: there is no second query path.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from urllib.parse import parse_qs

from google.protobuf.json_format import MessageToDict

from collector.query import BadRequest, QueryService
from gpuguard.credentials import Identity
from gpuguard.v1 import collector_pb2 as cpb
from gpuguard.v1 import events_pb2 as pb

STATIC = Path(__file__).parent / "static"
FILES = {"/": ("index.html", "text/html; charset=utf-8"), "/app.js": ("app.js", "text/javascript; charset=utf-8"),
         "/style.css": ("style.css", "text/css; charset=utf-8")}
KINDS = tuple(f.name for f in pb.Event.DESCRIPTOR.oneofs_by_name["body"].fields if f.name != "status")
MAX_EVENTS = 20_000          # one page of a timeline; the page asks for the next one with since=
SECURITY_HEADERS = [("X-Content-Type-Options", "nosniff"), ("Referrer-Policy", "no-referrer"),
                    ("Content-Security-Policy", "default-src 'self'; style-src 'self'; img-src 'self' data:"),
                    ("X-Frame-Options", "DENY"), ("Cache-Control", "no-store")]


MAX_QUERY_INT = (1 << 63) - 1     # times are int64 ns on the wire
MAX_LIMIT = 1_000_000             # limits are uint32 there, and rows cost memory


def _int(q: dict, key: str, default: int = 0) -> int:
    """A non-negative integer parameter the wire can carry (limit=-1 or since=1e30 give the default)."""
    try:
        value = int(q.get(key, [default])[0])
    except ValueError:
        return default
    if not 0 <= value <= MAX_QUERY_INT:
        return default
    return min(value, MAX_LIMIT) if key == "limit" else value


def _str(q: dict, key: str) -> str:
    return q.get(key, [""])[0][:256]


class WebApp:
    """WSGI app: static files, and JSON answers from the QueryService for an identified reader."""

    def __init__(self, query: QueryService, verify: Callable[[str], Identity | None],
                 loop: asyncio.AbstractEventLoop) -> None:
        self.query, self.verify, self.loop = query, verify, loop

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "/")
        if environ.get("REQUEST_METHOD", "GET") != "GET":
            return self._reply(start_response, "405 Method Not Allowed", {"error": "read-only"})
        if path in FILES:
            name, ctype = FILES[path]
            body = (STATIC / name).read_bytes()
            start_response("200 OK", [("Content-Type", ctype), *SECURITY_HEADERS])
            return [body]
        if not path.startswith("/api/"):
            return self._reply(start_response, "404 Not Found", {"error": "no such page"})
        header = environ.get("HTTP_AUTHORIZATION", "")
        token = header[7:].strip() if header[:7].lower() == "bearer " else ""
        who = self.verify(token) if token else None
        if who is None or not who.can("reader"):
            return self._reply(start_response, "401 Unauthorized", {"error": "a token with the reader role is needed"})
        q = parse_qs(environ.get("QUERY_STRING", ""))
        try:
            data = self._api(path[len("/api/"):], q, who)
        except KeyError:
            return self._reply(start_response, "404 Not Found", {"error": f"no API {path}"})
        except TimeoutError:
            return self._reply(start_response, "503 Service Unavailable", {"error": "the store did not answer"})
        except BadRequest as exc:
            return self._reply(start_response, "400 Bad Request", {"error": str(exc)})
        return self._reply(start_response, "200 OK", data)

    def _call(self, method: str, request, who: Identity):
        coro = getattr(self.query, method)(request, None, who)
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def _api(self, name: str, q: dict, who: Identity) -> dict:
        if name == "whoami":
            return {"name": who.name, "role": who.role}
        if name == "jobs":
            reply = self._call("ListJobs", cpb.ListJobsRequest(since_ns=_int(q, "since"), limit=_int(q, "limit", 200)),
                               who)
            jobs = MessageToDict(reply, preserving_proto_field_name=True).get("jobs", [])
            for j in jobs:        # GPU use: one indexed lookup per job listed
                gpu = self._call("Timeline", cpb.TimelineRequest(job_id=j["job"]["id"], kinds=["gpu_open"], limit=1),
                                 who)
                j["gpu"] = bool(gpu.events)
            return {"jobs": jobs}
        if name == "timeline":
            kinds = [k for k in q.get("kind", []) if k in KINDS]
            req = cpb.TimelineRequest(job_id=_str(q, "job"), host=_str(q, "host"), since_ns=_int(q, "since"),
                                      until_ns=_int(q, "until"), kinds=kinds, cursor=_str(q, "cursor"),
                                      limit=min(_int(q, "limit", 5000) or 5000, MAX_EVENTS))
            return MessageToDict(self._call("Timeline", req, who), preserving_proto_field_name=True)
        if name == "hosts":          # host ids -> hostnames, for the lanes' labels
            return MessageToDict(self._call("ListHosts", cpb.HostsRequest(), who), preserving_proto_field_name=True)
        if name == "tree":
            req = cpb.TreeRequest(job_id=_str(q, "job"), host=_str(q, "host"))
            return MessageToDict(self._call("ProcessTree", req, who), preserving_proto_field_name=True)
        if name == "alerts":
            req = cpb.AlertsRequest(job_id=_str(q, "job"), limit=_int(q, "limit", 1000), cursor=_str(q, "cursor"))
            return MessageToDict(self._call("ListAlerts", req, who), preserving_proto_field_name=True)
        raise KeyError(name)

    @staticmethod
    def _reply(start_response, status: str, data: dict):
        body = json.dumps(data).encode()
        start_response(status, [("Content-Type", "application/json"), *SECURITY_HEADERS])
        return [body]
