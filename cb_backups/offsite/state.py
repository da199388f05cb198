"""A slot's off-site state, judged the same way everywhere (report, retention, status): no Dagster here.

A copy is "verified" only when the newest `offsite_complete` result passed AND the manifest it
verified is the slot's CURRENT local manifest (same sha256). A passing result about an older
manifest -- the slot was backed up again since -- is "stale": it never counts as verified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

OFFSITE_FRESHNESS_CHECK = "offsite_freshness"  # on <store>_offsite: newest VERIFIED copy within RPO + lag

VERIFIED = "verified"
STALE = "stale"  # S3 holds (or was verified with) an older manifest than the local one
FAILED = "failed"
COPIED = "copied, not verified"
NONE = ""  # never copied


@dataclass(frozen=True)
class Seen:
    """One recorded fact about a slot's copy: when, and which manifest sha256 (None: not recorded)."""

    at: float
    manifest_sha256: str | None
    passed: bool = True
    run_id: str = ""


def verified_sha(check: Seen | None, copy: Seen | None) -> str | None:
    """The manifest sha256 a passing check verified: recorded by the check, else (older runs) that of the
    copy it followed (a check that ran before the newest copy verified an unknown older one)."""
    if check is None or not check.passed:
        return None
    if check.manifest_sha256:
        return check.manifest_sha256
    if copy is not None and check.at >= copy.at:
        return copy.manifest_sha256
    return None


def offsite_state(local_sha: str | None, copy: Seen | None, check: Seen | None) -> str:
    """verified | stale | failed | copied, not verified | "" (never copied).

    `local_sha`: the slot's current manifest sha256 (None when the slot was pruned locally: then the
    newest result is judged alone). `copy`: the newest off-site materialization. `check`: the newest
    `offsite_complete` result."""
    if check is not None and not check.passed:
        return FAILED
    if check is not None:
        sha = verified_sha(check, copy)
        if local_sha is None or (sha is not None and sha == local_sha):
            return VERIFIED
        if copy is not None and copy.at > check.at and copy.manifest_sha256 == local_sha:
            return COPIED  # a newer copy of the current manifest, not checked yet
        return STALE
    if copy is None:
        return NONE
    if local_sha is None or copy.manifest_sha256 == local_sha:
        return COPIED
    return STALE


# --- when to copy a slot (again) -------------------------------------------------------


@dataclass(frozen=True)
class Attempt:
    """One earlier copy run of the slot's CURRENT manifest: did it fail, and when did it end."""

    failed: bool  # the run failed, or its offsite_complete check did
    at: float
    run_id: str = ""


@dataclass(frozen=True)
class CopyDecision:
    copy: bool
    reason: str
    failures: int = 0  # consecutive failed attempts of this manifest so far
    attempt: int = 0  # the attempt number a run requested now would be
    force: bool = False  # re-send every object (the remote copy failed its check)
    wait_until: float | None = None  # a retry is due at this time


def decide_copy(local_sha: str, copy: Seen | None, check: Seen | None, attempts: list[Attempt],
                retry_wait: Callable[[int], float], now: float, s3_back_at: float | None = None) -> CopyDecision:
    """Copy when S3 lacks the slot's current manifest (never copied, or copied before the slot was
    backed up again), or its newest check failed; after failures wait `retry_wait(failures)` seconds,
    unless S3 was seen unreachable and then reachable again (`s3_back_at`) after the last failed
    attempt: an outage is healed within a sensor tick of S3 coming back, not at the next backoff step.
    `attempts`: the runs that copied this manifest, newest first."""
    copied_current = copy is not None and copy.manifest_sha256 == local_sha
    check_failed = check is not None and not check.passed and (copy is None or check.at >= copy.at)
    if copied_current and not check_failed:
        return CopyDecision(False, "the current manifest is in S3")
    failures, last = 0, None
    for attempt in attempts:  # newest first: count failures since the last success
        if not attempt.failed:
            break
        failures += 1
        last = attempt.at if last is None else max(last, attempt.at)
    if check_failed and check is not None and check.run_id not in {a.run_id for a in attempts[:failures]}:
        failures += 1  # e.g. a scheduled re-verification found the remote copy damaged
        last = check.at if last is None else max(last, check.at)
    reason = ("never copied" if copy is None else
              "the remote copy failed offsite_complete" if copied_current else
              f"S3 holds manifest {str(copy.manifest_sha256)[:12]}…, the slot's is {local_sha[:12]}…")
    if failures and last is not None:
        due = last + retry_wait(failures)
        if s3_back_at is not None and s3_back_at > last:
            return CopyDecision(True, f"{reason}; S3 is reachable again", failures, failures + 1, check_failed)
        if now < due:
            return CopyDecision(False, f"{reason}; {failures} failed attempt(s), next at {due:.0f}", failures,
                                failures + 1, check_failed, due)
    return CopyDecision(True, reason, failures, failures + 1, check_failed)
