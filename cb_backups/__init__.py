"""cb-backups: backups of coding-brain's data stores as Dagster assets."""

__version__ = "0.1.0"
