"""synrank: dense retrievers trained on LLM-generated graded-relevance data, on Ray."""

__version__ = "0.1.0"
