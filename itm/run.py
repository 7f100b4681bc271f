"""``python -m itm.run``: run the job on a URL list, print a summary, then serve the API.

Exit codes: 0 when the job ran to its end (failed URLs are data, not crashes);
1 when the job could not run (input missing, MongoDB or Ray unreachable); 2 for
bad flags; 130 on Ctrl-C during the job (resume it with ``--resume RUN_ID``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import secrets
import signal
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from typing import Any

import ray
from pymongo import MongoClient
from pymongo.database import Database
from pymongo.errors import PyMongoError
from tqdm import tqdm

from itm.api.queries import image_page
from itm.config import Settings
from itm.embedded import EmbeddedMongo, EmbeddedMongoError
from itm.job.fingerprint import fingerprint
from itm.job.lines import count_lines, read_lines
from itm.job.pipeline import run_pipeline, start_politeness
from itm.job.ray_runtime import init_ray
from itm.job.retry_run import RetryRun, plan_retry_run, resumed_retry_run
from itm.job.writer import MongoUnavailable, start_writers, writer_count
from itm.outcomes import Counts, parse_reasons
from itm.redaction import redact
from itm.store import connect


class JobError(RuntimeError):
    """The job itself could not run; the message says why."""


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def mongo_client(uri: str, settings: Settings) -> MongoClient[dict[str, Any]]:
    """A client that gives up on a MongoDB that has not answered in ``--mongo-timeout``."""
    return connect(uri, timeout_ms=round(settings.mongo_timeout * 1000))


def check_mongo(uri: str, settings: Settings) -> None:
    try:
        client = mongo_client(uri, settings)
    except (PyMongoError, ValueError) as exc:  # pymongo's messages quote no secret
        raise JobError(f"--mongo-uri {redact(uri)} is not a valid MongoDB URI: {exc}") from None
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        reason = str(exc).split(" (configured timeouts")[0]
        raise JobError(f"MongoDB at {redact(uri)} is unreachable: {reason}") from None
    finally:
        client.close()


def run_job(settings: Settings, mongo_uri: str, run_id: str) -> tuple[Counts, float]:
    """Process the input file on the already-initialized Ray; return (totals, seconds).

    With ``--retry-failed``, or when resuming a retry run, only the failed lines of
    the run it retries, read again from that run's input file.
    """
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    start_politeness(settings)  # its process starts while the writers' do
    writers = start_writers(
        mongo_uri,
        settings.db,
        settings.mongo_retry_seconds,
        writer_count(settings.writers, nodes),
    )
    writer = writers[0]  # the run's ledger: start, heartbeat, finish
    with contextlib.closing(mongo_client(mongo_uri, settings)) as client:
        db = client[settings.db]
        try:
            retry = _retry_run(settings, db, run_id)
            urls = retry.urls if retry else settings.urls.resolve()
            total = retry.count(db) if retry else count_lines(urls)
            # A LineSet: a few ranges, however many lines are done.
            done = ray.get(
                writer.start_run.remote(
                    run_id,
                    str(urls),
                    bool(settings.resume),
                    fingerprint(urls),
                    settings.force_resume,
                    total,
                    retry and retry.of,
                    retry and retry.reasons,
                )
            )
        except ValueError as exc:
            raise JobError(str(exc)) from None
        what = (
            (
                f"{total} failed lines ({', '.join(retry.reasons or ['any reason'])}) of run "
                f"{retry.of}, from {urls}"
            )
            if retry
            else str(urls)
        )
        print(
            f"itm: run {run_id} on {what}"
            + (f", resuming after {len(done)} lines already done" if done else "")
        )
        started = time.perf_counter()
        with tqdm(total=total - len(done), unit="line", dynamic_ncols=True) as bar:
            seen = Counts()

            def progress(counts: Counts) -> None:
                seen.add(counts)
                bar.set_postfix(
                    ok=seen.success, errors=seen.error, dup=seen.duplicates, refresh=False
                )
                bar.update(counts.lines)

            lines = retry.lines(db, done) if retry else read_lines(urls, done)
            run_pipeline(lines, writers, run_id, settings, progress)
    totals = ray.get(writer.finish_run.remote(run_id))
    return totals, time.perf_counter() - started


def _retry_run(settings: Settings, db: Database[Any], run_id: str) -> RetryRun | None:
    """What this run retries: ``--retry-failed``, or the retry run a resumed run carries on."""
    if settings.retry_failed:
        reasons = parse_reasons(settings.reasons) if settings.reasons else None
        return plan_retry_run(db, settings.retry_failed, reasons, settings.force_resume)
    if settings.resume:
        return resumed_retry_run(db, run_id, settings.force_resume)
    return None


def summary(run_id: str, totals: Counts, seconds: float) -> str:
    """The run's summary, printed when its job ends."""
    reasons = ", ".join(f"{reason} {n}" for reason, n in totals.reasons.most_common()) or "none"
    return "\n".join(
        [
            f"run {run_id}: {totals.lines} lines in {seconds:.1f} s "
            f"({totals.success / seconds if seconds else 0:.1f} images/s)",
            f"  success    {totals.success} ({totals.success - totals.duplicates} new images, "
            f"{totals.duplicates} duplicates of stored ones)",
            f"  errors     {totals.error} ({reasons})",
        ]
    )


