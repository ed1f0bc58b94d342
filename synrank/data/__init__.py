"""Data contracts: Parquet schemas, readers/writers, relevance levels, training groups."""
