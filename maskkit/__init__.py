"""maskkit: turn face datasets into masked-face training data and train MaskDUL on it.

Pipeline stages (one module each, data flows one way)::

    source -> detect -> landmarks -> align -> mask -> shard -> train -> eval
"""
__version__ = "0.1.0"
