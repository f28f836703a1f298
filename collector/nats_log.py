"""``EventLog`` on NATS JetStream: one stream, a subject per partition, KV buckets for marks and leases.

- Events: stream ``GPUGUARD_EVENTS``, subjects ``gpuguard.events.<partition>``, file storage, ``replicas``
  copies (3 on a 3-node cluster); a publish returns when JetStream acked it, which with R3 means a quorum
  stored it. ``Nats-Msg-Id`` makes a retried batch a no-op inside the duplicate window.
- Marks: KV ``gpuguard_marks``, one key per collector holding its hosts' highest seqs taken (written once a
  second), replicated like the stream: any collector can tell a reconnecting agent where to resume.
- Leases: KV ``gpuguard_leases`` with a TTL equal to the lease time: an owner renews by compare-and-set on
  the revision it holds; a dead owner's key expires and another worker creates it. Membership: KV
  ``gpuguard_workers`` with the same TTL, one key per live worker.

nats-py is asyncio; the collector's ingest and the worker are threads, so the client runs on a loop of its
own and every call here is synchronous with a deadline.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import os
import threading
import zlib
from pathlib import Path
from urllib.parse import urlsplit

from collector.eventlog import DEFAULT_PARTITIONS, LogEntry, LogMessage, LogUnavailable, host_key

log = logging.getLogger(__name__)

STREAM = "GPUGUARD_EVENTS"
SETUP_REQUEST_S = 2.0       # one request while setting up the stream and buckets
SETUP_S = 90.0              # how long setting up may take, all steps together (a fresh cluster electing, others
                            # racing to create; a loaded machine)
SETUP_PROGRESS_S = 5.0      # a setup step retried this long is logged, and again each time as long again
SUBJECT = "gpuguard.events"
MARKS, LEASES, WORKERS = "gpuguard_marks", "gpuguard_leases", "gpuguard_workers"


def parse_urls(text: str) -> list[str]:
    """``nats://h1:4222,nats://h2:4222`` -> the list; a clear ValueError for anything else."""
    urls = [u.strip() for u in text.split(",") if u.strip()]
    if not urls:
        raise ValueError("--log needs at least one nats://HOST:PORT URL")
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme not in ("nats", "tls") or not parts.hostname or not parts.port:
            raise ValueError(f"--log: {u!r} is not nats://HOST:PORT (e.g. nats://10.0.0.5:4222)")
    return urls


def connect_auth(urls: list[str], creds: str, tls_ca: str) -> dict:
    """How this process proves itself to NATS and checks the servers: a NATS credentials file (JWT + NKey, the
    decentralised auth of NATS accounts), or a file holding USER:PASSWORD or a token; TLS with a CA. A log reached
    off this host with neither is refused: anyone who reaches it could read every event or inject some."""
    import ssl  # noqa: PLC0415

    kw: dict = {}
    if creds:
        text = Path(creds).read_text().strip()
        if "BEGIN NATS USER JWT" in text:
            kw["user_credentials"] = creds
        elif ":" in text:
            kw["user"], kw["password"] = text.split(":", 1)
        elif text:
            kw["token"] = text
    if tls_ca or any(u.startswith("tls://") for u in urls):
        ctx = ssl.create_default_context(cafile=tls_ca or None)
        kw["tls"] = ctx
    in_url = any(urlsplit(u).username for u in urls)
    remote = [u for u in urls if urlsplit(u).hostname not in ("127.0.0.1", "localhost", "::1")]
    if remote and not (creds or in_url) and not os.environ.get("GPUGUARD_LOG_INSECURE"):
        raise ValueError(f"the event log {remote[0]} is off this host and no credentials were given (--log-creds): "
                         "anyone who reaches it could read every event or inject some. Give a NATS credentials "
                         "file (or set GPUGUARD_LOG_INSECURE=1 for a lab)")
    return kw



