"""Multi-node for real: a head and two worker nodes on this machine, the job joining them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient
from pymongo.database import Database
from ray.cluster_utils import Cluster
from ray.util.state import list_tasks

from itm.config import Settings
from itm.job.imaging import grayscale_png, md5_hex
from itm.job.pipeline import shard_of
from itm.job.ray_runtime import LOCAL_ENV
from tests.support.host_servers import HostServer, check_polite_run, spread_lines
from tests.support.jobs import ROOT, run_itm, run_itm_process, write_urls
from tests.support.servers import PicsumServer, picsum_lines
from tests.support.waiting import wait_until

pytestmark = pytest.mark.ray

LINES = 300


def head(num_cpus: int) -> Cluster:
    """A Ray head on loopback, with a dashboard (the state API), apart from the session's Ray."""
    return Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": num_cpus,
            "include_dashboard": True,
            "dashboard_host": "127.0.0.1",
            "dashboard_port": None,
        },
    )


@pytest.fixture(scope="module")
def cluster(ray_local: None) -> Iterator[Cluster]:
    """Three Ray nodes (one CPU each)."""
    cluster = head(num_cpus=1)
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def state_tasks(cluster: Cluster, *filters: tuple[str, str, str]) -> list:
    return list_tasks(
        address=f"http://{cluster.webui_url}",
        limit=10_000,
        filters=[("type", "=", "NORMAL_TASK"), *filters],
        raise_on_missing_output=False,
    )


def outcome(db: Database) -> dict[str, list]:
    """What a run leaves in the database, without times, ids or run ids.

    Which of two lines with the same image is stored first (the other one is its
    duplicate) depends on which download ends first, on one node as on several:
    only the number of duplicates per image is compared.
    """
    duplicates = Counter(e["md5"] for e in db.events.find({"duplicate": True}))
    return {
        "events": sorted((e["line"], e["status"], e["reason"], e["md5"]) for e in db.events.find()),
        "duplicates": sorted(duplicates.items()),
        "images": sorted(
            (i["md5"], i["width"], i["height"], bytes(i["gray"])) for i in db.images.find()
        ),
        "counters": [sum(m[k] for m in db.monitoring.find()) for k in ("success", "error")],
    }


def assert_one_writer_per_share(db: Database, writers: int) -> set[int]:
    """Each writer call (a tally) holds the lines of one share only: an image is always
    written by the writer that owns its md5, a line without one by its number. Returns
    the shares written."""
    shares: dict[object, set[int]] = {}
    for event in db.events.find({}, {"tally": 1, "md5": 1, "line": 1}):
        shares.setdefault(event["tally"], set()).add(shard_of(event["md5"], event["line"], writers))
    assert all(len(share) == 1 for share in shares.values())
    return {share for (share,) in shares.values()}


def test_a_multi_node_run_equals_the_single_node_run(
    cluster: Cluster,
    mongo_uri: str,
    mongo_client: MongoClient,
    canonical_lines: list[str],
    tmp_path: Path,
) -> None:
    dbs = {"single": mongo_client["cluster_single"], "multi": mongo_client["cluster_multi"]}
    for db in dbs.values():
        mongo_client.drop_database(db.name)
    seconds = {}
    with PicsumServer(deterministic=True, latency=0.02) as server:
        urls = write_urls(tmp_path, picsum_lines(server.url, canonical_lines[:LINES]))
        started = time.perf_counter()
        assert run_itm(mongo_uri, dbs["single"].name, urls) == 0
        seconds["single"] = time.perf_counter() - started
        started = time.perf_counter()
        result = run_itm_process(
            mongo_uri, dbs["multi"].name, urls, "--ray-address", cluster.address, "--writers", "3"
        )
        seconds["multi"] = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-2000:]
    single, multi = outcome(dbs["single"]), outcome(dbs["multi"])
    assert len(multi["events"]) == LINES
    assert multi == single
    assert assert_one_writer_per_share(dbs["multi"], 3) == {0, 1, 2}

    tasks = state_tasks(cluster)
    per_node: dict[str, Counter[str]] = {}
    for task in tasks:
        per_node.setdefault(task.node_id or "?", Counter())[task.name] += 1
    print(
        f"\nsingle node {seconds['single']:.1f} s, {len(per_node)} nodes "
        f"{seconds['multi']:.1f} s (driver start included); tasks per node:"
    )
    for node, names in sorted(per_node.items()):
        print(f"  {node[:12]}: {dict(names)}")
    assert len([node for node, names in per_node.items() if names["gray_group"]]) > 1
    assert len([node for node, names in per_node.items() if names["download_chunk"]]) > 1


