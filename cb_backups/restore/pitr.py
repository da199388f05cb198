"""PostgreSQL point-in-time restore: resolve -> verify -> recover into a new data directory -> start ->
promote -> check -> (in place) swap, the old data directory kept as the safety copy.

Nothing of the live server is touched before the base backup and every WAL segment needed were checked
(sha256 of the stored and the decompressed file) and the recovered server has started, promoted and
answered. Scratch leaves that server running on its loopback port and says how to reach and stop it.

Off-site (`source="offsite"`, or any segment missing locally while S3 is configured): the plan reads only
the small off-site records (base backup manifest, segment records); the execution downloads the base
backup into a private download folder and the missing segments into the local archive, each verified
against its record while streaming, before anything else happens.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cb_backups.config.pitr import PitrSettings, pitr_from_config
from cb_backups.config.settings import Settings
from cb_backups.core.catalog import MANIFEST, Catalog, checksum_problems, iso, utcnow
from cb_backups.core.errors import CbBackupsError, ConfigError, RestoreFailed, RestoreRefused
from cb_backups.core.fileio import sha256_file
from cb_backups.core.model import Artifact, Manifest, Progress, no_progress
from cb_backups.core.specs import spec_for
from cb_backups.offsite import s3 as offsite
from cb_backups.offsite import versions as offsite_versions
from cb_backups.offsite import wal as offsite_wal
from cb_backups.stores.pitr import recovery
from cb_backups.stores.pitr.archive import Segment, WalArchive
from cb_backups.stores.pitr.basebackup import BASE_STORE
from cb_backups.stores.pitr.server import STORE, Server
from cb_backups.stores.pitr.wal import HISTORY, format_lsn, parse_lsn, parse_segment, segment_name, segment_of

LATEST = "latest"
SCRATCH_FOLDER = "cb-pitr"


def pitr_settings(settings: Settings) -> PitrSettings:
    return pitr_from_config(settings.raw, os.environ)


def parse_target(to_time: str | None, to_lsn: str | None) -> recovery.RecoveryTarget:
    """`--to-time` (ISO 8601 with a zone, or `latest`) or `--to-lsn`; exactly one."""
    if to_time and to_lsn:
        raise ConfigError("recovery target", f"--to-time {to_time} and --to-lsn {to_lsn}", "one of them, not both")
    if to_lsn:
        return recovery.RecoveryTarget("lsn", lsn=format_lsn(parse_lsn(to_lsn, "--to-lsn")))
    if not to_time or to_time.strip().lower() == LATEST:
        return recovery.RecoveryTarget(LATEST)
    try:
        when = datetime.fromisoformat(to_time.strip().replace("Z", "+00:00"))
    except ValueError:
        when = None
    if when is None or when.tzinfo is None:
        raise ConfigError("--to-time", to_time, "an ISO 8601 time with a zone, e.g. 2026-12-01T07:42:10Z, or latest")
    if when > utcnow():
        raise ConfigError("--to-time", to_time, f"a time in the past (now is {iso(utcnow())})")
    return recovery.RecoveryTarget("time", time=when.astimezone(UTC))


@dataclass
class PitrPlan:
    target: recovery.RecoveryTarget
    mode: str  # "scratch" | "in_place"
    base: Artifact
    segments: list[Segment]
    partial: Path | None
    server: Server = field(repr=False)
    archive: WalArchive = field(repr=False)
    work_root: Path = field(repr=False)
    skipped: list[str] = field(default_factory=list)
    fetch: list[Segment] = field(default_factory=list)  # needed segments only off-site: downloaded first
    base_offsite: bool = False  # the base backup is downloaded from off-site first
    s3: offsite.S3Target | None = field(default=None, repr=False)

    def describe(self) -> list[str]:
        m = self.base.manifest.markers
        where = ("IN PLACE (the live data directory is swapped; the old one is kept)" if self.mode == "in_place"
                 else "into a SCRATCH server on a free port")
        lines = [f"point-in-time restore of postgres to {self.target.describe()} {where}",
                 f"  1. base backup {self.base.partition_key} (start {m.get('start_lsn')}, stop {m.get('stop_lsn')}, "
                 f"finished {self.base.manifest.captured_at})"
                 + (" downloaded from off-site" if self.base_offsite else "") + ": sha256 checked",
                 f"  2. {len(self.segments)} archived WAL segment(s) "
                 + (f"{self.segments[0].name} .. {self.segments[-1].name}" if self.segments else "")
                 + (f" ({len(self.fetch)} downloaded from off-site first, verified)" if self.fetch else "")
                 + (f" + the segment being received ({self.partial.name})" if self.partial else "")
                 + ": continuity and sha256 checked, decompressed beside the new data directory",
                 "  3. recover into a new data directory, start it on a loopback port, wait until it promoted, "
                 "check it answers and read the recovery point reached"]
        if self.mode == "in_place":
            lines.append("  4. stop the live server, rename its data directory to <data_dir>.replaced-<stamp> (the "
                         "safety copy), rename the recovered one into place, start, check")
        return lines


def plan_pitr(settings: Settings, to_time: str | None = None, to_lsn: str | None = None, mode: str = "scratch",
              source: str = "local") -> PitrPlan:
    """Choose the newest verified base backup before the target and the WAL after it; refuse on any gap.

    `source="offsite"` takes the base backup from S3; either way a needed segment missing locally is taken
    from S3 when off-site copies are configured."""
    target = parse_target(to_time, to_lsn)
    if mode not in ("scratch", "in_place"):
        raise ConfigError("restore target", mode, "scratch, in_place")
    if source not in ("local", "offsite"):
        raise ConfigError("--from", source, "local, offsite")
    if source == "offsite" and not settings.s3.enabled:
        raise ConfigError("--from", source, "local, or offsite with CB_S3_BUCKET (the 's3:' section) configured")
    s3 = offsite.S3Target(settings.s3) if settings.s3.enabled else None
    pitr = pitr_settings(settings)
    if mode == "in_place" and not pitr.data_dir:
        raise ConfigError("postgres_wal.data_dir (CB_PG_DATA_DIR)", None,
                          "the live data directory, for an in-place point-in-time restore")
    server = Server(settings.store(STORE), pitr)
    catalog = settings.catalog()
    archive = WalArchive(catalog)
    skipped: list[str] = []
    base = None
    for candidate in reversed(catalog.list(BASE_STORE)) if source == "local" else []:
        record = catalog.verification_of(candidate)
        if record is None or not record.ok:
            why = 'never verified' if record is None else 'failed verification'
            skipped.append(f"{candidate.partition_key}: {why}")
            continue
        if _before(candidate, target):
            base = candidate
            break
    base_offsite = False
    if base is None and s3 is not None:  # only copies that passed their checks were copied off-site
        base = _offsite_base(catalog, s3, target, skipped, strict=source == "offsite")
        base_offsite = base is not None
    if base is None:
        raise RestoreRefused(STORE, f"no verified base backup finished before {target.describe()} "
                                    f"({', '.join(skipped) or 'none in ' + str(catalog.store_dir(BASE_STORE))})")
    markers = base.manifest.markers
    seg_size = int(markers.get("wal_segment_size", archive.seg_size))
    archive.seg_size = seg_size
    timeline = int(markers["timeline"])
    first = segment_of(parse_lsn(markers["stop_lsn"]), seg_size)
    remote = _remote_segments(archive, s3, timeline, first, skipped, strict=source == "offsite")
    segments, partial, fetch = _needed(archive, timeline, first, target, seg_size, remote, s3)
    fetch = [*remote_histories(archive, s3, timeline, skipped, strict=source == "offsite"), *fetch]
    # Not under backup_dir by default: the server's system user must reach it, and backup_dir is private.
    work_root = Path(pitr.scratch_dir) if pitr.scratch_dir else Path(tempfile.gettempdir()) / SCRATCH_FOLDER
    if mode == "in_place":
        work_root = Path(pitr.data_dir).parent  # type: ignore[arg-type]  # same filesystem: the swap is a rename
    return PitrPlan(target, mode, base, segments, partial, server, archive, work_root, skipped, fetch, base_offsite,
                    s3)


def _offsite_base(catalog: Catalog, s3: offsite.S3Target, target: recovery.RecoveryTarget, skipped: list[str],
                  strict: bool) -> Artifact | None:
    """The newest off-site base backup finished before the target: its manifest only (downloaded later)."""
    try:
        keys = offsite.list_offsite(BASE_STORE, s3)
        for key in reversed(keys):
            raw = offsite.get_bytes(s3, s3.key(BASE_STORE, key, MANIFEST))
            try:
                manifest = Manifest.from_json(json.loads(raw or b"null"))
            except (ValueError, TypeError, KeyError, AttributeError):
                skipped.append(f"{key} off-site: no readable manifest")
                continue
            candidate = Artifact(catalog.store_dir(BASE_STORE) / key, manifest)
            if manifest.store == BASE_STORE and manifest.partition_key == key and _before(candidate, target):
                return candidate
    except CbBackupsError as exc:
        if strict:
            raise RestoreRefused(STORE, f"off-site base backups: {exc}") from None
        skipped.append(f"off-site base backups not read: {exc}")
    return None


def _remote_segments(archive: WalArchive, s3: offsite.S3Target | None, timeline: int, first: int,
                     skipped: list[str], strict: bool) -> dict[int, str]:
    """segment number -> name of the segments of `timeline` from `first` on that only S3 has (names only)."""
    if s3 is None:
        return {}
    local = {s.segno for s in archive.segments() if s.timeline == timeline and not archive.missing(s)}
    names = _remote_names(s3, skipped, strict)
    found = {}
    for name in names:
        if len(name) == 24 and int(name[:8], 16) == timeline:
            number = parse_segment(name, archive.seg_size)[1]
            if number >= first and number not in local:
                found[number] = name
    return found


def _remote_names(s3: offsite.S3Target, skipped: list[str], strict: bool) -> set[str]:
    """The WAL file names S3 holds; S3 unreadable: refused when `strict`, else noted and none."""
    try:
        return set(offsite_wal.remote_names(s3))
    except CbBackupsError as exc:
        if strict:
            raise RestoreRefused(STORE, f"off-site WAL: {exc}") from None
        skipped.append(f"off-site WAL not read: {exc}")
        return set()


def remote_histories(archive: WalArchive, s3: offsite.S3Target | None, timeline: int, skipped: list[str],
                     strict: bool) -> list[Segment]:
    """The timeline history files up to `timeline` that only S3 holds (their off-site records): a base backup
    on timeline >= 2 cannot be recovered without its timeline's history. Downloaded and verified like segments."""
    if s3 is None or timeline < 2:
        return []
    local = {h.name for h in archive.histories() if not archive.missing(h)}
    names = _remote_names(s3, skipped, strict)
    wanted = sorted(n for n in names if HISTORY.match(n) and 2 <= int(n[:8], 16) <= timeline and n not in local)
    return [_record(archive, s3, name) for name in wanted]


