"""nn.Modules (dual encoders, SAM-family, text towers) and their format converters: tensors in, tensors out, no
I/O; built from a config, weights attached by :mod:`medfoundry.registry`'s loader."""
