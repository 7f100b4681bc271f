"""Multi-node for real: a head and two worker nodes on this machine, the job joining them."""

from __future__ import annotations

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

from itm.job.ray_runtime import LOCAL_ENV
from tests.support.jobs import ROOT, run_itm, write_urls
from tests.support.servers import PicsumServer, picsum_lines

pytestmark = pytest.mark.ray

LINES = 300


@pytest.fixture(scope="module")
def cluster(ray_local: None) -> Iterator[Cluster]:
    """Three Ray nodes (one CPU each) on loopback, apart from the session's own Ray."""
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": True, "dashboard_host": "127.0.0.1",
        "dashboard_port": None,
    })
    for _ in range(2):
        cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    cluster.shutdown()


def outcome(db: Database) -> dict[str, list]:
    """What a run leaves in the database, without times, ids or run ids.

    Which of two lines with the same image is stored first (the other one is its
    duplicate) depends on which download ends first, on one node as on several:
    only the number of duplicates per image is compared.
    """
    duplicates = Counter(e["md5"] for e in db.events.find({"duplicate": True}))
    return {
        "events": sorted((e["line"], e["status"], e["reason"], e["md5"])
                         for e in db.events.find()),
        "duplicates": sorted(duplicates.items()),
        "images": sorted((i["md5"], i["width"], i["height"], bytes(i["gray"]))
                         for i in db.images.find()),
        "counters": [sum(m[k] for m in db.monitoring.find()) for k in ("success", "error")],
    }


def test_a_multi_node_run_equals_the_single_node_run(
    cluster: Cluster, mongo_uri: str, mongo_client: MongoClient, canonical_lines: list[str],
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
        result = subprocess.run(
            [sys.executable, "-m", "itm.run", "--urls", str(urls), "--mongo-uri", mongo_uri,
             "--db", dbs["multi"].name, "--no-serve", "--ray-address", cluster.address,
             "--allow-private-addresses"],  # the local picsum is on loopback
            cwd=ROOT, env=os.environ | LOCAL_ENV, capture_output=True, text=True, timeout=300,
        )
        seconds["multi"] = time.perf_counter() - started
    assert result.returncode == 0, result.stderr[-2000:]
    single, multi = outcome(dbs["single"]), outcome(dbs["multi"])
    assert len(multi["events"]) == LINES
    assert multi == single

    tasks = list_tasks(address=f"http://{cluster.webui_url}", limit=10_000,
                       filters=[("type", "=", "NORMAL_TASK")], raise_on_missing_output=False)
    per_node: dict[str, Counter[str]] = {}
    for task in tasks:
        per_node.setdefault(task.node_id or "?", Counter())[task.name] += 1
    print(f"\nsingle node {seconds['single']:.1f} s, {len(per_node)} nodes "
          f"{seconds['multi']:.1f} s (driver start included); tasks per node:")
    for node, names in sorted(per_node.items()):
        print(f"  {node[:12]}: {dict(names)}")
    assert len([node for node, names in per_node.items() if names["gray_batch"]]) > 1
    assert len([node for node, names in per_node.items() if names["download_batch"]]) > 1
