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
from datetime import datetime, timezone

import ray
from pymongo.errors import PyMongoError
from tqdm import tqdm

from itm.api.queries import image_page
from itm.config import Settings
from itm.embedded import EmbeddedMongo, EmbeddedMongoError
from itm.job.fingerprint import fingerprint
from itm.job.lines import count_lines, read_lines
from itm.job.pipeline import run_batches
from itm.job.ray_runtime import init_ray
from itm.job.writer import MongoUnavailable, WriterActor
from itm.outcomes import Counts
from itm.store import connect, redact


class JobError(RuntimeError):
    """The job itself could not run; the message says why."""


def new_run_id() -> str:
    """Sortable and unique: UTC time plus a random suffix."""
    return datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ-") + secrets.token_hex(3)


def check_mongo(uri: str) -> None:
    client = connect(uri)
    try:
        client.admin.command("ping")
    except PyMongoError as exc:
        reason = str(exc).split(" (configured timeouts")[0]
        raise JobError(f"MongoDB at {redact(uri)} is unreachable: {reason}") from None
    finally:
        client.close()


def run_job(settings: Settings, mongo_uri: str, run_id: str) -> tuple[Counts, float]:
    """Process the input file on the already-initialized Ray; return (totals, seconds)."""
    writer = WriterActor.remote(mongo_uri, settings.db, settings.mongo_retry_seconds)
    try:
        # A LineSet: a few ranges, however many lines are done.
        done = ray.get(writer.start_run.remote(
            run_id, str(settings.urls), bool(settings.resume), fingerprint(settings.urls),
            settings.force_resume))
    except ValueError as exc:
        raise JobError(str(exc)) from None
    print(f"itm: run {run_id} on {settings.urls}"
          + (f", resuming after {len(done)} lines already done" if done else ""))
    started = time.perf_counter()
    total = count_lines(settings.urls) - len(done)
    with tqdm(total=total, unit="line", dynamic_ncols=True) as bar:
        seen = Counts()

        def progress(counts: Counts) -> None:
            seen.add(counts)
            bar.set_postfix(ok=seen.success, errors=seen.error, dup=seen.duplicates, refresh=False)
            bar.update(counts.lines)

        run_batches(read_lines(settings.urls, done), writer, run_id, settings, progress)
    totals = ray.get(writer.finish_run.remote(run_id))
    return totals, time.perf_counter() - started


def summary(run_id: str, totals: Counts, seconds: float) -> str:
    reasons = ", ".join(f"{reason} {n}" for reason, n in totals.reasons.most_common()) or "none"
    return "\n".join([
        f"run {run_id}: {totals.lines} lines in {seconds:.1f} s "
        f"({totals.success / seconds if seconds else 0:.1f} images/s)",
        f"  success    {totals.success} ({totals.success - totals.duplicates} new images, "
        f"{totals.duplicates} duplicates of stored ones)",
        f"  errors     {totals.error} ({reasons})",
    ])


def serve_until_interrupted(settings: Settings, dashboard: str | None) -> None:
    # Imported here: Serve and the API are heavy, and a --no-serve run needs neither.
    from ray import serve

    from itm.api.serving import serve_api

    serve_api(settings)
    host = "localhost" if settings.host in ("0.0.0.0", "127.0.0.1", "::") else settings.host
    base = f"http://{host}:{settings.port}"
    assert settings.mongo_uri is not None  # set by main before serving
    client = connect(settings.mongo_uri)
    newest, _ = image_page(client[settings.db], limit=1)
    client.close()
    example = newest[0]["md5"] if newest else "<md5>"
    print(f"\nAPI on {base}")
    print(f"  {base}/                   dashboard: totals, histogram, errors, recent images")
    print(f"  {base}/monitoring         histogram of successes and errors per minute")
    print(f"  {base}/image/{example}")
    print(f"  MongoDB {redact(settings.mongo_uri)}, database {settings.db}")
    if dashboard:
        print(f"  Ray dashboard {dashboard}")
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


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = Settings.from_args(argv)
    except ValueError as exc:  # a malformed ITM_* variable
        print(f"itm: {exc}", file=sys.stderr)
        return 2
    run_id = settings.resume or new_run_id()
    try:
        if not settings.urls.is_file():
            raise JobError(f"input file not found: {settings.urls}")
        with contextlib.ExitStack() as stack:
            mongo_uri = settings.mongo_uri
            if mongo_uri is None:
                embedded = EmbeddedMongo(settings.data_dir)
                mongo_uri = stack.enter_context(embedded)
                shared = ", shared with another itm run" if embedded.joined else ""
                print(f"itm: embedded MongoDB at {mongo_uri} "
                      f"(data in {settings.data_dir}/mongo{shared})")
            check_mongo(mongo_uri)
            dashboard = None
            if not ray.is_initialized():  # a caller (a test, a notebook) may have done it
                if settings.serve and settings.ray_address is None:
                    from itm.api.serving import apply_serve_env  # heavy: only when serving

                    apply_serve_env(settings)  # read by Serve's processes as they start
                try:
                    dashboard = init_ray(
                        settings.ray_address, settings.dashboard and settings.serve
                    )
                except ConnectionError as exc:
                    raise JobError(f"Ray at {settings.ray_address} is unreachable: {exc}") from None
                stack.callback(ray.shutdown)
            totals, seconds = run_job(settings, mongo_uri, run_id)
            print(summary(run_id, totals, seconds))
            if settings.serve:
                serve_until_interrupted(
                    dataclasses.replace(settings, mongo_uri=mongo_uri), dashboard
                )
        return 0
    except (JobError, EmbeddedMongoError, MongoUnavailable) as exc:
        print(f"itm: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nitm: interrupted; resume with: python -m itm.run --resume {run_id}",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
