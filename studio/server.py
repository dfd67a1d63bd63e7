"""Serving the page safely: credentials, the launch settings (upload size, queue size, the outputs folder Gradio may
serve, Pillow's decompression-bomb limit) and a guard on Gradio's FastAPI app (Host header check against DNS
rebinding, X-Frame-Options against clickjacking, a throttle on failed logins). app.py and the tests both launch
through `launch`, so they run with the same settings."""
from __future__ import annotations

import ipaddress
import os
import socket
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from PIL import Image
from starlette.datastructures import Headers, MutableHeaders
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studio.config import LOOPBACK_HOSTS, StudioConfig

ANY_ADDRESS = {"0.0.0.0", "::", ""}
SHARE_HOSTS = (".gradio.live",)  # where Gradio's share links come from (a tunnel keeps the public name as Host)


@dataclass
class ServeSettings:
    host: str = "127.0.0.1"
    port: int | None = None
    auth: tuple[str, str] | None = None
    share: bool = False
    allowed_hosts: tuple[str, ...] = ()  # names besides loopback and the served host; "*" turns the check off
    max_upload_mb: float = 20.0
    max_queue: int = 32  # jobs waiting at once; beyond it a request is refused ("busy, try again")
    login_failures: int = 5  # failed logins per client address within login_window_s, then it must wait
    login_window_s: float = 60.0


def parse_auth(text: str | None) -> tuple[str, str] | None:
    """`USER:PASSWORD` as a (user, password) pair; ValueError when either part is empty."""
    if text is None:
        return None
    user, sep, password = text.partition(":")
    if not sep or not user.strip() or not password:
        raise ValueError("--auth needs USER:PASSWORD, with neither part empty: a page anyone can log in to "
                         "protects nothing.")
    return user.strip(), password


def share_requested() -> bool:
    """Gradio opens a public share link when GRADIO_SHARE=True; the studio passes `share` itself, from the same variable."""
    return os.environ.get("GRADIO_SHARE", "").strip().lower() == "true"


def served_names(settings: ServeSettings) -> set[str]:
    """Host names the page answers to: loopback, the served host (and this machine's names on 0.0.0.0), the
    --allowed-hosts, and the share link's domain when sharing. IP addresses are always accepted (see host_allowed)."""
    names = {"localhost", *settings.allowed_hosts}
    if settings.host in ANY_ADDRESS:
        names |= {socket.gethostname(), socket.getfqdn()}
    else:
        names.add(settings.host)
    if settings.share:
        names |= set(SHARE_HOSTS)
    return {n.strip().lower().rstrip(".") for n in names if n and n.strip()}


