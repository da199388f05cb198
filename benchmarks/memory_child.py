"""Child process for the peak-RSS figure: back up a synthetic artifact, copy it off-site, print peak memory."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def resource_maxrss() -> int:
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bytes", type=int, required=True)
    parser.add_argument("--root", required=True)
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--recipient", help="encrypt the backup to this age public key (benchmarks/encrypted.py)")
    args = parser.parse_args()

    from benchmarks.artifacts import make_artifact
    from cb_backups.config.settings import S3Settings
    from cb_backups.offsite.s3 import S3Target, upload_artifact

    started = time.perf_counter()
    target = S3Target(S3Settings(bucket=args.bucket, endpoint_url=args.endpoint))
    baseline = vm_hwm_kib()  # interpreter + imports, before any byte of the artifact
    artifact = make_artifact(Path(args.root), args.bytes, recipients=(args.recipient,) if args.recipient else ())
    after_backup = vm_hwm_kib()
    copy = upload_artifact(artifact, target, force=True)
    # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across execve, so a child's ru_maxrss starts at
    # its parent's RSS at fork time and would hide this process's own peak.
    peak = vm_hwm_kib()
    print(json.dumps({"bytes": args.bytes, "uploaded": copy.bytes, "baseline_kib": baseline,
                      "after_backup_kib": after_backup, "peak_kib": peak,
                      "ru_maxrss_kib_incl_parent_at_fork": resource_maxrss(),
                      "seconds": round(time.perf_counter() - started, 3)}))


if __name__ == "__main__":
    main()
