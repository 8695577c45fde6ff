"""The paper's pictures and experiments, for any run of this package.

- ``analysis``: first-layer filter grids (Figure 3), last-hidden-layer features, their cache
  and the nearest-neighbor search (Figure 4), feature maps;
- ``figures``: those drawn to files, for the ``filters``, ``neighbors`` and ``activations``
  commands and the report;
- ``ablation``: the paper's architectural choices switched off one at a time, trained over
  seeds and tabulated (``alexnet ablate``).
"""
