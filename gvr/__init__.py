"""gvr: SimpleGVR latent-cascaded video super-resolution — model, data and pipeline library."""

__version__ = "0.1.0"
