"""Encrypted backup + off-site copy against the unencrypted one, and against restic's first backup (issue 16.5).

restic (Debian `apt-get install restic`, 0.14) backs up the same plaintext with `--stdin` into a fresh
repository in the same SeaweedFS bucket: its first backup chunks, deduplicates, encrypts and uploads, which
is what a user would pick instead of cb-backups' age-encrypted copy.
"""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.artifacts import make_artifact
from benchmarks.common import Bench, Figure, MiB, human_bytes, paired, timed, unavailable

RESTIC_TITLE = "Encrypted off-site copy throughput: cb-backups (age) / restic's first backup --stdin"


def _recipient(bench: Bench) -> str:
    if "age_recipient" not in bench.cache:
        from pyrage import x25519

        bench.cache["age_recipient"] = str(x25519.Identity.generate().to_public())
    return str(bench.cache["age_recipient"])


def _target(bench: Bench, bucket: str) -> Any:
    from cb_backups.config.settings import S3Settings
    from cb_backups.offsite.s3 import S3Target

    return S3Target(S3Settings(bucket=bucket, endpoint_url=bench.s3.endpoint_url, region=bench.s3.region))


def encrypted_offsite(bench: Bench) -> Figure:
    """Encrypted backup (one pass: random bytes -> age -> sha256 -> disk) + upload_artifact, against the same
    without encryption: throughput encrypted / plain."""
    from cb_backups.offsite.s3 import upload_artifact

    size = max(bench.size_bytes, 32 * MiB)
    recipient = _recipient(bench)
    bucket = bench.s3_bucket("cb-bench-encrypted")
    copied: list[bool] = []
    phases: dict[str, list[float]] = {"backup_encrypted": [], "backup_plain": []}  # where a gap comes from
    with bench.aws_env():
        target = _target(bench, bucket)

        def run(recipients: tuple[str, ...]) -> None:
            backup_seconds, artifact = timed(lambda: make_artifact(bench.scratch("encrypted"), size,
                                                                   recipients=recipients))
            phases["backup_encrypted" if recipients else "backup_plain"].append(backup_seconds)
            copy = upload_artifact(artifact, target, force=True)
            copied.append(copy.bytes >= size and all(f.name.endswith(".age") == bool(recipients)
                                                     for f in artifact.manifest.files))

        run((recipient,))  # warm-up: the checksum probe, pyrage loaded
        pairs = paired(lambda: run((recipient,)), lambda: run(()), bench.repeat)
    ratios = [b / a for a, b in zip(pairs.a, pairs.b, strict=True)]
    ratio = statistics.median(ratios)
    return Figure("encrypted_offsite", "Encrypted backup + off-site copy throughput / unencrypted", ratio, ">=", 0.9,
                  "age-encrypted backup + upload_artifact", "same, unencrypted", pairs.a_median, pairs.b_median,
                  len(pairs.a), code_path="HashingWriter -> StreamEncryptor (age format, OpenSSL ChaCha20-Poly1305) -> "
                                          "writer thread: sha256 of ciphertext -> disk; then VerifyingReader "
                                          "-> upload_fileobj (the same ciphertext)",
                  note=f"{human_bytes(size)} incompressible: {size / MiB / pairs.a_median:.0f} MiB/s encrypted vs "
                       f"{size / MiB / pairs.b_median:.0f} MiB/s plain",
                  details={"bytes": size, "copies_complete": all(copied),
                           "throughput_ratios": [round(r, 3) for r in ratios],
                           "backup_seconds_median": {k: round(statistics.median(v), 2) for k, v in phases.items()}})


def _peak_child(argv: list[str], env: dict[str, str], stdin: Path | None = None) -> tuple[float, int]:
    """(seconds, peak RSS KiB) of one child process (wait4's rusage is that child's alone)."""
    started = time.perf_counter()
    with open(stdin, "rb") if stdin else open(os.devnull, "rb") as source:
        proc = subprocess.Popen(argv, env=env, stdin=source, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert proc.stderr is not None
        err = proc.stderr.read()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(argv[0]).name} exited {proc.returncode}: {err.decode(errors='replace')[-300:]}")
    return time.perf_counter() - started, int(usage.ru_maxrss)


