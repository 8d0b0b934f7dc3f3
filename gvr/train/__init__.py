"""DeepSpeed training stages, checkpoints and export."""
