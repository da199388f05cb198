"""WAL file names and LSN arithmetic (PostgreSQL's XLogFileName / XLByteToSeg, in Python)."""

from __future__ import annotations

import re

from cb_backups.core.errors import ConfigError

DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
PARTIAL_SUFFIX = ".partial"
_LSN = re.compile(r"^([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})$")


def parse_lsn(text: str, what: str = "LSN") -> int:
    match = _LSN.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ConfigError(what, text, "an LSN like 0/3000148 (two hexadecimal numbers)")
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(lsn: int) -> str:
    return f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def segments_per_id(seg_size: int) -> int:
    return 0x100000000 // seg_size


def segment_name(timeline: int, segno: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> str:
    per = segments_per_id(seg_size)
    return f"{timeline:08X}{segno // per:08X}{segno % per:08X}"


def parse_segment(name: str, seg_size: int = DEFAULT_SEGMENT_SIZE) -> tuple[int, int]:
    """(timeline, segment number) of a WAL segment file name."""
    match = SEGMENT.match(name)
    if match is None:
        raise ConfigError("WAL segment name", name, "24 hexadecimal digits, e.g. 000000010000000000000003")
    tli, high, low = (int(g, 16) for g in match.groups())
    return tli, high * segments_per_id(seg_size) + low


def segment_of(lsn: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return lsn // seg_size


def segment_start(segno: int, seg_size: int = DEFAULT_SEGMENT_SIZE) -> int:
    return segno * seg_size
