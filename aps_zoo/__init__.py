"""aps-zoo: channel-number search with Affine Parameter Sharing, shipped as timm models.

Importing the package registers every ``aps_*`` model with timm.
"""
from .channels import ChannelConfig, ChannelConfigError
from . import models  # noqa: F401  (registers the aps_* models with timm)

__version__ = '0.1.0'
__all__ = ['ChannelConfig', 'ChannelConfigError', '__version__']
