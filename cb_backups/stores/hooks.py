"""Run the quiesce hooks around a backup (config/hooks.py says which), and never miss a post_backup.

`fenced(...)` runs the pre_backup commands, then the backup, then ALWAYS the post_backup commands, also
when the backup fails. Before the pre_backup a marker (`<backup dir>/_hooks/<name>.json`, with this
process's identity) records that a post_backup is owed; it is removed once the post_backup ran. A backup
killed in between leaves the marker: `owed_post_backups` (run before the next fenced backup and by the
dead-run cleanup) runs the post_backup of every marker whose process is gone, so the application's
writers are never left stopped. What ran, how long each took and the fence (first pre_backup start to
last post_backup end) go in the manifest's `options.hooks` and the run log.
"""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

from cb_backups.config.hooks import Hooks, hooks_from_config
from cb_backups.config.settings import Settings
from cb_backups.core import process
from cb_backups.core.errors import BackupFailed
from cb_backups.core.fileio import atomic_write_json
from cb_backups.core.model import BackupOutput

Log = Callable[[str], None]


def _run(name: str, which: str, argv: Sequence[str], timeout: float, log: Log) -> dict[str, Any]:
    """One hook command; its record. A failure raises BackupFailed naming the hook."""
    started = time.monotonic()
    log(f"{name}: running the {which} hook: {argv[0]}")
    try:
        done = subprocess.run(list(argv), capture_output=True, timeout=timeout, check=False)
    except FileNotFoundError:
        raise BackupFailed(name, f"the {which} hook's command was not found: {argv[0]}") from None
    except subprocess.TimeoutExpired:
        raise BackupFailed(name, f"the {which} hook ({argv[0]}) did not finish within {timeout:.0f} s") from None
    seconds = round(time.monotonic() - started, 3)
    if done.returncode != 0:
        tail = " | ".join(done.stderr.decode(errors="replace").strip().splitlines()[-3:])
        raise BackupFailed(name, f"the {which} hook ({argv[0]}) exited {done.returncode}: {tail}")
    return {"command": argv[0], "exit": 0, "seconds": seconds}


def _hooks(settings: Settings, name: str) -> Hooks:
    return hooks_from_config(settings.raw)[name]


def owed_post_backups(settings: Settings, log: Log, names: Sequence[str] | None = None) -> list[str]:
    """Run the post_backup hook of every backup killed after its pre_backup (its process is gone)."""
    lines = []
    folder = settings.catalog().hook_marker("x").parent
    for marker in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        try:
            owed = json.loads(marker.read_text())
        except (OSError, ValueError):
            continue
        if names is not None and owed.get("name") not in names:
            continue
        why = process.gone(owed.get("process") or {})
        if why is None:
            continue
        name, argv = str(owed.get("name")), [str(w) for w in owed.get("post_backup") or []]
        try:
            if argv:
                _run(name, "post_backup", argv, float(owed.get("timeout_seconds") or 300), log)
        except BackupFailed as exc:
            lines.append(f"{name}: a killed backup's post_backup hook is still owed ({why}) and failed again: {exc}")
            continue
        marker.unlink(missing_ok=True)
        lines.append(f"{name}: ran the post_backup hook that a killed backup missed ({why})")
    return lines


@contextmanager
def fenced(settings: Settings, names: Sequence[str], log: Log) -> Iterator[dict[str, Any]]:
    """pre_backup of every name (in order), the block, then post_backup of every name (reverse order), always.

    Yields the record that ends up in the manifest (`{"pre_backup": {...}, "post_backup": {...},
    "fence_seconds": ...}` per name, filled as the hooks run)."""
    for line in owed_post_backups(settings, log, names):
        log(line)
    record: dict[str, Any] = {}
    wanted = [(n, h) for n in names if (h := _hooks(settings, n)).any]
    if not wanted:
        yield record
        return
    started = time.monotonic()
    with ExitStack() as stack:
        # registered first, so it runs last: the fence ends when the last post_backup has ended
        stack.callback(lambda: record.update(fence_seconds=round(time.monotonic() - started, 3)))
        for name, hooks in wanted:
            marker = settings.catalog().hook_marker(name)
            entry = record.setdefault(name, {})
            if hooks.post_backup:
                marker.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
                atomic_write_json(marker, {"name": name, "process": process.identity(),
                                           "post_backup": list(hooks.post_backup),
                                           "timeout_seconds": hooks.timeout_seconds})
                stack.callback(_post, name, hooks, marker, entry, log)
            if hooks.pre_backup:
                entry["pre_backup"] = _run(name, "pre_backup", hooks.pre_backup, hooks.timeout_seconds, log)
        yield record


def _post(name: str, hooks: Hooks, marker: Path, entry: dict[str, Any], log: Log) -> None:
    try:
        entry["post_backup"] = _run(name, "post_backup", hooks.post_backup, hooks.timeout_seconds, log)
    except BackupFailed as exc:
        # The backup itself may be good: it is kept, the failure is recorded and said, and the marker stays
        # so the next run tries the post_backup again.
        entry["post_backup"] = {"command": hooks.post_backup[0], "error": str(exc)}
        log(f"ERROR {exc}; the next run tries it again")
        return
    marker.unlink(missing_ok=True)


def with_hooks(settings: Settings, names: Sequence[str], backup: Callable[[Path], BackupOutput],
               log: Log) -> Callable[[Path], BackupOutput]:
    """`backup` fenced by the hooks of `names`; the hooks' record goes into the output's options."""
    def run(into: Path) -> BackupOutput:
        with fenced(settings, names, log) as record:
            output = backup(into)
        if record:
            output.options["hooks"] = record
        return output
    return run
