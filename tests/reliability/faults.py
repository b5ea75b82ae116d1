"""S3 faults for the reliability tests: a misbehaving network, and S3 answering with errors.

Two layers, because they fail differently and botocore recovers from them differently:

* :class:`FaultyProxy` sits between boto3 and moto's server and breaks TCP connections: it resets
  new connections, or cuts one after a random number of response bytes (a body cut mid-way).
  botocore retries a reset request, but a body cut after the headers arrived reaches the caller
  (botocore has already returned the response); proving the datastore copes with that is the point.
* :func:`inject_s3_faults` makes a fraction of S3 requests fail before they are sent, as S3 itself
  fails: 500 InternalError, 503 SlowDown, or a connection error. Clients are made by the product
  (``S3Backend`` builds its own session), so the handler is attached to every S3 client created
  while the injector is active.

Both reach child processes (a task run as a subprocess): the proxy through its URL in
``AWS_ENDPOINT_URL``, the injector through :func:`fault_environment`, whose variables make
``fault_site/sitecustomize.py`` activate it at interpreter start-up.

Standard-library imports only at the top: ``sitecustomize`` loads this module in every child.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import random
import socket
import struct
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

# -- connection faults: the proxy --------------------------------------------------------------------

#: SO_LINGER on with a zero timeout: close() then discards unsent data and sends RST, not FIN.
_LINGER_RST = struct.pack("ii", 1, 0)
#: How often a blocked thread re-checks whether its connection was aborted. Readers are woken at
#: once (see ``_abort``); only a writer stuck on a full send buffer waits this long.
_POLL_SECONDS = 0.1


def _abort(sock: socket.socket) -> None:
    """Make the coming close() send RST, and wake any thread blocked reading ``sock``.

    ``shutdown(SHUT_RD)`` sends nothing to the peer on Linux (so the peer sees the RST, not a
    FIN first) but makes a blocked ``recv`` return ``b""`` at once. The socket is not closed here:
    only the thread that owns it closes it, so a file descriptor is never reused under a thread
    still reading it.
    """
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RD)


class _Link:
    """One client connection and its upstream connection. The last of its two pumps closes both."""

    def __init__(self, client: socket.socket, cut_after: int | None):
        self.client = client
        self.upstream: socket.socket | None = None
        self.cut_after = cut_after  # server->client bytes after which the link is cut; None: never
        self.sent_to_client = 0
        self.aborted = False
        self._pumps = 2
        self._lock = threading.Lock()

    def attach_upstream(self, upstream: socket.socket) -> None:
        with self._lock:
            self.upstream = upstream
            aborted = self.aborted
        if aborted:  # stop() came while we were connecting
            _abort(upstream)

    def abort(self) -> None:
        with self._lock:
            self.aborted = True
            sockets = [self.client, self.upstream]
        for sock in sockets:
            if sock is not None:
                _abort(sock)

    def pump_finished(self) -> bool:
        """Count one pump out; True (and both sockets closed) when it was the last."""
        with self._lock:
            self._pumps -= 1
            if self._pumps:
                return False
        for sock in (self.client, self.upstream):
            if sock is not None:
                sock.close()
        return True


class FaultyProxy:
    """A TCP proxy on 127.0.0.1 that resets or cuts some connections to ``upstream_url``.

    Per accepted connection it draws, from its own seeded random generator: a reset (probability
    ``reset_rate``: the client socket is closed with RST before anything is forwarded), a cut
    (probability ``cut_rate``: forwarded normally until a random number of server->client bytes in
    ``[min_cut_bytes, max_cut_bytes]``, then both sides get RST), or a clean pass-through. boto3
    keeps connections alive, so a cut can land in a later response on the same connection, and a
    reset only hits requests that open a new connection.

    The rates are plain attributes, read at each new connection: set ``proxy.reset_rate = 0`` to
    heal the network mid-test. Counters (``connections``, ``resets``, ``cuts`` that happened,
    ``bytes_forwarded`` both ways) are updated under a lock.
    """

    def __init__(
        self,
        upstream_url: str,
        *,
        reset_rate: float = 0.0,
        cut_rate: float = 0.0,
        seed: int | None = None,
        min_cut_bytes: int = 1,
        max_cut_bytes: int = 256 * 1024,
    ):
        upstream = urlsplit(upstream_url)
        if upstream.hostname is None or upstream.port is None:
            raise ValueError(f"{upstream_url!r} names no host and port to forward to.")
        if not 0 < min_cut_bytes <= max_cut_bytes:
            raise ValueError(
                f"Need 0 < min_cut_bytes <= max_cut_bytes, not {min_cut_bytes}, {max_cut_bytes}."
            )
        self.upstream = (upstream.hostname, upstream.port)
        self.reset_rate = reset_rate
        self.cut_rate = cut_rate
        self.min_cut_bytes = min_cut_bytes
        self.max_cut_bytes = max_cut_bytes
        self.connections = 0
        self.resets = 0
        self.cuts = 0
        self.bytes_forwarded = 0
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._accept_thread: threading.Thread | None = None
        self._links: set[_Link] = set()
        self._threads: list[threading.Thread] = []

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``: an endpoint URL for boto3 (AWS_ENDPOINT_URL)."""
        if self._listener is None:
            raise RuntimeError("The proxy is not started.")
        return f"http://127.0.0.1:{self._listener.getsockname()[1]}"

    def start(self) -> FaultyProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(128)
        listener.settimeout(_POLL_SECONDS)  # accept() wakes to notice stop()
        self._listener = listener
        self._accept_thread = self._spawn(self._accept_loop, "accept")
        return self

    def stop(self) -> None:
        """Close the listener and every live connection (with RST); join all threads within a second."""
        self._stopping.set()
        deadline = time.monotonic() + 1.0
        if self._accept_thread is not None:
            self._accept_thread.join(1.0)  # no new link after this, so none escapes the abort below
        with self._lock:
            links = list(self._links)
            threads = list(self._threads)
        for link in links:
            link.abort()
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        if self._listener is not None:
            self._listener.close()  # only now: the accept thread owned it until it left

    def __enter__(self) -> FaultyProxy:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _spawn(self, target: Any, name: str, *args: Any) -> threading.Thread:
        thread = threading.Thread(target=target, args=args, name=f"faulty-proxy-{name}", daemon=True)
        with self._lock:
            self._threads = [t for t in self._threads if t.is_alive()]
            self._threads.append(thread)
        thread.start()
        return thread

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self._admit(client)

    def _admit(self, client: socket.socket) -> None:
        with self._lock:
            self.connections += 1
            draw = self._random.random()
            reset = draw < self.reset_rate
            cut_after = None
            if not reset and draw < self.reset_rate + self.cut_rate:
                cut_after = self._random.randint(self.min_cut_bytes, self.max_cut_bytes)
            if reset:
                self.resets += 1
        if reset or self._stopping.is_set():
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RST)
            client.close()
            return
        link = _Link(client, cut_after)
        with self._lock:
            self._links.add(link)
        self._spawn(self._serve, "link", link)

    def _serve(self, link: _Link) -> None:
        """Connect upstream, then pump client->upstream on a second thread and the reverse here."""
        try:
            upstream = socket.create_connection(self.upstream, timeout=5)
        except OSError:
            upstream = None
            link.abort()
        for sock in (link.client, upstream):
            if sock is not None:
                sock.settimeout(_POLL_SECONDS)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if upstream is None:  # neither pump will run: count both out
            link.pump_finished()
            self._pump_finished(link)
            return
        link.attach_upstream(upstream)
        self._spawn(self._pump, "up", link, link.client, upstream, False)
        self._pump(link, upstream, link.client, True)

    def _pump(self, link: _Link, source: socket.socket, target: socket.socket, to_client: bool) -> None:
        try:
            while not link.aborted:
                try:
                    data = source.recv(64 * 1024)
                except TimeoutError:
                    continue
                except OSError:
                    break
                if not data:
                    if not link.aborted:  # a clean half-close: pass it on, the other way keeps going
                        with contextlib.suppress(OSError):
                            target.shutdown(socket.SHUT_WR)
                    break
                cut = False
                if to_client and link.cut_after is not None:
                    room = link.cut_after - link.sent_to_client
                    cut = len(data) >= room
                    data = data[:room]
                if not self._send(link, target, data):
                    break
                with self._lock:
                    self.bytes_forwarded += len(data)
                    if cut:
                        self.cuts += 1
                if to_client:
                    link.sent_to_client += len(data)
                if cut:
                    link.abort()
        finally:
            self._pump_finished(link)

    def _pump_finished(self, link: _Link) -> None:
        if link.pump_finished():
            with self._lock:
                self._links.discard(link)

    @staticmethod
    def _send(link: _Link, sock: socket.socket, data: bytes) -> bool:
        view = memoryview(data)
        while view:
            if link.aborted:
                return False
            try:
                view = view[sock.send(view) :]
            except TimeoutError:
                continue
            except OSError:
                return False
        return True


