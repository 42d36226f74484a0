"""Archive-scale batch inference (embed, classify, segment) on Ray Data, resumable, with Parquet outputs."""
