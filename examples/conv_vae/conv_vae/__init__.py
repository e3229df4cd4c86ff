"""A convolutional beta-VAE family for Latent Studies, shipped outside the main package.

The registry finds `conv_vae.family.FAMILY` through the `latent_studies.families` entry
point (or `LATENT_STUDIES_FAMILY_MODULES=conv_vae.family`); importing this package does no
work.
"""
