"""A line of the self-test and its marks."""

from __future__ import annotations

from dataclasses import dataclass

PASS, FAIL, SKIP, INFO = "✓", "✗", "-", "i"


@dataclass
class Case:
    """One line of the self-test."""

    group: str
    name: str
    mark: str
    detail: str = ""
    seconds: float = 0.0

    def line(self) -> str:
        detail = f"  {self.detail}" if self.detail else ""
        return f"{self.mark} {self.group:<5} {self.name:<38} {self.seconds:6.2f} s{detail}"
