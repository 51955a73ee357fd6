"""Fixtures of the storage conformance suite: a real sshd for the SFTP storage."""

from __future__ import annotations

from ssh_server import sshd

__all__ = ["sshd"]
