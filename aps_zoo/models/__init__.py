"""timm model classes built from a ChannelConfig; importing this registers the aps_* models."""
