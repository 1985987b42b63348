"""Text -> tokens -> pretraining examples -> batches."""
