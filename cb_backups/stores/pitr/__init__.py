"""PostgreSQL point-in-time recovery: the WAL archive, its receiver, base backups and recovery.

One module per job: `wal` (segment names and LSN arithmetic), `archive` (the WAL catalog under
`<backup_dir>/postgres_wal/`), `server` (connecting, running the server's own tools), `receiver`
(pg_receivewal, recording every completed segment), `basebackup` (pg_basebackup, pg_verifybackup),
`recovery` (a data directory recovered to a target and started), `health` (RPO, retained WAL).
"""
