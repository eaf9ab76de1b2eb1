"""pipio: our latent video diffusion transformer (diffusers' LTX-Video parts + audio and face-ID conditioning)."""
