"""asaptrain: train and compare ASAP-Net, pix2pixHD, DeblurGAN and their hybrid on Ray."""

__version__ = "0.1.0"