def _before(base: Artifact, target: recovery.RecoveryTarget) -> bool:
    if target.kind == "time":
        assert target.time is not None
        return datetime.fromisoformat(base.manifest.captured_at) <= target.time
    if target.kind == "lsn":
        assert target.lsn is not None
        return parse_lsn(base.manifest.markers["stop_lsn"]) <= parse_lsn(target.lsn)
    return True


def _needed(archive: WalArchive, timeline: int, first: int, target: recovery.RecoveryTarget, seg_size: int,
            remote: dict[int, str] | None = None, s3: offsite.S3Target | None = None
            ) -> tuple[list[Segment], Path | None, list[Segment]]:
    """The contiguous segments from `first` on (the server stops at the target itself), and which of them
    are to be downloaded from off-site (`remote`: number -> name of the segments only S3 holds).

    A missing segment the target may lie beyond is refused, naming it: every record of a segment is older
    than the time it was archived, so a gap after a segment archived later than a time target (or after
    an LSN target's segment) cannot hide WAL before the target; any other gap is refused. (Recovery to a
    time still needs a commit after the target: if none is archived before such a gap, the recovering
    server says so and stops, and nothing of the live server has been touched.)
    """
    remote = remote or {}
    mine = {s.segno: s for s in archive.segments() if s.timeline == timeline}
    newest = max([*mine, *remote], default=first - 1)
    chosen: list[Segment] = []
    fetch: list[Segment] = []
    for number in range(first, newest + 1):
        segment = mine.get(number)
        # Size only: the sha256 is checked in the one read that decompresses it (execute), still before anything
        # of the live server is touched; the plan runs twice (the CLI's, then the run's) and reads nothing big.
        problems = archive.missing(segment) if segment is not None else []
        if (segment is None or problems) and number in remote:
            # Only an LSN target can stop the download early. A time target needs the first commit after
            # it, which may lie in any later segment (a segment archived after the target may still end
            # before it), so every contiguous segment is fetched and the server stops where it must.
            if target.kind == "lsn" and _reached(chosen, target, number, seg_size):
                return chosen, None, fetch
            segment, problems = _record(archive, s3, remote[number]), []
            fetch.append(segment)
        if segment is None:
            if _reached(chosen, target, number, seg_size):
                return chosen, None, fetch
            raise RestoreRefused(STORE, f"WAL segment {segment_name(timeline, number, seg_size)} is missing from the "
                                        f"archive ({archive.segments_dir}{' and off-site' if remote else ''}): the WAL "
                                        f"is not continuous from the base backup to {target.describe()}; nothing was "
                                        "changed")
        if problems:
            raise RestoreRefused(STORE, "; ".join(problems) + "; nothing was changed")
        chosen.append(segment)
    partial = archive.partial()
    if partial is not None and partial.name.startswith(segment_name(timeline, newest + 1, seg_size)):
        return chosen, partial, fetch
    if target.kind == "time" and not _reached(chosen, target, newest + 1, seg_size):
        reached = chosen[-1].completed if chosen else None
        raise RestoreRefused(STORE, f"the archived WAL ends before {target.describe()} (last segment archived "
                                    f"{iso(reached) if reached else 'none'}); is `cb-backups wal-receive` running?")
    return chosen, None, fetch