NO_PEERS_FOR_PLACEMENT = 10005     # JetStream's err_code: fewer peers than replicas known to the meta leader yet
DUPLICATE_IN_PROCESS = 10158       # JetStream's err_code: a message with this id is being stored right now


def duplicate_in_process(exc) -> bool:
    """A publish retried while the same message id is still being stored (its first attempt timed out on our side
    during an election): retried, it answers as a duplicate once the first is in - never a lost batch."""
    return getattr(exc, "err_code", None) == DUPLICATE_IN_PROCESS


def refusal(exc) -> bool:
    """The servers refused the client's credentials (nats-py reports it to the error callback and keeps retrying)."""
    from nats.errors import AuthorizationError  # noqa: PLC0415

    return isinstance(exc, AuthorizationError) or "authorization violation" in str(exc).lower()


def placement_pending(exc) -> bool:
    """A replicated stream or bucket asked of a cluster whose peers have not all joined yet (a fresh or restarted
    cluster): it is placed once they have - retried like an election, never read as "exists with other settings"."""
    return getattr(exc, "err_code", None) == NO_PEERS_FOR_PLACEMENT or \
        "no suitable peers" in str(getattr(exc, "description", "") or "")

class NatsLog:
    _setting_up = False          # while the stream and buckets are made: slow steps are logged as they wait

    def __init__(self, urls: str | list[str], partitions: int = DEFAULT_PARTITIONS, replicas: int = 0,
                 lease_s: float = 10.0, retention_s: float = 86_400.0, timeout_s: float = 10.0,
                 name: str = "gpuguard", leases: bool = False, creds: str = "", tls_ca: str = "") -> None:
        """leases: this client takes part in partition leases (a worker): it makes or binds the lease buckets,
        whose TTL is the lease time (the first worker's; a worker asking for another is told and follows it)."""
        self.urls = parse_urls(urls) if isinstance(urls, str) else urls
        self.auth = connect_auth(self.urls, creds, tls_ca)
        self.partitions = partitions
        self.replicas = replicas or min(3, len(self.urls))
        self.lease_s, self.retention_s, self.timeout_s = lease_s, retention_s, timeout_s
        self.name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nats-log", daemon=True)
        self._thread.start()
        self._subs: dict[int, tuple[int, object]] = {}     # partition -> (next offset, pull subscription)
        self._lease_rev: dict[int, int] = {}
        self._with_leases = leases
        self._marks_cache: tuple[float, dict[str, int]] | None = None
        self._setup_until = 0.0
        self._setting_up = True
        log.info("event log: connecting to %s", ",".join(self.urls))
        try:
            self._call(self._connect(), timeout=SETUP_S + 30)   # the setup's own deadline (SETUP_S) says what failed
        finally:
            self._setting_up = False

    # -- plumbing --------------------------------------------------------------------------------
    def _call(self, coro, timeout: float | None = None):
        """Run on the client's loop; every failure of the log (no quorum, no responders, timeouts) comes out as
        LogUnavailable, so callers have one thing to handle."""
        from nats.errors import Error as NatsError  # noqa: PLC0415

        fut = asyncio.run_coroutine_threadsafe(coro, self._loop)
        try:
            return fut.result(timeout or self.timeout_s)
        except TimeoutError as exc:
            fut.cancel()
            raise LogUnavailable(f"the event log did not answer within {timeout or self.timeout_s:.0f} s") from exc
        except NatsError as exc:
            raise LogUnavailable(f"the event log failed: {type(exc).__name__}: {exc}") from exc

    async def _retrying(self, make, what: str, within_s: float | None = None):
        """A JetStream request through a leader election: "no responders" and timeouts are retried for up to
        ``within_s`` (default ``timeout_s``: an election on a 3-node cluster takes a few seconds), then
        LogUnavailable."""
        from nats.errors import NoRespondersError  # noqa: PLC0415
        from nats.errors import TimeoutError as NatsTimeout  # noqa: PLC0415
        from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError  # noqa: PLC0415

        deadline = self._loop.time() + (within_s or self.timeout_s)
        delay = 0.1
        say_at = self._loop.time() + SETUP_PROGRESS_S
        while True:
            try:
                return await make()
            except (NoRespondersError, NoStreamResponseError, NatsTimeout, TimeoutError, APIError) as exc:
                if isinstance(exc, APIError) and not isinstance(exc, ServiceUnavailableError) and not (
                        placement_pending(exc) or duplicate_in_process(exc)):
                    raise
                now = self._loop.time()
                if now + delay > deadline:
                    raise LogUnavailable(f"the event log did not take {what}: {type(exc).__name__}: {exc}") from exc
                if self._setting_up and now >= say_at:      # a slow start says what it waits on, not silence
                    log.info("event log: still waiting for %s (%s: %s), %.0f s left", what, type(exc).__name__,
                             exc, deadline - now)
                    say_at = now + SETUP_PROGRESS_S
                await asyncio.sleep(delay)
                delay = min(1.0, delay * 2)

    async def _connect(self) -> None:
        import nats  # noqa: PLC0415 - only a collector or worker with --log needs the client
        from nats.js.api import KeyValueConfig, StorageType, StreamConfig  # noqa: PLC0415
        from nats.js.errors import BadRequestError  # noqa: PLC0415

        refused = self._loop.create_future()      # the servers turned our credentials down: no retry will help

        async def on_error(exc):
            log.debug("nats: %s", exc)
            if refusal(exc) and not refused.done():
                refused.set_result(exc)

        async def on_reconnect():
            log.info("event log: reconnected to %s", self.nc.connected_url.netloc if self.nc.connected_url else "?")

        connecting = asyncio.ensure_future(nats.connect(
            servers=self.urls, name=self.name, connect_timeout=3, reconnect_time_wait=0.5, max_reconnect_attempts=-1,
            error_cb=on_error, reconnected_cb=on_reconnect, allow_reconnect=True, **self.auth))
        await asyncio.wait({connecting, refused}, return_when=asyncio.FIRST_COMPLETED)
        if not connecting.done():
            connecting.cancel()
            raise LogUnavailable(f"the event log refused this client ({refused.result()}): give the credentials its "
                                 "servers expect (--log-creds)")
        self.nc = connecting.result()
        self.js = self.nc.jetstream(timeout=self.timeout_s)
        log.info("event log: connected to %s, setting up stream %s", self.nc.connected_url.netloc
                 if self.nc.connected_url else "?", STREAM)
        # Setting up: requests with a short timeout, retried for longer. Collectors and workers that start
        # together against a fresh cluster race to create the stream and buckets, and the API may leave a request
        # about one being assigned unanswered: one long request would spend the whole deadline on it.
        self._setup_js = self.nc.jetstream(timeout=SETUP_REQUEST_S)
        self._setup_until = self._loop.time() + SETUP_S       # one deadline for every step of the setup
        config = StreamConfig(name=STREAM, subjects=[f"{SUBJECT}.*"], storage=StorageType.FILE,
                              num_replicas=self.replicas, duplicate_window=600.0, max_age=self.retention_s)
        try:                                 # a cluster that just started may still elect its meta leader
            await self._retrying(lambda: self._setup_js.add_stream(config), "the stream's creation", self._setup_left())
        except BadRequestError as exc:       # exists with other settings: keep it, say so
            log.warning("event log: stream %s exists with other settings, used as it is (%s)", STREAM,
                        exc.description)
        info = await self._stream_info()
        self.replicas = info.config.num_replicas or self.replicas
        self.marks = await self._bucket(KeyValueConfig(bucket=MARKS, replicas=self.replicas, history=1,
                                                       ttl=self.retention_s, storage=StorageType.FILE))
        if self._with_leases:
            self.leases = await self._bucket(KeyValueConfig(bucket=LEASES, replicas=self.replicas, history=1,
                                                            ttl=self.lease_s, storage=StorageType.FILE))
            self.workers = await self._bucket(KeyValueConfig(bucket=WORKERS, replicas=self.replicas, history=1,
                                                             ttl=self.lease_s, storage=StorageType.FILE))
            ttl = (await self.leases.status()).ttl
            if ttl and abs(ttl - self.lease_s) > 0.01:
                log.warning("event log: partition leases last %.1f s (set by the first worker), not the %.1f s "
                            "asked for: using %.1f s", ttl, self.lease_s, ttl)
                self.lease_s = ttl
        log.info("event log: %s on %s (%d partitions, %d replicas)", STREAM, ",".join(self.urls), self.partitions,
                 self.replicas)

    def _setup_left(self) -> float:
        return max(0.5, self._setup_until - self._loop.time())

    async def _stream_info(self):
        return await self._once_made(lambda: self._setup_js.stream_info(STREAM), "the stream's settings")

    async def _once_made(self, make, what: str):
        """A stream or bucket another collector or worker is making. Those that start together against a fresh
        cluster race to create them; one that lost the race may ask before the winner's is assigned ("not
        found"), so that answer is waited out like an election."""
        from nats.js.errors import NotFoundError  # noqa: PLC0415

        while True:
            try:
                return await self._retrying(make, what, self._setup_left())
            except NotFoundError:
                if self._loop.time() > self._setup_until:
                    raise
                await asyncio.sleep(0.2)

    async def _bucket(self, config):
        from nats.js.errors import BadRequestError, BucketNotFoundError  # noqa: PLC0415

        what = f"bucket {config.bucket}"
        try:
            bucket = await self._retrying(lambda: self._setup_js.key_value(config.bucket), what, self._setup_left())
        except BucketNotFoundError:
            try:
                bucket = await self._retrying(lambda: self._setup_js.create_key_value(config), what,
                                               self._setup_left())
            except BadRequestError:               # made meanwhile by another collector or worker
                bucket = await self._once_made(lambda: self._setup_js.key_value(config.bucket), what)
        return bucket          # its reads and writes keep the short request timeout, retried up to timeout_s

    # -- ingest side -----------------------------------------------------------------------------
    def publish(self, messages: list[LogMessage]) -> int:
        return self._call(self._publish(messages), timeout=self.timeout_s * 2)

    async def publish_async(self, messages: list[LogMessage]) -> int:
        """``publish`` awaited from another event loop (the collector's gRPC loop) without a thread of its own
        waiting on it: one hop to the client's loop and one back per batch."""
        from nats.errors import Error as NatsError  # noqa: PLC0415

        fut = asyncio.run_coroutine_threadsafe(self._publish(messages), self._loop)
        try:
            return await asyncio.wait_for(asyncio.wrap_future(fut), self.timeout_s * 2)
        except TimeoutError as exc:
            fut.cancel()
            raise LogUnavailable(f"the event log did not answer within {self.timeout_s * 2:.0f} s") from exc
        except NatsError as exc:
            raise LogUnavailable(f"the event log failed: {type(exc).__name__}: {exc}") from exc

    async def _publish(self, messages: list[LogMessage]) -> int:
        """Every message in flight at once, then each ack awaited; one that failed is sent again (same id: the
        log keeps one) until the deadline."""
        async def one(m: LogMessage):
            return await self._retrying(lambda: self.js.publish(f"{SUBJECT}.{m.partition}", m.payload,
                                                                timeout=2.0, headers={"Nats-Msg-Id": m.msg_id}),
                                        f"partition {m.partition}")

        if len(messages) == 1:
            acks = [await one(messages[0])]
        else:
            acks = await asyncio.gather(*(one(m) for m in messages))
        return sum(1 for a in acks if a.duplicate)

    def mark(self, host_id: str) -> int:
        """The highest seq any collector's snapshot says the log has for the host (snapshots re-read at most
        once a second: a burst of hellos after a collector died costs one read)."""
        return self._call(self._mark(host_id), timeout=self.timeout_s)

    async def _mark(self, host_id: str) -> int:
        from nats.js.errors import KeyNotFoundError  # noqa: PLC0415

        now = self._loop.time()
        if self._marks_cache is None or now - self._marks_cache[0] > 1.0:
            merged: dict[str, int] = {}
            for key in await self._keys(MARKS):
                try:
                    entry = await self._retrying(lambda k=key: self.marks.get(k), "the marks")
                except KeyNotFoundError:
                    continue
                for host, seq in json.loads(zlib.decompress(entry.value)).items():
                    if seq > merged.get(host, 0):
                        merged[host] = seq
            self._marks_cache = (now, merged)
        return self._marks_cache[1].get(host_id, 0)

    def save_marks(self, owner: str, marks: dict[str, int]) -> None:
        """One collector's marks, all hosts in one replicated write (a write per host per batch would double the
        log's work)."""
        value = zlib.compress(json.dumps(marks, separators=(",", ":")).encode())
        self._call(self._retrying(lambda: self.marks.put(host_key(owner), value), "the marks"),
                   timeout=self.timeout_s * 2)

    # -- worker side -----------------------------------------------------------------------------
    def tail(self, partition: int) -> int:
        return self._call(self._tail(partition))

    async def _tail(self, partition: int) -> int:
        from nats.js.errors import NotFoundError  # noqa: PLC0415

        try:
            last = await self._retrying(lambda: self.js.get_last_msg(STREAM, f"{SUBJECT}.{partition}"),
                                        "the partition's last entry")
        except NotFoundError:
            return 0
        return last.seq

    def read(self, partition: int, after: int, limit: int, wait_s: float) -> list[LogEntry]:
        return self._call(self._read(partition, after, limit, wait_s), timeout=wait_s + self.timeout_s)

    async def _read(self, partition: int, after: int, limit: int, wait_s: float) -> list[LogEntry]:
        from nats.errors import Error as NatsError  # noqa: PLC0415
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy  # noqa: PLC0415

        held = self._subs.get(partition)
        if held is None or held[0] != after + 1:
            await self._drop_sub(partition)
            config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=60.0,
                                    deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
                                    opt_start_seq=after + 1)
            sub = await self._retrying(lambda: self.js.pull_subscribe(f"{SUBJECT}.{partition}", stream=STREAM,
                                                                     config=config), "a consumer")
            held = (after + 1, sub)
        sub = held[1]
        try:
            msgs = await self._fetch(sub, limit, wait_s)
        except TimeoutError:
            self._subs[partition] = held
            return []
        except NatsError:                     # the consumer's node died or it expired: make a new one next time
            await self._drop_sub(partition, held)
            raise
        out = [LogEntry(m.metadata.sequence.stream, m.data, m.metadata.timestamp.timestamp_ns()
                        if hasattr(m.metadata.timestamp, "timestamp_ns") else 0) for m in msgs]
        self._subs[partition] = ((out[-1].offset + 1) if out else held[0], sub)
        return out

    async def _fetch(self, sub, batch: int, wait_s: float) -> list:
        """A fetch that waits out a consumer that is not ready yet (just made, or its leader moved: "503")."""
        from nats.js.errors import ServiceUnavailableError  # noqa: PLC0415

        deadline = self._loop.time() + wait_s + 5.0
        while True:
            try:
                return await sub.fetch(batch=batch, timeout=wait_s)
            except ServiceUnavailableError:
                if self._loop.time() > deadline:
                    raise
                await asyncio.sleep(0.1)

    async def _drop_sub(self, partition: int, held=None) -> None:
        held = held or self._subs.pop(partition, None)
        self._subs.pop(partition, None)
        if held is not None:
            try:
                await held[1].unsubscribe()
            except Exception:   # noqa: BLE001 - the consumer may be gone with its node
                pass

    def read_since(self, partition: int, since_ns: int, through: int, limit: int) -> list[LogEntry]:
        return self._call(self._read_since(partition, since_ns, through, limit), timeout=self.timeout_s * 3)

    async def _read_since(self, partition: int, since_ns: int, through: int, limit: int) -> list[LogEntry]:
        from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy  # noqa: PLC0415

        if through <= 0:
            return []
        start = datetime.datetime.fromtimestamp(since_ns / 1e9, tz=datetime.UTC)
        config = ConsumerConfig(ack_policy=AckPolicy.NONE, inactive_threshold=30.0,
                                deliver_policy=DeliverPolicy.BY_START_TIME, opt_start_time=start)
        sub = await self._retrying(lambda: self.js.pull_subscribe(f"{SUBJECT}.{partition}", stream=STREAM,
                                                                 config=config), "a consumer")
        out: list[LogEntry] = []
        try:
            while len(out) < limit:
                try:
                    msgs = await self._fetch(sub, min(1000, limit - len(out)), 0.5)
                except TimeoutError:
                    break
                for m in msgs:
                    seq = m.metadata.sequence.stream
                    if seq > through:
                        return out
                    out.append(LogEntry(seq, m.data, 0))
        finally:
            await sub.unsubscribe()
        return out

    def claim(self, partition: int, owner: str) -> bool:
        return self._call(self._claim(partition, owner))

    async def _claim(self, partition: int, owner: str) -> bool:
        from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError  # noqa: PLC0415

        key = f"p{partition}"
        try:
            entry = await self.leases.get(key)
        except KeyNotFoundError:
            entry = None
        try:
            if entry is None or not entry.value:
                self._lease_rev[partition] = await self.leases.create(key, owner.encode())
                return True
            if entry.value.decode() != owner:
                return False
            self._lease_rev[partition] = await self.leases.update(key, owner.encode(), last=entry.revision)
            return True
        except KeyWrongLastSequenceError:   # another worker got there first
            return False

    def release(self, partition: int, owner: str, timeout_s: float | None = None) -> None:
        """Give a partition back (best effort within timeout_s: a lease not deleted expires on its own)."""
        rev = self._lease_rev.pop(partition, None)

        async def give_back():
            if rev is not None:
                await self.leases.delete(f"p{partition}", last=rev)
            await self._drop_sub(partition)

        try:
            self._call(give_back(), timeout=timeout_s)
        except Exception as exc:   # noqa: BLE001 - the log is down: the lease expires anyway
            log.debug("lease p%d release: %s", partition, exc)

    def members(self, owner: str) -> list[str]:
        return self._call(self._members(owner))

    async def _keys(self, bucket: str) -> list[str]:
        """The live keys of a KV bucket, from its stream's subject list in one request (a key listing through a
        consumer can miss a fresh put)."""
        info = await self._retrying(lambda: self.js.stream_info(f"KV_{bucket}", subjects_filter=f"$KV.{bucket}.>"),
                                    f"bucket {bucket}")
        return [subject.rsplit(".", 1)[-1] for subject in (info.state.subjects or {})]

    async def _members(self, owner: str) -> list[str]:
        """Live workers = the keys of the workers bucket (each expires a lease time after its last put)."""
        await self._retrying(lambda: self.workers.put("w" + owner.encode().hex(), b"1"), "the membership")
        names = set()
        for key in await self._keys(WORKERS):
            try:
                names.add(bytes.fromhex(key[1:]).decode())
            except ValueError:
                continue
        return sorted(names | {owner})

    def close(self) -> None:
        async def _close():
            for p in list(self._subs):
                await self._drop_sub(p)
            await self.nc.close()

        try:
            self._call(_close(), timeout=3)
        except Exception as exc:   # noqa: BLE001 - closing a log that is down
            log.debug("event log close: %s", exc)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def lease_owner(self, partition: int) -> str:
        """Who holds a partition now ("" when nobody): for operators and tests."""
        from nats.js.errors import KeyNotFoundError  # noqa: PLC0415

        async def get() -> str:
            try:
                return (await self._retrying(lambda: self.leases.get(f"p{partition}"), "the lease")).value.decode()
            except KeyNotFoundError:
                return ""

        return self._call(get())
