"""Affine Parameter Sharing: projections, APS layers, sharing level and regulariser (torch only)."""
from .layers import APSBatchNorm2d, APSConv2d, APSLinear, aps_modules, attach_projections, pair_key
from .projection import ProjectionBank, init_projection, overlap_offsets, required_meta_width, subspace_overlap
from .sharing import (add_orthogonality_grad_, grouped_orthogonality, layer_sharing_level, mean_sharing_level,
                      orthogonality_loss, orthogonality_terms, renormalize_projections, sharing_levels)

__all__ = ['APSBatchNorm2d', 'APSConv2d', 'APSLinear', 'aps_modules', 'attach_projections', 'pair_key',
           'ProjectionBank', 'init_projection', 'overlap_offsets', 'required_meta_width', 'subspace_overlap',
           'add_orthogonality_grad_', 'grouped_orthogonality', 'layer_sharing_level', 'mean_sharing_level',
           'orthogonality_loss', 'orthogonality_terms', 'renormalize_projections', 'sharing_levels']