def _record(archive: WalArchive, s3: offsite.S3Target | None, name: str) -> Segment:
    assert s3 is not None  # `remote` is only filled when S3 is configured
    try:
        return offsite_wal.remote_record(archive, s3, name)
    except CbBackupsError as exc:
        raise RestoreRefused(STORE, f"{exc}; nothing was changed") from None


def _reached(chosen: list[Segment], target: recovery.RecoveryTarget, missing: int, seg_size: int) -> bool:
    if target.kind == "time":
        assert target.time is not None
        return bool(chosen) and chosen[-1].completed > target.time
    if target.kind == "lsn":
        assert target.lsn is not None
        return segment_of(parse_lsn(target.lsn), seg_size) < missing
    return False


@dataclass
class PitrResult:
    mode: str
    target: str
    base_backup: str
    segments: int
    point: dict[str, Any]
    counts: dict[str, int]
    data_dir: str
    rto_seconds: float
    rto_target_seconds: float
    connection: str = ""
    stop_command: str = ""
    safety_copy: str = ""
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def summary(self) -> str:
        where = f"scratch server {self.connection}" if self.mode == "scratch" else f"in place ({self.data_dir})"
        return (f"postgres recovered to {self.target} into {where}: reached LSN {self.point.get('lsn')}, last "
                f"transaction {self.point.get('last_transaction_at')}, timeline {self.point.get('timeline')}")


