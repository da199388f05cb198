"""Tests for cb-backups: real servers, protocol emulators, real outcomes."""
