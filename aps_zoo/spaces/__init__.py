"""Search spaces (candidate widths, decisions, budgets) and the APS supernet builder."""
from .space import SearchSpace, SearchSpaceError, build_space, entry_stages
from .supernet import APSSupernet

__all__ = ['SearchSpace', 'SearchSpaceError', 'build_space', 'entry_stages', 'APSSupernet', 'space_from_recipe']


def space_from_recipe(recipe, num_classes: int, input_size) -> SearchSpace:
    """The SearchSpace a recipe's ``space`` section describes (``space.overlap`` included), for the given data."""
    s = recipe.space
    return build_space(s.family, s.depth, s.candidates, num_classes=num_classes, input_size=input_size,
                       stage_multipliers=s.stage_multipliers, meta_width=s.meta_width, blockwise=s.blockwise,
                       overlap=s.overlap)
