"""Every figure in the README's headline comes from the committed result reports."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"[−+-]?\d+\.\d+")


def _magnitudes(text: str) -> set[str]:
    """The decimals in ``text`` without their signs (``−0.038`` and ``+0.038`` alike)."""
    return {n.lstrip("−+-") for n in NUMBER.findall(text)}


def test_every_decimal_in_the_readme_headline_is_in_docs_results():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Headline results")
    headline = readme[start : readme.index("\n## ", start + 1)]
    quoted = _magnitudes(headline)
    assert len(quoted) >= 10  # the section still quotes measured figures
    results = "".join(p.read_text() for p in sorted((ROOT / "docs/results").rglob("*.md")))
    missing = sorted(quoted - _magnitudes(results))
    assert not missing, f"README headline figures not in docs/results: {missing}"