# -- request faults: botocore -----------------------------------------------------------------------

#: What ``inject_s3_faults`` can make a request fail with.
FAULT_KINDS = ("500", "503", "connection")
#: The injector's settings for child processes, e.g. ``rate=0.2;kinds=500,503,connection;seed=7``.
SPEC_VARIABLE = "FLOWSPEC_TEST_S3_FAULTS"
#: A folder where each child process keeps its counters, as ``<pid>.json``.
REPORT_VARIABLE = "FLOWSPEC_TEST_S3_FAULT_REPORT"
#: Holds the ``sitecustomize.py`` that activates the injector in child processes.
FAULT_SITE = Path(__file__).resolve().parent / "fault_site"

_S3_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again."),
    "503": (503, "SlowDown", "Please reduce your request rate."),
}


@dataclass
class FaultCounters:
    """S3 requests an injector saw (each attempt counts, retries included), and faults by kind."""

    requests: int = 0
    injected: dict[str, int] = field(default_factory=dict)

    @property
    def faults(self) -> int:
        return sum(self.injected.values())

    def as_dict(self) -> dict[str, Any]:
        return {"requests": self.requests, "injected": dict(self.injected)}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultCounters:
        return cls(requests=data["requests"], injected=dict(data["injected"]))

    @classmethod
    def total(cls, counters: Iterable[FaultCounters]) -> FaultCounters:
        result = cls()
        for each in counters:
            result.requests += each.requests
            for kind, count in each.injected.items():
                result.injected[kind] = result.injected.get(kind, 0) + count
        return result


