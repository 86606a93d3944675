from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Item:
    """An attachment as the policy sees it: a name and its bytes."""

    filename: str
    content: bytes
