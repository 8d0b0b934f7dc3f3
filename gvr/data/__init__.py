"""Curation, manifests, latent shards and loaders."""
