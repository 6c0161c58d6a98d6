"""Every figure in the README's headline comes from the committed result reports."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NUMBER = re.compile(r"[−+-]?\d+\.\d+")


def _numbers(text: str) -> set[str]:
    return {n.replace("−", "-").lstrip("+") for n in NUMBER.findall(text)}


def test_every_decimal_in_the_readme_headline_is_in_docs_results():
    readme = (ROOT / "README.md").read_text()
    start = readme.index("## Headline results")
    headline = readme[start : readme.index("\n## ", start + 1)]
    quoted = _numbers(headline)
    assert len(quoted) >= 10  # the section still quotes measured figures
    results = "".join(p.read_text() for p in sorted((ROOT / "docs/results").rglob("*.md")))
    stored = _numbers(results) | {n.lstrip("-") for n in _numbers(results)}
    missing = sorted(n for n in quoted if n not in stored and n.lstrip("-") not in stored)
    assert not missing, f"README headline figures not in docs/results: {missing}"