def test_the_per_host_limit_holds_across_nodes(
    cluster: Cluster, mongo_uri: str, mongo_client: MongoClient, tmp_path: Path
) -> None:
    """Download processes on three nodes, one slot actor, three writers: no host ever sees
    more than 2, and every line is counted once."""
    db = mongo_client["cluster_per_host"]
    mongo_client.drop_database(db.name)
    with HostServer(latency=0.02) as server:
        urls = write_urls(tmp_path, spread_lines(server, 120))
        result = run_itm_process(
            mongo_uri,
            db.name,
            urls,
            "--ray-address",
            cluster.address,
            "--per-host",
            "2",
            "--writers",
            "3",
        )
    assert result.returncode == 0, result.stderr[-2000:]
    check_polite_run(db, server, 120, 2)
    assert "itm: --per-host 2: " in result.stdout  # the slot actor's report
    assert [sum(m[k] for m in db.monitoring.find()) for k in ("success", "error")] == [120, 0]
    assert_one_writer_per_share(db, 3)


def test_bytes_lost_with_their_node_are_downloaded_again_for_md5_and_gray_both(
    mongo_uri: str,
    db: Database,
    tmp_path: Path,
) -> None:
    """Reconstruction forced: the md5 and grayscale of a line are computed, then the node
    holding its bytes and its grayscale dies before anything stored them. Ray would rebuild
    the grayscale by downloading again, a new random photo under the old md5; itm must
    download the line again for both instead.

    The image is large enough (bytes and PNG over 100 KB) to live in the node's object
    store, not inline in the driver. The head has no CPU and the only node that downloads
    and computes is the doomed one; the writer waits for a node that offers ``writer``.
    """
    cluster = head(num_cpus=0)
    try:
        doomed = cluster.add_node(num_cpus=1, resources={"download": 1})
        cluster.wait_for_nodes()
        with PicsumServer() as server:  # a new photo for every request
            urls = write_urls(tmp_path, [f"{server.url}/2000/2000", f"{server.url}/error/100"])
            driver = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "tests.support.cluster_driver",
                    cluster.address,
                    mongo_uri,
                    db.name,
                    str(urls),
                ],
                cwd=ROOT,
                env=os.environ | LOCAL_ENV,
                stdout=subprocess.PIPE,
                text=True,
            )
            try:
                # Both lines' md5 and gray ran on the doomed node; nothing is stored yet.
                wait_until(
                    lambda: len(state_tasks(cluster, ("state", "=", "FINISHED"))) == 5,
                    "the download, 2 md5 and 2 gray finished",
                )
                assert db.events.count_documents({}) == 0
                assert len(server.served) == 1
                cluster.remove_node(doomed)
                cluster.add_node(num_cpus=1, resources={"download": 1, "writer": 1})
                out, _ = driver.communicate(timeout=120)
            finally:
                driver.kill()
    finally:
        cluster.shutdown()
    assert driver.returncode == 0
    assert json.loads(out.splitlines()[-1]) == {"success": 1, "error": 1}

    assert len(server.served) == 2  # the photo line was downloaded again, a new photo
    (image,) = db.images.find()
    source = server.served[image["md5"]]
    assert md5_hex(source) == image["md5"]
    settings = Settings()
    assert (
        bytes(image["gray"]) == grayscale_png(source, settings.max_pixels, settings.png_level).png
    )  # made from the same bytes
    events = sorted((e["line"], e["status"], e["reason"], e["md5"]) for e in db.events.find())
    assert events == [(1, "success", None, image["md5"]), (2, "error", "http_404", None)]
    assert [sum(m[k] for m in db.monitoring.find()) for k in ("success", "error")] == [1, 1]
