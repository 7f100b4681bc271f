#!/opt/mongo/bin/python
"""A stand-in for `mongosh`, enough for healthchecks and docker-entrypoint-initdb.d.

    mongosh [--quiet] [--norc] [--host H] [--port P] [--username U] [--password P]
            [--authenticationDatabase DB] [DB] (--eval JS | FILE.js)

The JavaScript runs in QuickJS with the shell's usual names: ``db`` (``getName``,
``getSiblingDB``, ``runCommand``, ``adminCommand``, ``createUser``), ``quit(code)``,
``print``, ``process.env``. Commands go to the server through pymongo; a command
that fails throws, as in mongosh.
"""

import argparse
import json
import os
import sys
from pathlib import Path

import quickjs
from bson import json_util
from pymongo import MongoClient
from pymongo.errors import PyMongoError

PRELUDE = """
const process = {env: JSON.parse(__env)};
var __exit = 0;
function __command(name, doc) {
    const reply = JSON.parse(__py_command(name, JSON.stringify(doc)));
    if (reply.__error) throw new Error(reply.__error);
    return reply;
}
function __database(name) {
    return {
        getName() { return name; },
        getSiblingDB(other) { return __database(other); },
        runCommand(doc) { return __command(name, doc); },
        adminCommand(doc) { return __command("admin", doc); },
        createUser(spec) {
            const {user, ...rest} = spec;
            return __command(name, Object.assign({createUser: user}, rest));
        },
    };
}
const db = __database(__db);
function quit(code) { throw {__quit: code || 0}; }
function print(...values) { __py_print(values.map(String).join(" ")); }
"""


def main() -> int:
    parser = argparse.ArgumentParser(prog="mongosh")
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--norc", action="store_true")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=27017)
    parser.add_argument("--username", "-u")
    parser.add_argument("--password", "-p")
    parser.add_argument("--authenticationDatabase", default="admin")
    parser.add_argument("--eval")
    parser.add_argument("target", nargs="*", help="[database] [file.js]")
    args = parser.parse_args()
    files = [t for t in args.target if t.endswith(".js")]
    names = [t for t in args.target if not t.endswith(".js")]
    source = args.eval if args.eval is not None else "\n".join(Path(f).read_text() for f in files)

    credentials = {}
    if args.username:
        credentials = {
            "username": args.username,
            "password": args.password,
            "authSource": args.authenticationDatabase,
        }
    client = MongoClient(
        args.host, args.port, directConnection=True, serverSelectionTimeoutMS=5000, **credentials
    )
    try:
        client.admin.command("ping")  # connects and authenticates, as mongosh does first
    except PyMongoError as exc:
        print(f"mongosh: {exc}", file=sys.stderr)
        return 1

    def command(name: str, doc: str) -> str:
        try:
            reply = client[name].command(json.loads(doc))
        except PyMongoError as exc:
            return json.dumps({"__error": str(exc)})
        return json_util.dumps(reply)

    context = quickjs.Context()
    context.add_callable("__py_command", command)
    context.add_callable("__py_print", print)
    context.set("__env", json.dumps(dict(os.environ)))
    context.set("__db", names[0] if names else "test")
    context.eval(PRELUDE)
    try:
        context.eval(
            "try {\n" + source + "\n} catch (e) {\n"
            "  if (e && e.__quit !== undefined) { __exit = e.__quit; } else { throw e; }\n}"
        )
    except quickjs.JSException as exc:
        print(f"mongosh: {exc}", file=sys.stderr)
        return 1
    finally:
        client.close()
    return int(context.get("__exit"))


if __name__ == "__main__":
    sys.exit(main())
