"""The WAL archive's checks as plain outcomes (no Dagster): per hour, RPO, the slot's retained WAL, base
backups' WAL continuity."""

from __future__ import annotations

import subprocess
import tempfile
import time
from datetime import datetime
from pathlib import Path

from cb_backups.core.catalog import checksum_problems, utcnow
from cb_backups.core.errors import CbBackupsError
from cb_backups.core.model import Artifact, Outcome
from cb_backups.stores.pitr import basebackup
from cb_backups.stores.pitr.archive import Segment, WalArchive, gaps
from cb_backups.stores.pitr.server import Server, first_line
from cb_backups.stores.pitr.wal import parse_lsn, segment_of

WAL_CHECKS = {
    "segments_present": "Every WAL segment from the hour's first to its last is archived and recorded.",
    "sha256": "Every archived segment's sha256 and size equal its record.",
    "continuity": "No LSN gap from the previous hour's segments (and the timeline's history file is archived).",
    "waldump": "pg_waldump reads every record of every segment of the hour.",
}
RPO_CHECK = "rpo"
RETAINED_CHECK = "slot_retained_wal"
BASE_CHECKS = {
    "verifybackup": "sha256 equals the manifest and pg_verifybackup passes on the extracted backup.",
    "wal_continuous": "The archived WAL is continuous from the base backup's start LSN to the newest segment.",
}


def in_window(archive: WalArchive, start: datetime, end: datetime) -> list[Segment]:
    return [s for s in archive.segments() if start <= s.completed < end]


def hour_outcomes(server: Server, archive: WalArchive, start: datetime, end: datetime) -> list[Outcome]:
    mine = in_window(archive, start, end)
    everything = archive.segments()
    names = [s.name for s in mine]
    if not mine:
        return [Outcome(name, True, "no segment completed in this hour (an idle server)", {"segments": 0})
                for name in WAL_CHECKS]
    missing = [n for tli in sorted({s.timeline for s in mine})
               for n in gaps(everything, tli, min(s.segno for s in mine if s.timeline == tli),
                             max(s.segno for s in mine if s.timeline == tli))]
    sums = [p for s in mine for p in archive.problems(s)]
    breaks = []
    for tli in sorted({s.timeline for s in mine}):
        first = min(s.segno for s in mine if s.timeline == tli)
        older = [s for s in everything if s.timeline == tli and s.segno < first]
        if older and older[-1].segno != first - 1:
            breaks += gaps(everything, tli, older[-1].segno + 1, first - 1)
        if tli > 1 and not any(h.timeline == tli for h in archive.histories()):
            breaks.append(f"{tli:08X}.history (timeline {tli}'s history file)")
    dump = _waldump(server, archive, mine) if not sums else ["not run: sha256 mismatch"]
    meta = {"segments": len(mine), "first": names[0], "last": names[-1]}
    return [
        Outcome("segments_present", not missing, f"missing: {', '.join(missing)}" if missing else
                f"{len(mine)} segment(s) {names[0]} .. {names[-1]}", meta),
        Outcome("sha256", not sums, "; ".join(sums) or "every sha256 equals its record", meta),
        Outcome("continuity", not breaks, f"gap before this hour: {', '.join(breaks)}" if breaks else
                "continuous from the previous segments", meta),
        Outcome("waldump", not dump, "; ".join(dump) or "pg_waldump read every record", meta),
    ]


def _waldump(server: Server, archive: WalArchive, segments: list[Segment]) -> list[str]:
    problems = []
    with tempfile.TemporaryDirectory(prefix=".waldump-", dir=archive.root) as tmp:
        for segment in segments:
            try:
                path = archive.extract(segment, Path(tmp))
            except ValueError as exc:
                problems.append(str(exc))
                continue
            done = subprocess.run([server.tool("pg_waldump"), "-q", str(path)], capture_output=True, text=True)
            path.unlink()
            if done.returncode != 0:
                problems.append(f"{segment.name}: {(done.stderr or done.stdout).strip()[-200:]}")
    return problems


