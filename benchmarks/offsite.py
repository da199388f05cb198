"""Off-site copy throughput, peak memory of backup + copy, and verification throughput."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from typing import Any

from benchmarks.artifacts import make_artifact
from benchmarks.common import Bench, Figure, MiB, human_bytes, paired, proc_io, run


def _target(bench: Bench, bucket: str) -> Any:
    from cb_backups.config.settings import S3Settings
    from cb_backups.offsite.s3 import S3Target

    return S3Target(S3Settings(bucket=bucket, endpoint_url=bench.s3.endpoint_url, region=bench.s3.region))


def offsite_throughput(bench: Bench) -> Figure:
    """upload_artifact (sha256 verified in the same read) / raw boto3 upload_file of the same file."""
    import boto3

    from cb_backups.offsite.s3 import upload_artifact, verify_offsite

    size = max(bench.size_bytes, 32 * MiB)
    artifact = make_artifact(bench.scratch("offsite"), size)
    path = artifact.path("payload.bin")
    bucket = bench.s3_bucket("cb-bench-offsite")
    reads: dict[str, list[float]] = {"product": [], "raw": []}
    ok: list[bool] = []
    with bench.aws_env():
        target = _target(bench, bucket)
        # a fresh session: boto3.client's default one keeps the first credentials it found (in a
        # --size 200MB,1GB run, those of the first size's server)
        raw_client = boto3.session.Session().client("s3", endpoint_url=bench.s3.endpoint_url,
                                                     region_name=bench.s3.region)

        def product() -> None:
            before = proc_io().get("rchar", 0)
            copy = upload_artifact(artifact, target, force=True)
            reads["product"].append((proc_io().get("rchar", 0) - before) / size)
            ok.append(copy.bytes == size)

        def raw() -> None:
            before = proc_io().get("rchar", 0)
            raw_client.upload_file(str(path), bucket, "raw/payload.bin")
            reads["raw"].append((proc_io().get("rchar", 0) - before) / size)

        product()  # warm-up: learns whether the server takes SHA256 checksums
        raw()
        pairs = paired(product, raw, bench.repeat)
        check = verify_offsite(artifact, target)
    mib = size / MiB
    read_ratio = statistics.median(reads["product"])
    return Figure("offsite_throughput", "Off-site copy throughput (upload_artifact) / raw boto3 upload_file",
                  statistics.median([b / a for a, b in zip(pairs.a, pairs.b, strict=True)]),
                  ">=", 0.9, "cb_backups.offsite.s3.upload_artifact(force=True)", "boto3 upload_file (defaults)",
                  pairs.a_median, pairs.b_median, len(pairs.a),
                  code_path=f"VerifyingReader -> upload_fileobj, {target.settings.concurrency} threads x "
                            f"{target.settings.multipart_chunk_mb} MiB parts, SHA256 additional checksum "
                            f"({'accepted' if target.checksums_supported else 'refused'} by SeaweedFS), then HEAD",
                  note=f"{human_bytes(size)}; read() bytes / file size: product {read_ratio:.2f}x, raw boto3 "
                       f"{statistics.median(reads['raw']):.2f}x (sha256 computed in that one pass)",
                  details={"bytes": size, "mib_s_product": round(mib / pairs.a_median, 1),
                           "mib_s_raw": round(mib / pairs.b_median, 1), "rchar_over_size_product": reads["product"],
                           "rchar_over_size_raw": reads["raw"], "copies_complete": all(ok),
                           "remote_verified": check.ok})


def verification_throughput(bench: Bench) -> Figure:
    """checksum_problems (fileio.sha256_file) / sha256sum on the same file, page cache warm for both."""
    from cb_backups.core.catalog import checksum_problems

    size = max(bench.size_bytes, 32 * MiB)
    artifact = make_artifact(bench.scratch("verify"), size)
    path = artifact.path("payload.bin")
    problems: list[list[str]] = []

    def product() -> None:
        problems.append(checksum_problems(artifact))

    def raw() -> None:
        run(["sha256sum", str(path)])

    product()
    raw()
    pairs = paired(product, raw, bench.repeat)
    speed = statistics.median([b / a for a, b in zip(pairs.a, pairs.b, strict=True)])
    return Figure("verify_throughput", "Verification throughput (catalog.checksum_problems) / sha256sum",
                  speed, ">=", 0.8, "checksum_problems -> fileio.sha256_file", "sha256sum FILE",
                  pairs.a_median, pairs.b_median, len(pairs.a),
                  code_path="1 MiB unbuffered reads into hashlib.sha256 (OpenSSL)",
                  note=f"{human_bytes(size)}: {size / MiB / pairs.a_median:.0f} MiB/s vs "
                       f"{size / MiB / pairs.b_median:.0f} MiB/s",
                  details={"all_clean": all(not p for p in problems)})


def peak_memory(bench: Bench) -> Figure:
    """Peak RSS of a child doing backup + off-site copy: large artifact / small artifact."""
    small, large = (20 * MiB, 200 * MiB) if bench.quick else (200 * MiB, 2048 * MiB)
    bucket = bench.s3_bucket("cb-bench-memory")
    results: dict[int, list[dict[str, Any]]] = {small: [], large: []}
    rounds = 1 if bench.quick else min(bench.repeat, 2)
    env = {**os.environ, **bench.s3.env(), "AWS_EC2_METADATA_DISABLED": "true"}
    for i in range(rounds):
        for size in (small, large) if i % 2 == 0 else (large, small):
            work = bench.scratch(f"memory-{size}")
            done = subprocess.run([sys.executable, "-m", "benchmarks.memory_child", "--bytes", str(size),
                                   "--root", str(work), "--endpoint", bench.s3.endpoint_url, "--bucket", bucket],
                                  env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"memory child failed: {done.stderr.strip()[-400:]}")
            results[size].append(json.loads(done.stdout.strip().splitlines()[-1]))
    peak = {s: statistics.median(r["peak_kib"] for r in results[s]) for s in results}
    ratio = peak[large] / peak[small]
    return Figure("peak_rss", f"Peak RSS of backup + off-site copy: {human_bytes(large)} / {human_bytes(small)}",
                  ratio, "<=", 1.2, f"{human_bytes(large)} artifact", f"{human_bytes(small)} artifact",
                  statistics.median(r["seconds"] for r in results[large]),
                  statistics.median(r["seconds"] for r in results[small]), rounds, unit="x (RSS)",
                  code_path="child process: Catalog.write(fake store, HashingWriter) + upload_artifact; "
                            "peak = the child's VmHWM (ru_maxrss would include the parent's RSS at fork)",
                  note=f"peak {human_bytes(peak[large] * 1024)} vs {human_bytes(peak[small] * 1024)}; the copy buffers "
                       "at most concurrency x 2 parts (8 x 2 x 8 MiB), reached once a file is over ~128 MiB, so "
                       "a small artifact below that shows a lower peak (quick mode's 20 MiB)",
                  details={"runs": {str(k): v for k, v in results.items()}})
