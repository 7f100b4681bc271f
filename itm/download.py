"""Downloading one URL safely: limits on time, size and redirects; retries for transient faults.

Every way a download can fail ends as one ``Failure`` with a stable ``reason``.
"""

from __future__ import annotations

import time
from functools import lru_cache

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import ProtocolError, ReadTimeoutError

from itm.config import Settings
from itm.errors import Failure
from itm.urls import check_url

# Worth another try: the server or the path to it may be fine a moment later.
TRANSIENT_STATUSES = frozenset({429, 502, 503, 504})
CHUNK = 64 * 1024
BACKOFF = 0.25  # seconds before the first retry; doubles each time
USER_AGENT = "itm/0.1"


class _Transient(Exception):
    """A failure that a retry may cure."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure)
        self.failure = failure


@lru_cache(maxsize=4)
def session_for(pool_size: int, max_redirects: int) -> requests.Session:
    """One pooled session per worker process, reused by every task it runs."""
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.max_redirects = max_redirects
    session.headers["User-Agent"] = USER_AGENT
    return session


def fetch(line: str, settings: Settings) -> bytes:
    """The body of the URL on ``line``, or raise ``Failure``.

    Retries only transient faults (connection errors, 429, 502, 503, 504), with
    exponential backoff, and never past the URL's total deadline.
    """
    url = check_url(line)
    session = session_for(settings.batch_size, settings.max_redirects)
    deadline = time.monotonic() + settings.deadline
    attempt = 0
    while True:
        try:
            return _get(session, url, deadline, settings)
        except _Transient as transient:
            pause = BACKOFF * 2**attempt
            if attempt == settings.retries or time.monotonic() + pause >= deadline:
                raise transient.failure from None
            time.sleep(pause)
            attempt += 1


def _get(session: requests.Session, url: str, deadline: float, settings: Settings) -> bytes:
    remaining = deadline - time.monotonic()
    if remaining <= 0:
        raise Failure("timeout", f"no time left of the {settings.deadline:g} s deadline")
    timeout = (min(settings.connect_timeout, remaining), min(settings.read_timeout, remaining))
    try:
        with session.get(url, stream=True, timeout=timeout) as response:
            _check_status(response)
            return _read_body(response, deadline, settings)
    except requests.TooManyRedirects:
        raise Failure(
            "too_many_redirects", f"more than {settings.max_redirects} redirects"
        ) from None
    except requests.ConnectTimeout:
        raise Failure("timeout", f"no connection within {timeout[0]:g} s") from None
    except (requests.ReadTimeout, ReadTimeoutError):
        raise Failure("timeout", f"no data for {timeout[1]:g} s") from None
    except (requests.exceptions.InvalidSchema, requests.exceptions.InvalidURL,
            requests.exceptions.MissingSchema) as exc:
        raise Failure("invalid_url", f"cannot follow the URL or its redirect: {exc}") from None
    except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
            ProtocolError) as exc:
        cause = exc.args[0] if exc.args else exc
        if isinstance(cause, ReadTimeoutError):  # requests wraps a read timeout of the body
            raise Failure("timeout", f"no data for {timeout[1]:g} s") from None
        raise _Transient(Failure("connection_error", str(cause))) from None
    except requests.RequestException as exc:
        raise Failure("download_error", str(exc)) from None


def _check_status(response: requests.Response) -> None:
    code = response.status_code
    if code == 200:
        return
    failure = Failure(f"http_{code}", f"HTTP {code} {response.reason or ''}".strip())
    if code in TRANSIENT_STATUSES:
        raise _Transient(failure)
    raise failure


def _read_body(response: requests.Response, deadline: float, settings: Settings) -> bytes:
    """Stream the body, counting decoded bytes against the limit (Content-Length is only a hint)."""
    limit = settings.max_bytes
    declared = response.headers.get("Content-Length", "")
    if declared.isdigit() and int(declared) > limit:
        raise Failure("too_large", f"Content-Length {int(declared):,} is over {limit:,} bytes")
    body = bytearray()
    # read1 returns whatever has arrived, so a server that drips bytes cannot
    # hold a read open past the deadline.
    while chunk := response.raw.read1(CHUNK, decode_content=True):
        body += chunk
        if len(body) > limit:
            raise Failure("too_large", f"body is over {limit:,} bytes")
        if time.monotonic() > deadline:
            raise Failure("timeout", f"body incomplete after the {settings.deadline:g} s deadline")
    return bytes(body)
