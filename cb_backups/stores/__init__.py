"""Store adapters: plain Python, no Dagster. See base.py for the protocol."""
