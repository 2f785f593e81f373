"""Test helpers (no tests here): stub servers for fault injection, process checks, files, fixtures."""