def rpo_outcome(server: Server, archive: WalArchive, now: datetime | None = None) -> Outcome:
    """Age of the newest received WAL: 0 while the receiver streams and is caught up; else since it last did."""
    now = now or utcnow()
    target = server.pitr.rpo_seconds
    slot = server.pitr.slot
    try:
        with server.connect() as conn:
            row = conn.execute(
                "SELECT s.active, pg_wal_lsn_diff(pg_current_wal_lsn(), r.flush_lsn)::bigint, "
                "extract(epoch FROM r.flush_lag)::float8 FROM pg_replication_slots s "
                "LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid WHERE s.slot_name = %s", (slot,)).fetchone()
    except CbBackupsError as exc:
        return Outcome(RPO_CHECK, False, f"cannot ask the server: {exc}", {"rpo_target_seconds": target})
    if row is None:
        return Outcome(RPO_CHECK, False, f"replication slot {slot!r} does not exist: `cb-backups wal-receive` has "
                                         "never run against this server", {"rpo_target_seconds": target})
    active, behind, lag = row
    if active and behind is not None:
        age = 0.0 if behind <= 0 else float(lag or 0.0)
        state = f"receiver streaming, {behind} bytes behind"
    else:
        seen = [p.stat().st_mtime for p in (archive.heartbeat, archive.partial()) if p is not None and p.exists()]
        newest = archive.segments()[-1].completed.timestamp() if archive.segments() else None
        last = max([*seen, *([newest] if newest else [])], default=None)
        age = now.timestamp() - last if last else float("inf")
        state = "receiver NOT connected to the slot"
    ok = age <= target
    return Outcome(RPO_CHECK, ok, f"newest WAL {age:.1f}s old (target {target:g}s): {state}",
                   {"rpo_seconds": age if age != float("inf") else -1.0, "rpo_target_seconds": target})


def retained_outcome(server: Server) -> Outcome:
    limit = server.pitr.max_retained_mb * 2**20
    try:
        with server.connect() as conn:
            row = conn.execute("SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint, active "
                               "FROM pg_replication_slots WHERE slot_name = %s", (server.pitr.slot,)).fetchone()
    except CbBackupsError as exc:
        return Outcome(RETAINED_CHECK, False, first_line(exc))
    if row is None:
        return Outcome(RETAINED_CHECK, True, f"no slot {server.pitr.slot!r}: nothing retained")
    retained = int(row[0] or 0)
    ok = retained <= limit
    return Outcome(RETAINED_CHECK, ok, f"the slot holds {retained / 2**20:.1f} MiB of WAL on the server (warning above "
                   f"{server.pitr.max_retained_mb} MiB){'' if row[1] else '; the receiver is NOT connected'}",
                   {"retained_bytes": retained, "limit_bytes": limit})


def base_outcomes(server: Server, archive: WalArchive, artifact: Artifact | None, work_root: Path,
                  wait: float | None = None) -> tuple[list[Outcome], bool]:
    if artifact is None:
        return [Outcome(n, False, "no base backup for this slot") for n in BASE_CHECKS], False
    problems = checksum_problems(artifact)
    if not problems:
        with archive.catalog.plaintext(artifact) as plain:  # an encrypted base backup: decrypted, checked
            problems = basebackup.verify(server, plain, work_root).problems
    markers = artifact.manifest.markers
    tli = int(markers["timeline"])
    seg_size = int(markers.get("wal_segment_size", archive.seg_size))
    first = segment_of(parse_lsn(markers["start_lsn"]), seg_size)
    # pg_basebackup's stop closes the segment of its stop LSN; the receiver records it a moment later (a
    # poll, zstd, fsync): wait for it up to the RPO instead of failing a check that runs right after the backup.
    last = segment_of(parse_lsn(markers["stop_lsn"]), seg_size)
    _wait_for(archive, tli, last, server.pitr.rpo_seconds if wait is None else wait)
    have = [s for s in archive.segments() if s.timeline == tli and s.segno >= first]
    missing = gaps(archive.segments(), tli, first) if have else []
    verified = "pg_verifybackup: backup successfully verified"
    return [Outcome("verifybackup", not problems, "; ".join(problems) or verified),
            Outcome("wal_continuous", bool(have) and not missing,
                    f"missing: {', '.join(missing)}" if missing else
                    (f"{len(have)} segment(s) from {have[0].name}" if have else
                     "no archived WAL from the start LSN yet: is `cb-backups wal-receive` running?"),
                    {"segments": len(have)})], not problems


def _wait_for(archive: WalArchive, timeline: int, segno: int, timeout: float) -> bool:
    """Poll the archive (written by the receiver, another process) until segment `segno` is recorded."""
    deadline = time.monotonic() + timeout
    while not any(s.timeline == timeline and s.segno == segno for s in archive.segments()):
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.25)
    return True
