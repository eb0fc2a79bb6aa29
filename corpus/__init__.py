"""`edge-embed embed`: a whole corpus to Parquet shards, in-process or on a Ray cluster."""