def serve_until_interrupted(settings: Settings, ray_dashboard: str | None) -> None:
    # Imported here: Serve and the API are heavy, and a --no-serve run needs neither.
    from ray import serve

    from itm.api.serving import serve_api

    serve_api(settings)
    host = "localhost" if settings.host in ("0.0.0.0", "127.0.0.1", "::") else settings.host
    base = f"http://{host}:{settings.port}"
    assert settings.mongo_uri is not None  # set by main before serving
    client = mongo_client(settings.mongo_uri, settings)
    newest, _ = image_page(client[settings.db], limit=1)
    client.close()
    example = newest[0]["md5"] if newest else "<md5>"
    print(f"\nAPI on {base}")
    print(f"  {base}/                   dashboard: totals, histogram, errors, recent images")
    print(f"  {base}/monitoring         histogram of successes and errors per minute")
    print(f"  {base}/image/{example}")
    print(f"  MongoDB {redact(settings.mongo_uri)}, database {settings.db}")
    if ray_dashboard:
        print(f"  Ray dashboard {ray_dashboard}")
    print("Ctrl-C to stop.")
    # `ray job stop` and `docker stop` send SIGTERM: stop as cleanly as on Ctrl-C.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("\nitm: stopping the API")
    finally:
        # A second Ctrl-C cuts this short: the job is done, and stopping Ray stops Serve too.
        with contextlib.suppress(KeyboardInterrupt):
            serve.shutdown()


class Services:
    """MongoDB and Ray for one run, started side by side and stopped side by side.

    The embedded server (when no URI is given) starts, and any MongoDB is pinged, in
    a thread while Ray starts in this one (``ray.init`` must run in the main thread);
    at the end it stops in that thread while Ray stops here. Each side takes seconds.
    A Ray that a caller (a test, a notebook) started is used, and left running.
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.embedded = EmbeddedMongo(settings.data_dir) if settings.mongo_uri is None else None
        self.mongo = ThreadPoolExecutor(1, thread_name_prefix="itm-mongo")  # start, then stop
        self.our_ray = False
        self.mongo_uri = ""
        self.ray_dashboard: str | None = None

    def __enter__(self) -> Services:
        try:
            ready = self.mongo.submit(self._open_mongo)
            if not ray.is_initialized():
                self._start_ray()
            self.mongo_uri = ready.result()
            if self.embedded is not None:
                shared = ", shared with another itm run" if self.embedded.joined else ""
                print(
                    f"itm: embedded MongoDB at {self.mongo_uri} "
                    f"(data in {self.settings.data_dir}/mongo{shared})"
                )
            if self.our_ray:
                print(f"itm: {ray_line(self.settings.ray_address, self.ray_dashboard)}")
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def _open_mongo(self) -> str:
        uri = self.embedded.start() if self.embedded is not None else self.settings.mongo_uri
        assert uri is not None  # no URI: the embedded server
        check_mongo(uri, self.settings)
        return uri

    def _start_ray(self) -> None:
        settings = self.settings
        start_dashboard = settings.serve if settings.dashboard is None else settings.dashboard
        if settings.serve and settings.ray_address is None:
            from itm.api.serving import apply_serve_env  # heavy: only when serving

            apply_serve_env(settings)  # read by Serve's processes as they start
        try:
            self.ray_dashboard = init_ray(
                settings.ray_address, start_dashboard, lean=not settings.serve
            )
        except ConnectionError as exc:
            raise JobError(f"Ray at {settings.ray_address} is unreachable: {exc}") from None
        self.our_ray = True

    def __exit__(self, *exc_info: object) -> None:
        if self.embedded is not None:
            self.mongo.submit(self.embedded.stop)  # after its start, if that still runs
        try:
            if self.our_ray:
                self.our_ray = False
                ray.shutdown()
        finally:
            self.mongo.shutdown(wait=True)


def ray_line(address: str | None, ray_dashboard: str | None) -> str:
    """One line on the Ray the run uses: which, how many CPUs, where its dashboard is."""
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if address:
        return f"joined the Ray cluster at {address}: {cpus} CPUs" + (
            f", dashboard {ray_dashboard}" if ray_dashboard else ""
        )
    return f"started a local Ray: {cpus} CPUs, " + (
        f"dashboard {ray_dashboard}" if ray_dashboard else "no dashboard (--dashboard starts one)"
    )


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = Settings.from_args(argv)
    except ValueError as exc:  # a malformed ITM_* variable
        print(f"itm: {exc}", file=sys.stderr)
        return 2
    run_id = settings.resume or new_run_id()
    try:
        if not settings.retry_failed and not settings.urls.is_file():
            raise JobError(f"input file not found: {settings.urls}")
        with Services(settings) as services:
            totals, seconds = run_job(settings, services.mongo_uri, run_id)
            print(summary(run_id, totals, seconds))
            if settings.serve:
                # The page links to the Ray dashboard (a URL the user gave wins).
                ray_dashboard = settings.ray_dashboard_url or services.ray_dashboard
                serve_until_interrupted(
                    dataclasses.replace(
                        settings, mongo_uri=services.mongo_uri, ray_dashboard_url=ray_dashboard
                    ),
                    ray_dashboard,
                )
        return 0
    except (JobError, EmbeddedMongoError, MongoUnavailable) as exc:
        print(f"itm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(
            f"\nitm: interrupted; resume with: python -m itm.run --resume {run_id}", file=sys.stderr
        )
        return 130


if __name__ == "__main__":
    sys.exit(main())
