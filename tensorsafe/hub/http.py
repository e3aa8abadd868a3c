"""HTTP to the Hub under a deadline: every request, retry, redirect and page ends by it, and every
answer is bounded in size.

huggingface_hub's helpers retry for as long as a server's ``Retry-After`` asks and read whole
answers into memory, and a socket read timeout restarts on every byte, so a server that drips a
byte a second never trips it. Here each request's network waits are capped by the time left, a body
is read chunk by chunk with the clock checked between chunks, a retry sleeps only inside the time
left, redirects are counted, and no answer is read past its bound. The session, token and endpoint
stay huggingface_hub's (``get_session``, ``build_hf_headers``).
"""
from __future__ import annotations

import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urljoin, urlsplit

from tensorsafe.errors import UnreadableFileError, option

TIMEOUT_OPTION = option("timeout_seconds", None, cli="--timeout")

MAX_REDIRECTS = 10
"""Most redirects one request follows (a redirect loop is an error, not a hang)."""
MAX_JSON_BYTES = 32 << 20
"""Largest API answer read (one listing page, one paths-info answer)."""
READ_TIMEOUT = 10.0
"""Longest single network wait, when more time than that is left before the deadline."""
RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
BASE_WAIT = 1.0
"""First wait before a retry (then doubled), unless the server's ``Retry-After`` says otherwise."""
_SIZE = re.compile(r"[0-9]{1,20}")


class RemoteReadError(UnreadableFileError):
    """A remote answer could not be had or is not what was asked for (network or server error,
    short or wrong answer, size sources that disagree, a bound hit, budget spent)."""

    rule_id = "IO-03"


class RemoteDeadlineError(RemoteReadError):
    """The per-file deadline (``--timeout``, ``ScanLimits.timeout_seconds``) passed during a remote read."""

    rule_id = "IO-02"


