"""Networks: DiT, attention, latent upsampler, codecs, text encoder, base T2V model."""
