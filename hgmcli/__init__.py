"""hgm: reference implementation of "Provable guarantees on learning
hierarchical generative models with deep CNNs" (layerwise cosine k-means +
1x1-conv training). The library never imports Typer or rich; ``hgmcli.cli``
is the command-line skin over ``hgmcli.stages``."""

__version__ = "0.1.0"
