"""The file names of aps-zoo's folders, each defined once.

A search or training run folder (``<output_dir>/<name>/search`` or ``.../train``) holds the run's
ChannelConfig, weights, results, recipe, metrics log, plots and ``checkpoints/``; a search with a
trained parent adds ``inherited/``. An exported folder (a Hub model repo) holds timm's ``config.json``,
the weights, the model card, the widths plot and the recipe.
"""
WEIGHTS_FILE = 'model.safetensors'          # run folders, the inherited child and exported folders
CHANNEL_CONFIG_FILE = 'channel_config.json'  # run folders and the inherited child
RESULTS_FILE = 'results.json'                # a training run's measured results
RECIPE_FILE = 'recipe.yaml'                  # the recipe a run used (also in exported folders)
METRICS_FILE = 'metrics.jsonl'               # one JSON line per epoch
SEARCH_REPORT_FILE = 'search_report.md'
SEARCH_CURVES_FILE = 'search_curves.png'
SHARING_PLOT_FILE = 'sharing_layers.png'
WIDTHS_PLOT_FILE = 'widths.png'              # search folders and exported folders
TRAIN_CURVES_FILE = 'curves.png'
INHERITED_DIR = 'inherited'                  # the child a search with space.init_from inherits
STATE_TENSORS_FILE = 'state.safetensors'     # a checkpoint's extra state: tensors
STATE_JSON_FILE = 'state.json'               # ... and everything else, as JSON (no pickle)
HUB_CONFIG_FILE = 'config.json'              # timm's config of an exported folder
CARD_FILE = 'README.md'                      # the model card of an exported folder
