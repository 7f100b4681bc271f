"""All of itm's settings, in one place.

Each field is a command-line flag of ``python -m itm.run`` (``--batch-size``) and an
environment variable (``ITM_BATCH_SIZE``); the flag wins over the variable, the
variable over the default. The API reads the same settings from the environment.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import socket
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from itm.outcomes import parse_reasons

ENV_PREFIX = "ITM_"


# A setting's rule: what is wrong with a value (after the field's name), or None.
Check = Callable[[typing.Any], str | None]


def at_least(low: int) -> Check:
    """A number not under ``low``."""
    problem = "cannot be negative" if low == 0 else f"must be at least {low}"
    return lambda value: problem if value < low else None


def positive(value: float) -> str | None:
    return "must be positive" if value <= 0 else None


def between(low: int, high: int) -> Check:
    return lambda value: None if low <= value <= high else f"must be between {low} and {high}"


def existing(path: Path) -> str | None:
    return None if path.exists() else f"{path} does not exist"


def http_url(url: str) -> str | None:
    return None if url.startswith(("http://", "https://")) else "must be an http:// or https:// URL"


def _opt(
    default: object, help: str, *, check: Check | None = None, shown: str | None = None
) -> typing.Any:
    """A setting: its ``help`` (say why, in the present), the ``check`` its value passes
    (unless None), and ``shown``, its default as people read it where the raw value says
    less (``--help`` and the README's Configuration table both show it)."""
    return field(default=default, metadata={"help": help, "check": check, "shown": shown})


@dataclass(frozen=True)
class Settings:
    """Every knob of the job and the API, with the default a laptop wants."""

    urls: Path = _opt(Path("urls.txt"), "input file: one image URL a line")
    mongo_uri: str | None = _opt(
        None,
        "MongoDB URI (any MongoDB 6+); without one, itm starts its embedded SecantusDB server",
        shown="none: embedded",
    )
    db: str = _opt("itm", "database name")
    ray_address: str | None = _opt(
        None,
        "Ray cluster to join: auto (the one `ray start` runs on this machine), host:port "
        "or ray://...; without one, itm starts a local Ray",
        shown="none: local Ray",
    )
    serve: bool = _opt(True, "after the job, serve the API until Ctrl-C")
    host: str = _opt("127.0.0.1", "address the API listens on (0.0.0.0 in a container)")
    port: int = _opt(5000, "port of the API", check=at_least(1))
    direct_ingress: bool = _opt(
        True,
        "with a local Ray, the Serve replica owns the API port itself (Serve's direct "
        "ingress: one hop less); off: requests pass through Serve's proxy actor (see "
        "docs/deploy.md#the-api-on-ray-serve-request-paths)",
    )
    api_timeout: float = _opt(
        2.0,
        "seconds the MongoDB reads of one API request may take (sent as maxTimeMS): past "
        "it the request is a 503, never a hung one",
        check=positive,
    )
    api_max_reads: int = _opt(
        8,
        "API requests of one replica reading MongoDB at once; the next waits at most 50 ms "
        "for a turn, then is a 503: a slow database refuses quickly instead of piling up "
        "reads that each end at --api-timeout (see "
        "docs/architecture.md#bounds-overload-is-a-503-not-a-queue)",
        check=at_least(1),
    )
    api_snapshot_s: float = _opt(
        1.0,
        "seconds the dashboard's data, the first page of /images and the default "
        "/monitoring window may be old: identical requests within it share one read of "
        "MongoDB (0: each request reads, concurrent ones still share)",
        check=at_least(0),
    )
    api_max_ongoing: int = _opt(
        8,
        "API requests one Serve replica runs at once (Serve's max_ongoing_requests; see "
        "docs/architecture.md#bounds-overload-is-a-503-not-a-queue)",
        check=at_least(1),
    )
    api_max_queued: int = _opt(
        8,
        "API requests queued in front of the replicas before the next one is a 503 at "
        "once (Serve's max_queued_requests): a bounded wait, never a pile-up",
        check=at_least(1),
    )
    api_allowed_hosts: str | None = _opt(
        None,
        "more names the API answers to, comma-separated (*.example.com: its subdomains; "
        "*: any name): a request's Host must be an IP address, localhost, the --host "
        "name or one of these, so that no web page can read the API through DNS rebinding "
        "(see docs/architecture.md#the-apis-doors-host-and-nosniff)",
    )
    dashboard: bool | None = _opt(
        None,
        "start the Ray dashboard (port 8265) with a local Ray; without it, a local Ray "
        "starts leaner: fewer processes, sooner up (see docs/architecture.md#a-lean-local-ray)",
        shown="when serving",
    )
    ray_dashboard_url: str | None = _opt(
        None,
        "the Ray dashboard that the API's page links to (http:// or https://); "
        "`python -m itm.run` sets it to the dashboard of the Ray it started or joined",
        check=http_url,
        shown="none: no link",
    )
    resume: str | None = _opt(
        None, "run id to resume: lines that already have an outcome are skipped"
    )
    force_resume: bool = _opt(
        False,
        "resume or retry even if the input file changed since the run started (its "
        "line numbers may no longer name the same URLs)",
    )
    retry_failed: str | None = _opt(
        None,
        "run id whose failed lines to process again, as a new run linked to it "
        "(the URLs are read again from that run's input file, by line number)",
    )
    reasons: str | None = _opt(
        None,
        "with --retry-failed: only the lines that failed for these comma-separated "
        "reasons (e.g. timeout,connection_error,http_5xx; http_5xx is every http_5NN)",
        shown="none: every failed line",
    )
    data_dir: Path = _opt(Path(".itm"), "where the embedded MongoDB keeps its data and log")
    concurrency: int = _opt(
        64,
        "downloads in flight across the cluster (I/O-bound, not capped by CPUs)",
        check=at_least(1),
    )
    per_host: int = _opt(
        8,
        "downloads in flight to one host across the cluster, each redirect hop counted "
        "for its own host (0: unlimited), so that a list of one site does not hit it with "
        "every download slot at once; a host that keeps answering 429/503 is also backed "
        "off for the rest of the run "
        "(see docs/architecture.md#politeness-per-host-limit-and-backoff)",
        check=at_least(0),
    )
    writers: int = _opt(
        0,
        "writer actors, each owning a fixed share of the md5 space, so that an image is "
        "always written by the same one (see docs/scale.md)",
        check=at_least(0),
        shown="0: one per node",
    )
    batch_size: int = _opt(
        32,
        "lines per group at most (a group: the lines an md5 and a grayscale task take, and "
        "the writers get, together): fewer tasks, workers and writes",
        check=at_least(1),
    )
    connect_timeout: float = _opt(5.0, "seconds to open a connection", check=positive)
    read_timeout: float = _opt(
        10.0, "seconds to wait for the next bytes of a response", check=positive
    )
    deadline: float = _opt(
        30.0,
        "seconds one URL may take in all: DNS, connect, TLS, headers, every redirect hop, "
        "every body, retries",
        check=positive,
    )
    retries: int = _opt(
        2,
        "retries of a transient download failure only: connection errors, 429, 502, 503, 504",
        check=at_least(0),
    )
    max_redirects: int = _opt(5, "redirects followed per URL", check=at_least(0))
    max_bytes: int = _opt(
        50_000_000,
        "largest body accepted, in bytes, counted while streaming, decompressed size included",
        check=at_least(1),
    )
    allow_private_addresses: bool = _opt(
        False,
        "also fetch loopback, private and carrier-grade NAT addresses (127.0.0.1, "
        "10.0.0.0/8, 192.168.0.0/16, fc00::/7, ...): off, so that a URL list cannot reach "
        "the services of this machine and its network; on for intranets and local tests "
        "(see docs/architecture.md#fetch-policy)",
    )
    allow_link_local_addresses: bool = _opt(
        False,
        "also fetch link-local addresses (169.254.0.0/16, fe80::/10): off, because "
        "cloud metadata services there hand out credentials",
    )
    ca_bundle: Path | None = _opt(
        None,
        "certificates (a PEM file, or a directory of them) that HTTPS servers are verified "
        "against, in place of the default: REQUESTS_CA_BUNDLE, SSL_CERT_FILE or "
        "SSL_CERT_DIR if set, else the system's trust store and certifi's bundle "
        "(see docs/architecture.md#fetch-policy)",
        check=existing,
    )
    download_resource: str | None = _opt(
        None,
        "custom Ray resource a node must offer to run downloads (start those nodes "
        "with `ray start --resources='{\"NAME\": 1}'`), for a cluster where only some "
        "nodes reach the image hosts; none: every node downloads (see "
        "docs/deploy.md#knobs-that-matter-on-a-cluster)",
    )
    max_pixels: int = _opt(
        50_000_000,
        "largest image decoded (width x height): bomb guard, checked on the header before "
        "decoding and wherever a decoder picks a size of its own; Pillow's own limit too",
        check=at_least(1),
    )
    png_level: int = _opt(
        1,
        "zlib level of the stored grayscale PNG (0-9): 0 stores it uncompressed; "
        "with the run-length strategy itm uses, 1 is as small as 9 and fastest "
        "(see docs/benchmarks.md)",
        check=between(0, 9),
    )
    mongo_timeout: float = _opt(
        5.0,
        "seconds the job waits for MongoDB's first answer before it stops with 'MongoDB "
        "unreachable': short, so that a wrong URI fails fast; longer where a first "
        "connection may be slow (the compose stack gives 30 s: see "
        "docs/deploy.md#run-with-docker-compose)",
        check=positive,
    )
    mongo_retry_seconds: float = _opt(
        60.0, "seconds the writer keeps reconnecting while MongoDB is away, before the run stops"
    )

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value, check = getattr(self, f.name), f.metadata["check"]
            if value is not None and check is not None and (problem := check(value)):
                raise ValueError(f"{f.name} {problem}")
        if self.retry_failed and self.resume:
            raise ValueError("--retry-failed starts a new run: it cannot go with --resume")
        if self.reasons is not None:
            if not self.retry_failed:
                raise ValueError("--reasons chooses the lines of --retry-failed: give both")
            parse_reasons(self.reasons)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``ITM_*`` variables over the defaults (what the API uses)."""
        environ = os.environ if environ is None else environ
        values: dict[str, typing.Any] = {}
        for f in dataclasses.fields(cls):
            name, kind = ENV_PREFIX + f.name.upper(), base_type(f)
            raw = environ.get(name)
            if raw is not None:
                try:
                    values[f.name] = _parse(kind, raw)
                except ValueError:
                    raise ValueError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
        return cls(**values)

    @classmethod
    def from_args(
        cls, argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
    ) -> Settings:
        """Settings from command-line flags over ``ITM_*`` variables over the defaults."""
        env = cls.from_env(environ)
        parser = argparse.ArgumentParser(
            prog="python -m itm.run",
            description="Download every image of a URL list on Ray, store its MD5 and "
            "grayscale in MongoDB, then serve the API. Every flag is also an ITM_* "
            "environment variable (--batch-size is ITM_BATCH_SIZE).",
        )
        for f in dataclasses.fields(cls):
            flag = "--" + f.name.replace("_", "-")
            kind = base_type(f)
            env_name = ENV_PREFIX + f.name.upper()
            # The built-in default, not the environment's value: that may hold a password.
            helptext = f"{f.metadata['help']} [env {env_name}; default: {shown_default(f)}]"
            if kind is bool:
                parser.add_argument(
                    flag,
                    action=argparse.BooleanOptionalAction,
                    default=getattr(env, f.name),
                    help=helptext,
                )
            else:
                parser.add_argument(
                    flag,
                    type=kind,
                    default=getattr(env, f.name),
                    metavar=f.name.upper(),
                    help=helptext,
                )
        args = parser.parse_args(argv)
        try:
            return cls(**vars(args))
        except ValueError as exc:
            parser.error(str(exc))
            raise  # unreachable: parser.error exits


def shown_default(f: dataclasses.Field[typing.Any]) -> str:
    """A setting's default as ``--help`` and the README show it."""
    if f.metadata["shown"]:
        return typing.cast(str, f.metadata["shown"])
    if isinstance(f.default, bool):
        return "on" if f.default else "off"
    if f.default is None:
        return "none"
    if isinstance(f.default, int) and f.default >= 1_000_000:
        return f"{f.default:_}"  # as readable, and as valid a value of the flag
    if isinstance(f.default, float):
        return f"{f.default:g} s"  # every float setting is a duration
    return str(f.default)


def base_type(f: dataclasses.Field[typing.Any]) -> type:
    """The concrete type of a field: ``str`` for ``str | None``."""
    hint = typing.get_type_hints(Settings)[f.name]
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return typing.cast(type, hint)


def _parse(kind: type, raw: str) -> object:
    if kind is bool:
        lowered = raw.strip().lower()
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise ValueError(f"not a boolean: {raw!r}")
    return kind(raw)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now: for a server whose port no setting names
    (the embedded MongoDB, Serve's proxy under direct ingress)."""
    with socket.socket() as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port