class _RawBody:
    """The ``raw`` of an AWSResponse: botocore reads an error body through ``stream()``."""

    def __init__(self, body: bytes):
        self._body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._body

    def read(self, *_: Any) -> bytes:
        body, self._body = self._body, b""
        return body


def _s3_error_response(request: Any, kind: str) -> Any:
    """The response S3 sends for this error: XML body (none for HEAD, as S3 does), request ids."""
    from botocore.awsrequest import AWSResponse

    status, code, message = _S3_ERRORS[kind]
    request_id = uuid.uuid4().hex[:16].upper()
    body = b""
    if request.method != "HEAD":
        body = (
            '<?xml version="1.0" encoding="UTF-8"?>\n'
            f"<Error><Code>{code}</Code><Message>{message}</Message>"
            f"<RequestId>{request_id}</RequestId><HostId>injected-fault</HostId></Error>"
        ).encode()
    headers = {
        "Content-Type": "application/xml",
        "Content-Length": str(len(body)),
        "x-amz-request-id": request_id,
        "x-amz-id-2": "injected-fault",
        "Server": "AmazonS3",
    }
    return AWSResponse(request.url, status, headers, _RawBody(body))


def _checked(error_rate: float, kinds: Iterable[str]) -> tuple[float, tuple[str, ...]]:
    kinds = tuple(kinds)
    if not kinds or set(kinds) - set(FAULT_KINDS):
        raise ValueError(f"Fault kinds must be some of {FAULT_KINDS}, not {kinds}.")
    if not 0.0 <= error_rate <= 1.0:
        raise ValueError(f"The error rate must be in [0, 1], not {error_rate}.")
    return float(error_rate), kinds


