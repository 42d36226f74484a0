"""The project's shared data folder (``../shared/data``): its splits, defined once, and the tables built from it.

This layer sits beside :mod:`medfoundry.io` (it reads files and nothing above it): training
(:mod:`medfoundry.train`), the evaluation harness (``eval prepare``), the demo and the benchmarks all take
their splits from :mod:`medfoundry.datasets.splits`, so an image held out from training is held out everywhere.
"""
