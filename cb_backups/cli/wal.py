"""`cb-backups wal-receive`: the continuous WAL archive of PostgreSQL (a long-running service).

Runs pg_receivewal on the configured physical replication slot (created if missing) into
`<backup_dir>/postgres_wal/`, recording every completed segment; SIGTERM or Ctrl-C stops it cleanly
(the segment in progress stays in the spool and is resumed on the next start). A server without
wal_level >= replica, replication permission or a free WAL sender is one line and exit 1.
"""

from __future__ import annotations

import argparse
import signal
from types import FrameType

from rich.markup import escape

from cb_backups.cli.args import Subcommands
from cb_backups.cli.output import console


def register(sub: Subcommands) -> None:
    receive = sub.add_parser(
        "wal-receive", help="archive PostgreSQL's WAL continuously (point-in-time recovery; runs until stopped)",
        description="Stream WAL with pg_receivewal from a physical replication slot into <backup_dir>/postgres_wal/, "
                    "compressing, fsyncing, hashing and recording every completed segment.")
    receive.add_argument("--check", action="store_true",
                         help="only check that the server allows it (wal_level, REPLICATION, a free WAL sender) "
                              "and create the slot; then exit")
    receive.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cb_backups.config.settings import load_settings
    from cb_backups.restore.pitr import pitr_settings
    from cb_backups.stores.pitr.archive import WalArchive
    from cb_backups.stores.pitr.receiver import Receiver
    from cb_backups.stores.pitr.server import STORE, Server

    settings = load_settings()
    pitr = pitr_settings(settings)
    server = Server(settings.store(STORE), pitr)
    receiver = Receiver(server, WalArchive(settings.catalog(), level=pitr.compression_level),
                        log=lambda line: console.print(escape(line)))
    if args.check:
        facts = receiver.start()
        console.print(f"ok: wal_level={facts.wal_level}, timeline {facts.timeline}, slot {pitr.slot!r} ready, "
                      f"archive {receiver.archive.root}")
        return 0

    def stop(signum: int, frame: FrameType | None) -> None:
        receiver.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    console.print(f"receiving WAL from {settings.store(STORE).host}:{settings.store(STORE).port} (slot {pitr.slot!r}) "
                  f"into {receiver.archive.root}")
    return receiver.run()