class _Injector:
    """A ``before-send`` handler failing a seeded fraction of requests, with its counters.

    Why ``before-send`` works: botocore emits it inside the ``try`` of
    ``Endpoint._do_get_response`` (botocore/endpoint.py:277-289 in botocore 1.44.8): a response a
    handler returns is used instead of sending the request and parsed like one from the wire, and an
    exception a handler raises is caught by the same ``except Exception`` as one raised while
    sending, becoming the attempt's ``caught_exception``. Either way ``_send_request`` then asks
    ``needs-retry`` (endpoint.py:202, 352-382), where standard mode retries status 500/503, the code
    SlowDown, and the exception classes ConnectionError and HTTPClientError
    (botocore/retries/standard.py:463-504, 507-535). So no lower hook point is needed.
    """

    def __init__(self, error_rate: float, kinds: Iterable[str], seed: int | None, report_dir: Path | None):
        self.error_rate, self.kinds = _checked(error_rate, kinds)
        self.seed = seed
        self.report_dir = report_dir
        self.active = True
        self.counters = FaultCounters(injected=dict.fromkeys(kinds, 0))
        self._random = random.Random(seed)
        self._lock = threading.Lock()

    def before_send(self, request: Any, **_: Any) -> Any:
        if not self.active:
            return None
        with self._lock:
            self.counters.requests += 1
            kind = None
            if self._random.random() < self.error_rate:
                kind = self._random.choice(self.kinds)
                self.counters.injected[kind] += 1
            # The two ways S3 connections fail: dropped mid-request, or refused.
            closed = self._random.random() < 0.5
        self.write_report()
        if kind == "connection":
            from botocore.exceptions import ConnectionClosedError, EndpointConnectionError

            if closed:
                raise ConnectionClosedError(endpoint_url=request.url, request=request)
            raise EndpointConnectionError(endpoint_url=request.url, error="injected fault")
        return _s3_error_response(request, kind) if kind else None

    def after_fork_in_child(self, fork_number: int) -> None:
        """A forked child counts its own requests, draws its own faults, and holds no parent lock."""
        self._lock = threading.Lock()
        self.counters = FaultCounters(injected=dict.fromkeys(self.kinds, 0))
        self._random = random.Random(None if self.seed is None else f"{self.seed}/fork{fork_number}")
        self.write_report()

    def write_report(self) -> None:
        """Replace ``<report_dir>/<pid>.json`` (atomically) with the counters so far.

        Written after every request, not only at exit: a task killed with SIGKILL, or a forked
        child leaving through ``os._exit`` (Airflow's task runner), never runs ``atexit``.
        """
        if self.report_dir is None:
            return
        with self._lock:
            text = json.dumps({"pid": os.getpid(), **self.counters.as_dict()})
            path = self.report_dir / f"{os.getpid()}.json"
            scratch = path.with_name(f".{path.name}.tmp")
            scratch.write_text(text)
            os.replace(scratch, path)


_active: list[_Injector] = []
_patch_lock = threading.Lock()
_original_create_client: Any = None
_forks = 0


def _attach(client: Any) -> None:
    if client.meta.service_model.service_name != "s3":
        return
    for injector in list(_active):
        client.meta.events.register_first(
            "before-send.s3", injector.before_send, unique_id=f"flowspec-fault-{id(injector)}"
        )


def _install(injector: _Injector) -> None:
    """Attach ``injector`` to every S3 client made from now on (botocore Session.create_client)."""
    global _original_create_client
    from botocore.session import Session

    with _patch_lock:
        if _original_create_client is None:
            original = _original_create_client = Session.create_client

            @functools.wraps(original)
            def create_client(self: Any, *args: Any, **kwargs: Any) -> Any:
                client = original(self, *args, **kwargs)
                _attach(client)
                return client

            Session.create_client = create_client
        _active.append(injector)


def _uninstall(injector: _Injector) -> None:
    """Clients made meanwhile keep the handler, but it stops injecting: leaving heals them."""
    global _original_create_client
    from botocore.session import Session

    injector.active = False
    with _patch_lock:
        _active.remove(injector)
        if not _active and _original_create_client is not None:
            Session.create_client = _original_create_client
            _original_create_client = None


def _set_backoff(bases: dict[str, float]) -> dict[str, float]:
    """Set botocore's retry backoff bases (seconds) in this process; return the previous ones.

    Standard mode waits ``rand(0, 1) * base * 2**(attempt - 1)`` seconds before a retry, with base
    1 s after a throttling error (SlowDown) and 50 ms after others (botocore/retries/standard.py:
    344-421). Realistic, but at the fault rates tests use, a few SlowDowns, or four faults in a row,
    make a test sleep for seconds.
    """
    from botocore.retries.standard import ExponentialBackoff

    config = ExponentialBackoff._DEFAULT_BACKOFF_CONFIG
    previous = {name: config[name] for name in bases}
    config.update(bases)
    return previous


def _backoff_bases(seconds: float) -> dict[str, float]:
    return {"throttling_base_scale": seconds, "non_throttling_base_scale": seconds}


