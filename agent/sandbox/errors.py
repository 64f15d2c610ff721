"""Exceptions raised by the sandbox."""

from __future__ import annotations

from ..netns import NetnsError

__all__ = ["SandboxError", "NetnsError"]


class SandboxError(Exception):
    """The sandbox could not be built, used or torn down as asked."""
