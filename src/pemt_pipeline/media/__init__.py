"""Media: probing and decoding with PyAV, clip placement, the log-mel front end, clip shards and the
synthetic demo dataset. Nothing here imports Kedro."""
