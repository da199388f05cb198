"""Peak RSS of the Neo4j online export and of its restore: a graph of 10N nodes / one of N nodes.

The export streams (the driver pulls FETCH records at a time, the file goes through zstd in chunks)
and the restore loads batch by batch, so neither should grow with the graph. Each measurement is a
child process (`python -m benchmarks.neo4j_export backup|restore ...`) whose VmHWM is read at the
end: the Bolt server (the FalkorDB emulator here, CB_BENCH_NEO4J_URI for a real disposable Neo4j 5)
is another process and not counted.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.common import Bench, Figure, human_bytes

KEY = "neo4j_export_memory"
TITLE = "Neo4j online export + restore, peak RSS: 10N-node graph / N-node graph"
SEED_CHUNK = 10_000  # pairs per seeding query: a short Cypher text, no parameters (FalkorDB's 4 KB limit)
# every i: a file node and a symbol node, CONTAINS one way and CALLS back: 2 nodes, 2 relationships
SEED = ("UNWIND range({lo}, {hi}) AS i "
        "CREATE (f:CODE_File {{path: 'repo/src/module_' + toString(i) + '.py', lines: i % 900 + 5, "
        "language: 'python', hash: 'h' + toString(i * 31)}})"
        "-[:CONTAINS {{since: '2026-01-0' + toString(i % 9 + 1)}}]->"
        "(s:CODE_Symbol {{name: 'fn_' + toString(i), kind: 'function', line: i % 400 + 1, score: 0.25 * (i % 4), "
        "exported: i % 2 = 0, tags: ['auto', 'level' + toString(i % 4)]}}) "
        "CREATE (s)-[:CALLS {{count: i % 17}}]->(f)")


# --- the child: one backup or one restore, then its peak memory ----------------------------------


def vm_hwm_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def child(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.neo4j_export")
    parser.add_argument("mode", choices=["backup", "restore"])
    parser.add_argument("--uri", required=True)
    parser.add_argument("--root", required=True, help="the backup dir (catalog) of this graph size")
    args = parser.parse_args(argv)

    from cb_backups.config.settings import Neo4jSettings
    from cb_backups.core.catalog import Catalog
    from cb_backups.core.model import Target
    from cb_backups.stores.neo4j import Neo4jStore

    store = Neo4jStore(Neo4jSettings(uri=args.uri, user=os.environ.get("CB_BENCH_NEO4J_USER", "neo4j"),
                                     password=os.environ.get("CB_BENCH_NEO4J_PASSWORD") or None, method="export"))
    catalog = Catalog(Path(args.root))
    baseline = vm_hwm_kib()  # interpreter, driver and cb_backups imported; not one record read yet
    started = time.perf_counter()
    if args.mode == "backup":
        artifact = catalog.write("neo4j", "2026-11-24", store.backup)
        counts = artifact.manifest.inventory
    else:
        # verify (re-reads every record), empty, load in batches, recompute the live digest
        counts = store.restore(catalog.require("neo4j", "2026-11-24"), Target("in_place"))
    print(json.dumps({"mode": args.mode, "counts": counts, "baseline_kib": baseline, "peak_kib": vm_hwm_kib(),
                      "bytes": catalog.require("neo4j", "2026-11-24").manifest.files[0].bytes,
                      "seconds": round(time.perf_counter() - started, 2)}))


# --- the parent: the figure ------------------------------------------------------------------


def _bolt_uri(bench: Bench) -> str:
    """A disposable Bolt server: CB_BENCH_NEO4J_URI (its graph is WIPED) or the FalkorDB emulator."""
    uri = os.environ.get("CB_BENCH_NEO4J_URI")
    if uri:
        return uri
    from cb_backups_tests.emulators.neo4j import start_neo4j

    # FalkorDB's Bolt front end aborts on a message over about 4 KB: keep restore batches under it
    os.environ.setdefault("CB_NEO4J_BATCH_BYTES", "2500")
    emulator = start_neo4j(bench.scratch("neo4j-emulator"))
    bench.on_exit(emulator.stop)
    return emulator.uri


def seed(uri: str, nodes: int) -> None:
    """Replace the graph with `nodes` nodes and as many relationships, in short auto-commit queries."""
    from cb_backups.config.settings import Neo4jSettings
    from cb_backups.stores import neo4j_export

    settings = Neo4jSettings(uri=uri, user=os.environ.get("CB_BENCH_NEO4J_USER", "neo4j"),
                             password=os.environ.get("CB_BENCH_NEO4J_PASSWORD") or None)
    with neo4j_export.bolt(settings) as db:
        neo4j_export.empty_graph(db)
        for lo in range(0, nodes // 2, SEED_CHUNK):
            db.run(SEED.format(lo=lo, hi=min(lo + SEED_CHUNK, nodes // 2) - 1), "seeding the benchmark graph")


def _measure(bench: Bench, uri: str, mode: str, root: Path) -> dict[str, Any]:
    done = subprocess.run([sys.executable, "-m", "benchmarks.neo4j_export", mode, "--uri", uri, "--root", str(root)],
                          env=dict(os.environ), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"neo4j export {mode} child failed: {done.stderr.strip()[-400:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    bench.log(f"  {mode}: {result['counts']} in {result['seconds']}s, peak {human_bytes(result['peak_kib'] * 1024)}")
    return result


def export_memory(bench: Bench) -> Figure:
    small = int(os.environ.get("CB_BENCH_NEO4J_NODES", "20000"))
    large = small * 10
    uri = _bolt_uri(bench)
    runs: dict[int, dict[str, dict[str, Any]]] = {}
    for nodes in (small, large):
        bench.log(f"Neo4j graph of {nodes:,} nodes and {nodes:,} relationships ...")
        t0 = time.perf_counter()
        seed(uri, nodes)
        bench.log(f"  seeded in {time.perf_counter() - t0:.1f}s")
        root = bench.scratch(f"neo4j-export-{nodes}")
        backup = _measure(bench, uri, "backup", root)
        restore = _measure(bench, uri, "restore", root)
        if restore["counts"] != backup["counts"]:  # restore proves the digest too; counts are the cheap check
            raise RuntimeError(f"restored counts {restore['counts']} differ from the backup's {backup['counts']}")
        runs[nodes] = {"backup": backup, "restore": restore}
    ratios = {mode: runs[large][mode]["peak_kib"] / runs[small][mode]["peak_kib"] for mode in ("backup", "restore")}
    worst = max(ratios, key=lambda m: ratios[m])

    def peaks(mode: str) -> str:
        big, little = (human_bytes(runs[n][mode]["peak_kib"] * 1024) for n in (large, small))
        grown = [(runs[n][mode]["peak_kib"] - runs[n][mode]["baseline_kib"]) * 1024 for n in (large, small)]
        return f"{big} vs {little}; above the imports: {human_bytes(grown[0])} vs {human_bytes(grown[1])}"

    return Figure(KEY, TITLE.replace("10N", f"{large:,}").replace(" N-node", f" {small:,}-node"),
                  ratios[worst], "<=", 1.2, f"{large:,} nodes + {large:,} relationships",
                  f"{small:,} nodes + {small:,} relationships",
                  runs[large]["backup"]["seconds"] + runs[large]["restore"]["seconds"],
                  runs[small]["backup"]["seconds"] + runs[small]["restore"]["seconds"], 1, unit="x (RSS)",
                  code_path="child processes: Neo4jStore(method=export).backup via Catalog.write, then "
                            "Neo4jStore.restore in place (verify, load in batches, live digest); peak = VmHWM",
                  note=f"ratio is the larger of backup {ratios['backup']:.3f} ({peaks('backup')}) and restore "
                       f"{ratios['restore']:.3f} ({peaks('restore')}); seconds are backup + restore",
                  details={"ratios": ratios, "runs": {str(k): v for k, v in runs.items()}})


if __name__ == "__main__":
    child()
