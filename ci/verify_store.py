"""What a run stored, checked from inside the itm image against the expectation of
``imageserver.py expect`` (ci/container-check.sh pipes this file to ``python -``).

    python - EXPECT_JSON [--read-only]     # MongoDB: ITM_MONGO_URI, database ITM_DB

Checks the images (md5 set, grayscale PNG of the stored size), the events (one per
line, errors by reason) and the per-minute counters. With --read-only, also that the
user of ITM_MONGO_URI cannot write.
"""

import io
import json
import os
import sys
from collections import Counter

from PIL import Image
from pymongo import MongoClient
from pymongo.errors import OperationFailure

expect = json.loads(sys.argv[1])
# As long as the stack's own first checks wait: a loaded machine's MongoDB (or its name
# server) can take more than 10 s to answer a new client, as seen once in CI.
db = MongoClient(os.environ["ITM_MONGO_URI"], serverSelectionTimeoutMS=60_000)[
    os.environ.get("ITM_DB", "itm")
]

images = list(db.images.find())
assert sorted(doc["md5"] for doc in images) == expect["images"], [d["md5"] for d in images]
for doc in images:
    gray = Image.open(io.BytesIO(doc["gray"]))
    assert gray.mode == "L" and gray.size == (doc["width"], doc["height"]), doc["md5"]

events = list(db.events.find())
assert len(events) == expect["lines"] == len({e["line"] for e in events}), len(events)
statuses = Counter(e["status"] for e in events)
assert statuses == {"success": expect["success"], "error": len(expect["reasons"])}, statuses
reasons = sorted(e["reason"] for e in events if e["status"] == "error")
assert reasons == expect["reasons"], reasons

minutes = list(db.monitoring.find())
counted = (sum(m["success"] for m in minutes), sum(m["error"] for m in minutes))
assert counted == (expect["success"], len(expect["reasons"])), counted

if "--read-only" in sys.argv:
    try:
        db.images.insert_one({"md5": "0" * 32})
    except OperationFailure as exc:
        assert exc.code == 13, exc.details  # Unauthorized
    else:
        raise AssertionError("the read-only user could write")

print(
    f"stored: {len(images)} images {sorted(doc['md5'] for doc in images)}; "
    f"{len(events)} events: {dict(statuses)}, errors {reasons}; counters {counted}"
    + ("; writes refused" if "--read-only" in sys.argv else "")
)