def _our_peak(bench: Bench, size: int, bucket: str, recipient: str) -> int:
    import json

    env = {**os.environ, **bench.s3.env(), "AWS_EC2_METADATA_DISABLED": "true"}
    done = subprocess.run([sys.executable, "-m", "benchmarks.memory_child", "--bytes", str(size), "--root",
                           str(bench.scratch(f"encrypted-memory-{size}")), "--endpoint", bench.s3.endpoint_url,
                           "--bucket", bucket, "--recipient", recipient],
                          env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"memory child failed: {done.stderr.strip()[-300:]}")
    return int(json.loads(done.stdout.strip().splitlines()[-1])["peak_kib"])


def restic_offsite(bench: Bench) -> Figure:
    """upload_artifact of the age-encrypted artifact / restic's first backup of the same plaintext (--stdin),
    both into the same SeaweedFS bucket; each restic run gets a fresh repository (a first backup)."""
    from cb_backups.offsite.s3 import upload_artifact

    restic = shutil.which("restic")
    if restic is None:
        return unavailable("restic_offsite", RESTIC_TITLE, ">=", 2.0,
                           "restic is not installed: `apt-get install restic` (Debian 0.14) to measure this figure")
    size = max(bench.size_bytes, 32 * MiB)
    recipient = _recipient(bench)
    bucket = bench.s3_bucket("cb-bench-restic")
    plain = make_artifact(bench.scratch("restic-plain"), size)
    encrypted = make_artifact(bench.scratch("restic-encrypted"), size, recipients=(recipient,))
    cache = bench.scratch("restic-cache")
    env = {**os.environ, **bench.s3.env(), "RESTIC_PASSWORD": "cb-bench-restic", "RESTIC_CACHE_DIR": str(cache)}
    peaks: list[int] = []
    runs = [0]
    with bench.aws_env():
        target = _target(bench, bucket)

        def ours() -> None:
            upload_artifact(encrypted, target, force=True)

        def theirs() -> None:
            runs[0] += 1
            repo = f"s3:{bench.s3.endpoint_url}/{bucket}/restic-{runs[0]}"
            subprocess.run([restic, "-r", repo, "init"], env=env, capture_output=True, check=True)
            _, peak = _peak_child([restic, "-r", repo, "backup", "--stdin", "--stdin-filename", "payload.bin"], env,
                                  stdin=plain.path("payload.bin"))
            peaks.append(peak)

        ours()
        pairs = paired(ours, theirs, bench.repeat)
    ratio = statistics.median([b / a for a, b in zip(pairs.a, pairs.b, strict=True)])
    # both sizes above the copy's buffers (8 threads x 2 x 8 MiB parts): below them the peak is lower anyway
    small, large = max(size, 160 * MiB), 2 * max(size, 160 * MiB)
    ours_peak = {large: _our_peak(bench, large, bucket, recipient), small: _our_peak(bench, small, bucket, recipient)}
    flat = ours_peak[large] / ours_peak[small]
    version = subprocess.run([restic, "version"], capture_output=True, text=True, check=False).stdout.strip()
    return Figure("restic_offsite", RESTIC_TITLE, ratio, ">=", 2.0, "upload_artifact(age-encrypted artifact)",
                  f"{version.split(' compiled')[0]} backup --stdin, fresh repository", pairs.a_median,
                  pairs.b_median, len(pairs.a), condition_ok=flat <= 1.2,
                  code_path="VerifyingReader -> upload_fileobj of the .age ciphertext written by the backup",
                  note=f"{human_bytes(size)} incompressible; peak RSS: cb-backups encrypted backup + copy "
                       f"{human_bytes(ours_peak[large] * 1024)} at {human_bytes(large)} vs "
                       f"{human_bytes(ours_peak[small] * 1024)} at {human_bytes(small)} ({flat:.2f}x, flat <= 1.2), "
                       f"restic {human_bytes(statistics.median(peaks) * 1024)}",
                  details={"bytes": size, "our_peak_kib": {str(k): v for k, v in ours_peak.items()},
                           "restic_peak_kib": peaks, "peak_ratio": round(flat, 3)})
