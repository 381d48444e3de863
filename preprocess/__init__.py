"""Data preparation: face detection and landmarks, dataset layouts, the journal and manifests."""