def execute_pitr(plan: PitrPlan, progress: Progress = no_progress) -> PitrResult:
    with contextlib.ExitStack() as stack:
        return _execute(plan, progress, stack, time.monotonic())


def _download(plan: PitrPlan, progress: Progress, stack: contextlib.ExitStack) -> Artifact:
    """The off-site base backup and segments, each verified while streaming; RestoreRefused naming what failed."""
    assert plan.s3 is not None
    base = plan.base
    catalog = plan.archive.catalog
    if plan.base_offsite:
        key = base.partition_key
        folder = stack.enter_context(catalog.download_dir(BASE_STORE, key))
        progress(f"downloading the off-site copy of base backup {key}", 0, None)
        versions = offsite_versions.load(catalog, BASE_STORE, key)  # recorded at upload, if this disk has them
        try:
            offsite.download_artifact(BASE_STORE, key, plan.s3, folder, progress, versions)
        except CbBackupsError as exc:
            raise RestoreRefused(STORE, f"off-site base backup {key}: {exc}; nothing was changed") from None
        loaded = Catalog(folder.parent, catalog.encryption).load(folder)
        stored = offsite.manifest_head(plan.s3, BASE_STORE, key, versions)
        recorded = ((stored or {}).get("Metadata") or {}).get(offsite.SHA256_METADATA)
        if loaded is None or (recorded and recorded != sha256_file(folder / MANIFEST)[0]):
            raise RestoreRefused(STORE, f"off-site base backup {key}: its {MANIFEST} differs from the one uploaded; "
                                        "nothing was changed")
        base = loaded
    for number, segment in enumerate(plan.fetch, 1):
        progress(f"downloading WAL segment {segment.name} from off-site", number, len(plan.fetch))
        try:
            offsite_wal.fetch(plan.archive, plan.s3, segment)
        except CbBackupsError as exc:
            raise RestoreRefused(STORE, f"{exc}; nothing was changed") from None
    return base


