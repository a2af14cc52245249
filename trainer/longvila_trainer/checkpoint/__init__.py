"""Checkpoints: URIs (uri.py), storage backends S3 and local (s3.py), the layout contract
(layout.py) and the sharded, resharding CheckpointStore (store.py). See docs/checkpoints.md."""