class Deadline:
    """A point in time (``time.monotonic``) that every request of one file's scan, or one listing, ends by."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.at = time.monotonic() + seconds

    def left(self) -> float:
        return self.at - time.monotonic()

    def check(self, what: str, path: str | None = None) -> float:
        """The seconds left; raises :class:`RemoteDeadlineError` when none are."""
        left = self.left()
        if left <= 0:
            raise RemoteDeadlineError(f"{what}: stopped after {self.seconds:g} s (limit MAX_SCAN_SECONDS, "
                                      f"{TIMEOUT_OPTION})", path=path)
        return left


def parse_size(value: str, what: str, path: str | None = None) -> int:
    """A size header (``Content-Length``, ``X-Linked-Size``): a non-negative whole number, or an error."""
    text = value.strip()
    if not _SIZE.fullmatch(text):
        raise RemoteReadError(f"{what} is not a non-negative whole number: {value[:40]!r}", path=path)
    return int(text)


def _retry_after(headers) -> float | None:
    value = headers.get("Retry-After", "").strip()
    return float(value) if _SIZE.fullmatch(value) else None


def _error_text(response) -> str:
    detail = response.headers.get("X-Error-Message") or response.headers.get("X-Error-Code") or ""
    code = response.headers.get("X-Error-Code", "")
    known = {"RepoNotFound": "no such repository (or it is private: set HF_TOKEN)",
             "EntryNotFound": "no such file in the repository",
             "RevisionNotFound": "no such revision in the repository",
             "GatedRepo": "the repository is gated: accept its terms and set HF_TOKEN"}
    text = known.get(code, detail[:200])
    return f"HTTP {response.status_code}" + (f": {text}" if text else "")


def _timeout(deadline: Deadline, what: str, path: str | None):
    import httpx2

    return httpx2.Timeout(min(READ_TIMEOUT, deadline.check(what, path)))


@contextmanager
def request(method: str, url: str, deadline: Deadline, *, what: str, path: str | None = None,
            headers: dict | None = None, params: dict | None = None, data: dict | None = None,
            retries: int = 2, redirects: str = "all") -> Iterator:
    """An open streamed answer (status below 400, not a redirect followed) to ``method url``.

    ``redirects``: ``"all"`` follows every redirect, ``"relative"`` only those on the same host (a
    Hub HEAD stops at the CDN redirect, whose headers carry the file's size). Retries (``retries``
    of them) on network errors and on 408/429/5xx answers sleep only while the deadline allows."""
    import httpx2
    from huggingface_hub.utils import build_hf_headers, get_session

    base = {**build_hf_headers(), **(headers or {})}
    origin = urlsplit(url)[:2]
    attempt, wait = 0, BASE_WAIT
    while True:
        attempt += 1
        target, hops, sent, query = url, 0, dict(base), params
        try:
            while True:
                with get_session().stream(method, target, headers=sent, params=query, data=data,
                                          follow_redirects=False, timeout=_timeout(deadline, what, path)) as r:
                    location = r.headers.get("Location") if r.is_redirect else None
                    if location is not None:
                        following = urljoin(target, location)
                        same_host = urlsplit(following)[:2] == origin
                        if redirects == "all" or same_host:
                            hops += 1
                            if hops > MAX_REDIRECTS:
                                raise RemoteReadError(f"{what}: more than {MAX_REDIRECTS} redirects "
                                                      "(limit MAX_REDIRECTS)", path=path)
                            if not same_host:
                                sent = {k: v for k, v in sent.items() if k.lower() != "authorization"}
                            target, query = following, None
                            continue
                    if r.status_code in RETRY_STATUSES and attempt <= retries:
                        pause = _retry_after(r.headers) or wait
                    elif r.status_code >= 400:
                        raise RemoteReadError(f"{what}: {_error_text(r)}", path=path)
                    else:
                        yield r
                        return
                break
        except httpx2.TimeoutException as exc:
            if deadline.left() <= 0:
                raise RemoteDeadlineError(f"{what}: stopped after {deadline.seconds:g} s (limit MAX_SCAN_SECONDS, "
                                          f"{TIMEOUT_OPTION})", path=path) from exc
            if attempt > retries:
                raise RemoteReadError(f"{what}: timed out ({type(exc).__name__})", path=path) from exc
            pause = wait
        except (httpx2.NetworkError, httpx2.RemoteProtocolError) as exc:
            if attempt > retries:
                raise RemoteReadError(f"{what}: {type(exc).__name__}: {exc}", path=path) from exc
            pause = wait
        except httpx2.HTTPError as exc:
            raise RemoteReadError(f"{what}: {type(exc).__name__}: {exc}", path=path) from exc
        if pause >= deadline.left():
            raise RemoteReadError(f"{what}: the server asks to retry in {pause:g} s, past the deadline "
                                  f"({deadline.seconds:g} s, {TIMEOUT_OPTION})", path=path)
        time.sleep(pause)
        wait *= 2


def read_body(response, deadline: Deadline, limit: int, *, what: str, path: str | None = None) -> bytes:
    """The body, at most ``limit`` bytes (more is an error), with the deadline checked between chunks."""
    import httpx2

    data = bytearray()
    try:
        for chunk in response.iter_raw():
            data += chunk
            if len(data) > limit:
                raise RemoteReadError(f"{what}: the server sent more than the {limit:,} bytes expected", path=path)
            deadline.check(what, path)
    except httpx2.TimeoutException as exc:
        deadline.check(what, path)
        raise RemoteReadError(f"{what}: timed out reading the answer", path=path) from exc
    except httpx2.HTTPError as exc:
        raise RemoteReadError(f"{what}: {type(exc).__name__}: {exc}", path=path) from exc
    return bytes(data)


def get_json(method: str, url: str, deadline: Deadline, *, what: str, path: str | None = None,
             params: dict | None = None, data: dict | None = None, retries: int = 2,
             limit: int = MAX_JSON_BYTES) -> tuple[object, str | None]:
    """(The decoded JSON answer, the ``Link: rel="next"`` URL or ``None``); invalid JSON is an error."""
    import json

    with request(method, url, deadline, what=what, path=path, params=params, data=data, retries=retries) as r:
        body = read_body(r, deadline, limit, what=what, path=path)
        next_url = r.links.get("next", {}).get("url")
    try:
        value = json.loads(body)
    except (ValueError, RecursionError) as exc:
        raise RemoteReadError(f"{what}: the answer is not valid JSON ({type(exc).__name__})", path=path) from exc
    if next_url is not None:
        next_url = urljoin(url, next_url)
        if urlsplit(next_url)[:2] != urlsplit(url)[:2]:
            raise RemoteReadError(f"{what}: the next page is on another host ({urlsplit(next_url).netloc!r})",
                                  path=path)
    return value, next_url
