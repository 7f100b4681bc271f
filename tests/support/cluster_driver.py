"""A job's driver on a Ray cluster, whose writer waits for a node that offers ``writer``.

    python -m tests.support.cluster_driver ADDRESS MONGO_URI DB URLS

Downloads run on the nodes that offer ``download`` (``--download-resource``), and each
line is a group of its own (its own md5 and gray tasks). Until
a node offers ``writer`` the writer does not exist, so its calls wait at the driver
with their arguments unread: a test can change the cluster after the tasks that made
a group's md5 and grayscale ran, before anything stored them. Prints the outcomes.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from itm.config import Settings
from itm.job.lines import read_lines
from itm.job.pipeline import run_pipeline
from itm.job.ray_runtime import init_ray
from itm.job.writer import WriterActor


def main(address: str, mongo_uri: str, db: str, urls: str) -> None:
    init_ray(address)
    settings = Settings(
        urls=Path(urls),
        mongo_uri=mongo_uri,
        db=db,
        batch_size=1,  # a group a line
        download_resource="download",
        per_host=0,  # no token actor to lose
        allow_private_addresses=True,
    )  # the test's server is on loopback
    writer = WriterActor.options(resources={"writer": 1}).remote(mongo_uri, db)
    counts = run_pipeline(read_lines(settings.urls, ()), [writer], "cluster", settings)
    print(json.dumps({"success": counts.success, "error": counts.error}))


if __name__ == "__main__":
    main(*sys.argv[1:])