def host_allowed(host_header: str, names: Iterable[str]) -> bool:
    """An IP address, or a listed name (".example.org" also matches its subdomains). A DNS rebinding attack reaches
    the server under the attacker's own *name*, never under an address, so addresses need no list."""
    names = set(names)
    if "*" in names:
        return True
    host = host_header.strip()
    if host.startswith("["):  # [IPv6]:port
        host = host[1:host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.split(":")[0]
    host = host.lower().rstrip(".")
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    return any(host == n or (n.startswith(".") and host.endswith(n)) for n in names)


class LoginThrottle:
    """At most `limit` failed logins per client within `window_s` seconds; then that client waits. An attempt counts
    as failed from the moment it starts (cleared on success), so a burst of parallel attempts is limited too."""

    def __init__(self, limit: int, window_s: float, clock: Callable[[], float] = time.monotonic):
        self.limit, self.window_s, self.clock = limit, window_s, clock
        self.failures: dict[str, deque[float]] = {}

    def _recent(self, client: str, now: float) -> deque[float]:
        times = self.failures.get(client, deque())
        while times and times[0] <= now - self.window_s:
            times.popleft()
        return times

    def wait(self, client: str) -> float:
        """Seconds this client must wait before trying again (0: it may try now)."""
        now = self.clock()
        times = self._recent(client, now)
        return 0.0 if len(times) < self.limit else times[0] + self.window_s - now

    def attempt(self, client: str) -> None:
        now = self.clock()
        if len(self.failures) > 10_000:  # forget clients with no recent failure
            self.failures = {c: t for c, t in self.failures.items() if self._recent(c, now)}
        self.failures.setdefault(client, deque()).append(now)

    def succeeded(self, client: str) -> None:
        self.failures.pop(client, None)


class Guard:
    """ASGI middleware on Gradio's app: refuse unknown Host names, forbid framing by other sites, throttle logins."""

    def __init__(self, app: ASGIApp, names: Iterable[str], login_failures: int, login_window_s: float):
        self.app, self.names = app, set(names)
        self.throttle = LoginThrottle(login_failures, login_window_s)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        host = Headers(scope=scope).get("host", "")
        if not host_allowed(host, self.names):
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await PlainTextResponse(f"Host {host!r} is not served here. To reach the studio under this name, start it "
                                    "with --allowed-hosts NAME.", status_code=400)(scope, receive, send)
            return
        if scope["type"] == "websocket":
            await self.app(scope, receive, send)
            return
        client = (scope.get("client") or ("unknown",))[0]
        login = scope["method"] == "POST" and scope["path"].rstrip("/").endswith("/login")
        if login:
            wait = self.throttle.wait(client)
            if wait > 0:
                await PlainTextResponse(f"Too many failed logins from this address; try again in {wait:.0f} s.",
                                        status_code=429, headers={"Retry-After": str(int(wait) + 1)})(scope, receive, send)
                return
            self.throttle.attempt(client)
        status = {}

        async def send_guarded(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                MutableHeaders(scope=message).setdefault("X-Frame-Options", "SAMEORIGIN")
            await send(message)

        await self.app(scope, receive, send_guarded)
        if login and status.get("code") == 200:
            self.throttle.succeeded(client)


def launch_kwargs(settings: ServeSettings, config: StudioConfig) -> dict:
    """Everything the studio passes to Gradio's launch() about serving (the look comes from ui.launch_kwargs)."""
    guard = Middleware(Guard, names=served_names(settings), login_failures=settings.login_failures,
                       login_window_s=settings.login_window_s)
    return {
        "server_name": settings.host,
        "server_port": settings.port,
        "auth": settings.auth,
        "share": settings.share,  # explicit, so GRADIO_SHARE cannot open a link app.py did not check
        "max_file_size": int(settings.max_upload_mb * 2**20),
        # Gradio serves only files in the working folder, the temp folder and allowed_paths: the outputs folder may be
        # anywhere (else every finished image is an InvalidPathError although its PNG was saved).
        "allowed_paths": [str(Path(config.outputs_dir).resolve())],
        "app_kwargs": {"middleware": [guard]},  # FastAPI(middleware=...): in place before the server starts
    }


def apply_image_limit(max_pixels: int) -> None:
    """Pillow refuses (DecompressionBombError) images of more than 2 * MAX_IMAGE_PIXELS pixels when it opens them,
    before decoding; between 1x and 2x it only warns. So half the limit: larger images are refused outright."""
    Image.MAX_IMAGE_PIXELS = max(1, max_pixels // 2)


# Gradio's queue loop looks for a waiting event every 1 ms while none waits (and for gr.Progress updates every 10 ms
# while a job runs), on the server's event loop. On 2 cores that loop took 0.11 CPU-seconds per image of the suite, and
# each wake-up preempted one of the engine's two threads in the middle of a kernel: a job's ONNX Runtime time was
# 1.2-1.5x that of the same job outside the server. Polled every 20 ms (progress every 100 ms; the studio reports
# progress itself, without gr.Progress) one image through the API took 0.54 s instead of 0.62 s (14 calls each, taken
# in turns in one server); the next job starts at most 20 ms later.
QUEUE_POLL_S, PROGRESS_POLL_S = 0.02, 0.1


def pace_queue(demo) -> None:
    """Set the queue loop's polling intervals (Gradio's private attributes: tests check that they still exist)."""
    queue = demo._queue
    queue.sleep_when_free = QUEUE_POLL_S
    queue.progress_update_sleep_when_free = PROGRESS_POLL_S


def launch(demo, settings: ServeSettings, config: StudioConfig, **extra):
    """Queue (one accelerator job at a time, at most max_queue waiting) and launch with the studio's settings."""
    apply_image_limit(config.limits.max_image_pixels)
    demo.queue(default_concurrency_limit=1, max_size=settings.max_queue)
    pace_queue(demo)
    return demo.launch(**launch_kwargs(settings, config), **extra)


def exposure_problem(host: str, auth: str | None, share: bool) -> str | None:
    """Why serving so would be unsafe, or None: empty credentials, a share link or a network address without them."""
    if auth is not None:
        try:
            parse_auth(auth)
        except ValueError as e:
            return str(e)
    if share and not auth:
        return ("Refusing to open a public share link (GRADIO_SHARE=True) without a password: anyone with the link "
                "could use this machine. Add --auth USER:PASSWORD, or unset GRADIO_SHARE.")
    if host not in LOOPBACK_HOSTS and not auth:
        return (f"Refusing to serve on {host} without a password: anyone on the network could use this machine. "
                "Add --auth USER:PASSWORD, or use --host 127.0.0.1.")
    return None


def free_port() -> int:
    """A free TCP port on loopback, for a server that a test or a benchmark starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
