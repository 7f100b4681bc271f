#!/bin/bash
# The users of itm, each with only what it needs on the itm database (ITM_DB):
#   itm-job  readWrite  the Ray nodes: the job's driver, its tasks, the writer actor
#   itm-api  read       the API
# The official mongo image runs this once, on the first start of an empty volume
# (docker-entrypoint-initdb.d), after it created the root user, against a
# temporary server on 127.0.0.1:27017. The passwords come from the container's
# environment (docker-compose.yml passes them from .env), read by mongosh itself.
set -euo pipefail
mongosh --quiet --norc --host 127.0.0.1 --port 27017 \
    --username "$MONGO_INITDB_ROOT_USERNAME" --password "$MONGO_INITDB_ROOT_PASSWORD" \
    --authenticationDatabase admin admin --eval '
const itm = process.env.ITM_DB;
db.createUser({user: "itm-job", pwd: process.env.ITM_JOB_MONGO_PASSWORD,
               roles: [{role: "readWrite", db: itm}]});
db.createUser({user: "itm-api", pwd: process.env.ITM_API_MONGO_PASSWORD,
               roles: [{role: "read", db: itm}]});
print("itm: created the users itm-job (readWrite) and itm-api (read) on " + itm);
'
