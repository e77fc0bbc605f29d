"""The genotype that PocketNet (Boutros et al., 2021) derived on CASIA-WebFace."""

from __future__ import annotations

from pocketnas.search_space.genotype import Genotype

POCKETNET_GENOTYPE = Genotype(
    normal=(
        (("dw_conv_3x3", 0), ("dw_conv_1x1", 1)),
        (("dw_conv_3x3", 2), ("dw_conv_5x5", 0)),
        (("dw_conv_3x3", 3), ("dw_conv_3x3", 0)),
        (("dw_conv_3x3", 4), ("skip_connect", 0)),
    ),
    normal_concat=(2, 3, 4, 5),
    reduce=(
        (("dw_conv_3x3", 1), ("dw_conv_7x7", 0)),
        (("skip_connect", 2), ("dw_conv_5x5", 1)),
        (("max_pool_3x3", 0), ("skip_connect", 2)),
        (("max_pool_3x3", 0), ("max_pool_3x3", 1)),
    ),
    reduce_concat=(2, 3, 4, 5),
)
