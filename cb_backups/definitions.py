"""The one Definitions object Dagster loads: everything in the defs/ folder, and the one resource bound.

`load_from_defs_folder` imports every module under `defs/` and takes each module's one `defs`
(or, in a module without one, its module-level Dagster objects); adding a feature is one module there.
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from cb_backups.defs.resources import BackupsResource

defs = dg.Definitions.merge(
    dg.load_from_defs_folder(path_within_project=Path(__file__).parent),
    dg.Definitions(resources={"backups": BackupsResource()}),
)