@contextlib.contextmanager
def inject_s3_faults(
    error_rate: float,
    *,
    kinds: Iterable[str] = FAULT_KINDS,
    seed: int | None = None,
    backoff: float | None = None,
) -> Iterator[FaultCounters]:
    """Fail ``error_rate`` of the S3 requests of clients created while active, in this process.

    Each faulty request fails with one of ``kinds`` ("500": InternalError, "503": SlowDown,
    "connection": ConnectionClosedError or EndpointConnectionError), before anything is sent.
    Yields the live counters. ``backoff`` (seconds) replaces botocore's backoff base for every
    retry in this process while active, to keep tests fast; None keeps botocore's (1 s after a
    SlowDown, 50 ms after other errors).
    """
    injector = _Injector(error_rate, kinds, seed, report_dir=None)
    previous_backoff = None if backoff is None else _set_backoff(_backoff_bases(backoff))
    _install(injector)
    try:
        yield injector.counters
    finally:
        _uninstall(injector)
        if previous_backoff is not None:
            _set_backoff(previous_backoff)


def fault_environment(
    error_rate: float,
    kinds: Iterable[str] = FAULT_KINDS,
    seed: int | None = None,
    *,
    report_dir: Path | str | None = None,
    backoff: float | None = None,
) -> dict[str, str]:
    """Variables that make a child Python process inject the same faults from start-up.

    Merge them into the child's environment (``{**os.environ, **fault_environment(...)}``): the
    child imports ``fault_site/sitecustomize.py`` through PYTHONPATH (the parent's entries are
    kept, after it). With ``report_dir`` each child keeps its counters in ``<pid>.json`` there;
    read them with :func:`read_fault_reports`. ``backoff`` as for :func:`inject_s3_faults`. The
    child must not run with ``-I``, ``-E`` or ``-S`` (they skip PYTHONPATH or ``sitecustomize``).
    """
    error_rate, kinds = _checked(error_rate, kinds)
    spec = f"rate={error_rate};kinds={','.join(kinds)}"
    if seed is not None:
        spec += f";seed={seed}"
    if backoff is not None:
        spec += f";backoff={backoff}"
    path = [str(FAULT_SITE)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    environment = {"PYTHONPATH": os.pathsep.join(path), SPEC_VARIABLE: spec}
    if report_dir is not None:
        environment[REPORT_VARIABLE] = str(report_dir)
    return environment


def parse_fault_spec(spec: str) -> dict[str, Any]:
    """``rate=0.2;kinds=500,503;seed=7;backoff=0.005`` as keyword arguments."""
    settings: dict[str, Any] = {}
    for item in filter(None, spec.split(";")):
        name, _, value = item.partition("=")
        if name == "rate":
            settings["error_rate"] = float(value)
        elif name == "kinds":
            settings["kinds"] = tuple(filter(None, value.split(",")))
        elif name == "seed":
            settings["seed"] = int(value)
        elif name == "backoff":
            settings["backoff"] = float(value)
        else:
            raise ValueError(f"Unknown setting {name!r} in {SPEC_VARIABLE}={spec!r}.")
    if "error_rate" not in settings:
        raise ValueError(f"{SPEC_VARIABLE}={spec!r} sets no rate.")
    return settings


def activate_from_environment() -> FaultCounters | None:
    """Inject faults for the rest of this process if SPEC_VARIABLE says so (``sitecustomize``)."""
    spec = os.environ.get(SPEC_VARIABLE)
    if not spec:
        return None
    settings = parse_fault_spec(spec)
    report = os.environ.get(REPORT_VARIABLE)
    injector = _Injector(
        settings["error_rate"],
        settings.get("kinds", FAULT_KINDS),
        settings.get("seed"),
        report_dir=Path(report) if report else None,
    )
    if report:
        Path(report).mkdir(parents=True, exist_ok=True)
    if "backoff" in settings:
        _set_backoff(_backoff_bases(settings["backoff"]))  # for the process's lifetime
    _install(injector)
    injector.write_report()  # an empty report still proves the child activated the injector
    atexit.register(injector.write_report)
    return injector.counters


def read_fault_reports(report_dir: Path | str) -> dict[int, FaultCounters]:
    """The counters each child process left in ``report_dir``, by pid."""
    reports = {}
    for path in sorted(Path(report_dir).glob("*.json")):
        data = json.loads(path.read_text())
        reports[int(data["pid"])] = FaultCounters.from_dict(data)
    return reports


def _before_fork() -> None:
    global _forks
    _forks += 1


def _after_fork_in_child() -> None:
    global _patch_lock
    _patch_lock = threading.Lock()
    for injector in _active:
        injector.after_fork_in_child(_forks)


os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