def _execute(plan: PitrPlan, progress: Progress, stack: contextlib.ExitStack, started: float) -> PitrResult:
    if plan.base_offsite or plan.fetch:
        plan.base = _download(plan, progress, stack)
    problems = checksum_problems(plan.base)
    if problems:
        raise RestoreRefused(STORE, f"base backup {plan.base.partition_key}: {'; '.join(problems)}")
    stamp = utcnow().strftime("%Y%m%dT%H%M%SZ")
    # Always a new folder (never one of an earlier recovery, whose settings would still be in it).
    if plan.mode == "in_place":
        live = Path(plan.server.pitr.data_dir)  # type: ignore[arg-type]
        workdir = Path(tempfile.mkdtemp(prefix=f"{live.name}.pitr-{stamp}-", dir=live.parent))
    else:
        plan.work_root.mkdir(parents=True, exist_ok=True)
        plan.work_root.chmod(0o711)  # the server's system user passes through; each recovery's folder is 0700
        workdir = Path(tempfile.mkdtemp(prefix=f"{stamp}-", dir=plan.work_root))
    progress(f"extracting base backup {plan.base.partition_key} and {len(plan.segments)} WAL segment(s)", 0, None)
    try:
        with plan.archive.catalog.plaintext(plan.base) as base:  # an encrypted base backup: decrypted, checked
            data, wal = recovery.prepare(plan.server, base, plan.archive, plan.segments, plan.partial, plan.target,
                                         workdir)
    except (ValueError, OSError) as exc:
        shutil.rmtree(workdir, ignore_errors=True)  # a half-extracted data directory is of no use to anyone
        raise RestoreRefused(STORE, f"the recovery could not be prepared: {exc}; nothing was changed") from None
    progress("starting the recovered server", 0, None)
    recovered = recovery.start(plan.server, data, wal, workdir)
    counts = _counts(plan.server, "127.0.0.1", recovered.port)
    result = PitrResult(plan.mode, plan.target.describe(), plan.base.partition_key, len(plan.segments),
                        recovered.point, counts, str(data), 0.0, spec_for(STORE).rto.total_seconds(),
                        notes=list(plan.skipped))
    if plan.partial is not None:
        result.notes.append(f"used the segment still being received ({plan.partial.name}; no checksum recorded yet)")
    if plan.mode == "scratch":
        result.connection = (f"postgresql://{plan.server.pg.user}@127.0.0.1:{recovered.port}/{plan.server.pg.dbname}"
                             " (password: the live server's)")
        result.stop_command = f"pg_ctl -D {data} stop"
    else:
        result.safety_copy = _swap(plan, recovered, live, stamp)
        result.data_dir = str(live)
        result.counts = _counts(plan.server, None, None)
    result.rto_seconds = round(time.monotonic() - started, 3)
    return result


def _swap(plan: PitrPlan, recovered: recovery.Recovered, live: Path, stamp: str) -> str:
    """Stop the recovered and the live server; the recovered directory takes the live one's name."""
    server, pitr = plan.server, plan.server.pitr
    recovery.stop(server, recovered.data_dir)
    recovery.strip_recovery_settings(recovered.data_dir)
    aside = live.with_name(f"{live.name}.replaced-{stamp}")
    _run_or_pg_ctl(server, pitr.stop_command, live, "stop")
    os.rename(live, aside)
    os.rename(recovered.data_dir, live)
    try:
        _run_or_pg_ctl(server, pitr.start_command, live, "start")
        with server.connect() as conn:
            conn.execute("SELECT 1")
    except Exception as exc:
        # The recovered directory did not come up as the live one: put the old one back and start it.
        recovery.stop(server, live) if (live / "postmaster.pid").exists() else None
        os.rename(live, recovered.data_dir)
        os.rename(aside, live)
        _run_or_pg_ctl(server, pitr.start_command, live, "start")
        raise RestoreFailed(STORE, f"the recovered data directory did not start in place ({exc}); the old one is "
                                   f"back at {live} and started again; the recovered one is "
                                   f"{recovered.data_dir}") from None
    return str(aside)


def _run_or_pg_ctl(server: Server, command: tuple[str, ...], data: Path, action: str) -> None:
    import subprocess

    if command:
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=600)
        out = done.stderr or done.stdout
    else:
        log = data.parent / f"{data.name}-pitr-{action}.log"
        done = server.pg_ctl(data, action, log=log if action == "start" else None, options=server.pitr.server_options)
        out = done.stderr or done.stdout
    if done.returncode != 0:
        raise RestoreFailed(STORE, f"{action} of the server on {data} failed: {out.strip()[-300:]}")


def _counts(server: Server, host: str | None, port: int | None) -> dict[str, int]:
    from psycopg import sql

    found = {}
    with server.connect(host, port) as conn:
        present = {r[0] for r in conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'").fetchall()}
        for table in server.pg.count_tables:
            if table in present:
                found[table] = int(conn.execute(sql.SQL("SELECT count(*) FROM {}").format(
                    sql.Identifier(table))).fetchone()[0])  # type: ignore[index]
    return found


__all__ = ["BASE_STORE", "PitrPlan", "PitrResult", "execute_pitr", "parse_target", "plan_pitr"]
