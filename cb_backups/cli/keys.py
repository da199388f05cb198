"""`cb-backups keys generate --output FILE` and `cb-backups keys show [--json]`: the age keys of encryption.

`generate` writes a new X25519 identity (age-keygen's format, 0600, never over an existing file) and
prints only its public key: that goes into CB_AGE_RECIPIENTS on the backup host; the identity file
stays where restores run (CB_AGE_IDENTITY_FILE). `show` prints what the settings encrypt to, by public
key and fingerprint (the manifests name fingerprints), and which configured identity matches which
recipient; identities themselves are never printed.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from rich.markup import escape

from cb_backups.cli.args import Subcommands, add_json
from cb_backups.cli.output import console, print_json, table


def register(sub: Subcommands) -> None:
    keys = sub.add_parser("keys", help="age encryption keys: generate a key pair, show what backups encrypt to")
    actions = keys.add_subparsers(dest="keys_command", required=True)
    generate = actions.add_parser("generate", help="write a new age identity file and print its public key")
    generate.add_argument("--output", "-o", required=True, type=Path,
                          help="the identity file to create (0600; an existing file is never overwritten)")
    generate.set_defaults(func=run_generate)
    show = actions.add_parser("show", help="recipients, encrypted stores and the identities that match them")
    add_json(show)
    show.set_defaults(func=run_show)


def run_generate(args: argparse.Namespace) -> int:
    from cb_backups.core.catalog import iso, utcnow
    from cb_backups.core.crypto import fingerprint, generate
    from cb_backups.core.errors import ConfigError
    from cb_backups.core.fileio import atomic_write_bytes

    path: Path = args.output
    if path.exists():
        raise ConfigError("--output", str(path), "a file that does not exist yet (keys are never overwritten)")
    if not path.parent.is_dir():
        raise ConfigError("--output", str(path), "a path in an existing folder")
    identity, public = generate()
    atomic_write_bytes(path, f"# created: {iso(utcnow())}\n# public key: {public}\n{identity}\n".encode())
    console.print(f"wrote the identity to {escape(str(path))} (keep it off the backup host; restores read it "
                  "from CB_AGE_IDENTITY_FILE)")
    console.print(f"public key (for CB_AGE_RECIPIENTS): {public}", soft_wrap=True)
    console.print(f"fingerprint (as manifests name it): {fingerprint(public)}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from cb_backups.config.settings import load_settings
    from cb_backups.core.crypto import fingerprint, public_key
    from cb_backups.core.specs import FULL_SYSTEM, STORE_NAMES

    settings = load_settings()
    enc = settings.encryption
    identities = {fingerprint(public_key(i)) for i in enc.identities()} if enc.identity_files else set()
    document: dict[str, Any] = {
        "recipients": [{"public_key": r, "fingerprint": fingerprint(r), "identity_configured": fingerprint(r)
                        in identities} for r in enc.recipients],
        "encrypted_stores": [s for s in (*STORE_NAMES, FULL_SYSTEM) if enc.recipients_for(s)],
        "identity_files": [str(p) for p in enc.identity_files],
        "identity_fingerprints": sorted(identities),
    }
    if args.json:
        print_json(document)
        return 0
    out = table("age recipients (new backups are encrypted to these)", ("fingerprint", "public key", "identity here"))
    for r in document["recipients"]:
        out.add_row(r["fingerprint"], r["public_key"], "yes" if r["identity_configured"] else "no")
    console.print(out)
    console.print("encrypted stores: " + (", ".join(document["encrypted_stores"]) or "none (encryption is off)"))
    console.print("identities (CB_AGE_IDENTITY_FILE): " + (
        ", ".join(f"{escape(p)}" for p in document["identity_files"]) or "none on this host") +
        (f"; fingerprints {', '.join(document['identity_fingerprints'])}" if identities else ""))
    return 0
