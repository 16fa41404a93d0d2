"""Affine Parameter Sharing: projections, APS layers, sharing level and regulariser (torch only)."""
from .layers import (APSBatchNorm2d, APSConv2d, APSLinear, aps_modules, pair_key,
                     set_projections_trainable)
from .projection import init_projection, overlap_offsets, required_meta_width, subspace_overlap
from .sharing import layer_sharing_level, orthogonality_loss, renormalize_projections, sharing_levels

__all__ = ['APSBatchNorm2d', 'APSConv2d', 'APSLinear', 'aps_modules', 'pair_key', 'set_projections_trainable',
           'init_projection', 'overlap_offsets', 'required_meta_width', 'subspace_overlap',
           'layer_sharing_level', 'orthogonality_loss', 'renormalize_projections', 'sharing_levels']
