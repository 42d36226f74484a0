"""medfoundry's own embedded default models: small weights trained by this project, shipped in the package.

Each embedded model lives in a folder here holding ``card.json`` (its :class:`ModelRecord`, weights source
``package:weights/<folder>/model.safetensors``), ``model.safetensors`` and ``MODEL_CARD.md``.

This package is data only: :func:`medfoundry.registry.catalog.embedded_records` reads the cards (the weights
never import the registry, so the layers stay one-way).
"""

