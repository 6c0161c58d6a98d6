"""Reading results: ``table`` (mean ± std per method and size), ``report`` (Markdown and
plots from stored rows) and ``summary`` (how the methods rank across benchmarks)."""
