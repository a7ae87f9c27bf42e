"""RecSAE Serve: TopK sparse autoencoders over a recommender's user representation.

Layers are one-way: ``service`` -> ``recsae`` -> numpy/onnxruntime. Modules that need torch
(``recsae.sae``, ``recsae.train``, ``models``) are never imported by the service.
"""

__version__ = "0.1.0"


class RecSAEError(Exception):
    """Base class for failures a user can act on; the message says what to do."""


class DataError(RecSAEError):
    """The dataset is missing, malformed or empty."""


class ConfigError(RecSAEError):
    """An option is out of range or inconsistent with another."""


class BundleError(RecSAEError):
    """A model bundle is missing a file, has an altered file, or does not fit the service."""
