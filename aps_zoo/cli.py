"""`aps-zoo` command line: search, train, export, push, flops, list, run.

Runs the same under ``python -m aps_zoo.cli`` and ``accelerate launch -m aps_zoo.cli``.
Errors in user input end with one clear line (exit code 2), never a traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional

from .channels import ChannelConfig, ChannelConfigError


def _recipe(args):
    from .recipe import load_recipe
    return load_recipe(args.recipe, args.set)


def _cpu(args) -> Optional[bool]:
    return True if args.cpu else None


def cmd_search(args) -> None:
    from .search.loop import search
    result = search(_recipe(args), resume=args.resume, cpu=_cpu(args))
    if _is_main():
        print(f"searched config: {result.config_path}  ({', '.join(map(str, result.config.widths))})")
        print(f"report and plots: {result.out_dir}  (search_report.md, search_curves.png, widths.png)")


def cmd_train(args) -> None:
    from .train import train
    result = train(_recipe(args), args.config, resume=args.resume, cpu=_cpu(args))
    if _is_main():
        print(f"trained weights and curves: {result.out_dir}")


def cmd_export(args) -> None:
    from .hub import export_run
    folder = export_run(args.run, args.out, hub_config=args.hub_config, repo_id=args.repo_id)
    print(f"exported: {folder}\nload it with: timm.create_model('local-dir:{folder}')  (after `import aps_zoo`)")


def cmd_push(args) -> None:
    from .hub import push, push_all
    if args.all:
        for row in push_all(args.hub_configs, private=args.private, revision=args.revision,
                            commit_message=args.message):
            print(f"{row['name']}: {row['status']} ({row['detail']})")
        return
    if not args.folder or not args.repo_id:
        raise SystemExit('aps-zoo push: give FOLDER and REPO_ID, or --all')
    print(push(args.folder, args.repo_id, private=args.private, revision=args.revision,
               commit_message=args.message))


def cmd_flops(args) -> None:
    from .flops import count_macs, count_params
    target = args.config
    if Path(target).is_file():
        config = ChannelConfig.load(target)
    else:
        from .models import zoo_config
        config = zoo_config(target)
    print(f"{config.name}: {count_macs(config):,} MACs ({count_macs(config) / 1e6:.2f}M), "
          f"{count_params(config):,} params at input {config.input_size}")


def cmd_list(args) -> None:
    from .hub import zoo_table
    columns = [('name', 'name'), ('family', 'family'), ('MACs', 'macs'), ('params', 'params'),
               ('provenance', 'provenance'), ('top-1', 'top1')]

    def cell(row, key):
        value = row.get(key)
        if value is None:
            return '-'
        if key in ('macs', 'params'):
            return f'{value / 1e6:.1f}M'
        return f'{value:.2f}' if isinstance(value, float) else str(value)

    cells = [[cell(r, key) for _, key in columns] for r in zoo_table()]
    widths = [max(len(title), *(len(c[i]) for c in cells)) for i, (title, _) in enumerate(columns)]
    print('  '.join(title.ljust(w) for (title, _), w in zip(columns, widths)))
    for c in cells:
        print('  '.join(v.ljust(w) for v, w in zip(c, widths)))


def cmd_run(args) -> None:
    from .hub import export_run
    from .search.loop import search
    from .train import train
    recipe = _recipe(args)
    result = search(recipe, resume=args.resume, cpu=_cpu(args))
    trained = train(recipe, result.config_path, resume=args.resume, cpu=_cpu(args))
    if _is_main():
        folder = export_run(trained.out_dir, recipe.run_dir / 'export')
        print(f"searched config: {result.config_path}")
        print(f"exported model:  {folder}")
        print(f"load it:         import aps_zoo, timm; timm.create_model('local-dir:{folder}')")


def _is_main() -> bool:
    from accelerate.state import PartialState
    return PartialState().is_main_process


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog='aps-zoo', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)

    def recipe_command(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument('recipe', help='YAML recipe (see recipes/)')
        p.add_argument('--resume', action='store_true', help='continue from the newest checkpoint of the run')
        p.add_argument('--cpu', action='store_true', help='run on CPU even if a GPU is present')
        p.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                       help='override a recipe value (repeatable)')
        p.set_defaults(func=func)
        return p

    recipe_command('search', cmd_search, 'APS channel search')
    p = recipe_command('train', cmd_train, 'retrain a ChannelConfig or aps_* model')
    p.add_argument('--config', help='ChannelConfig JSON or aps_* model name (default: recipe train.config)')
    recipe_command('run', cmd_run, 'search -> train -> export in one go')

    p = sub.add_parser('export', help='export a trained run to a Hub folder')
    p.add_argument('run', help='training output folder (holds model.safetensors and channel_config.json)')
    p.add_argument('out', help='folder to write')
    p.add_argument('--hub-config', help='hub_configs/<name>.yaml with repo id, license and card fields')
    p.add_argument('--repo-id', help='Hub repo id the card and usage snippet name (default: hub config, recipe '
                                     'export.repo_id, or aps-zoo/<run name>)')
    p.set_defaults(func=cmd_export)

    p = sub.add_parser('push', help='push an exported folder to the Hugging Face Hub')
    p.add_argument('folder', nargs='?')
    p.add_argument('repo_id', nargs='?')
    p.add_argument('--all', action='store_true', help='publish every model in --hub-configs')
    p.add_argument('--hub-configs', default='hub_configs')
    p.add_argument('--private', action='store_true')
    p.add_argument('--revision')
    p.add_argument('-m', '--message', default='Upload aps-zoo model')
    p.set_defaults(func=cmd_push)

    p = sub.add_parser('flops', help='MACs and params of a ChannelConfig JSON or aps_* model')
    p.add_argument('config')
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser('list', help='table of the zoo')
    p.set_defaults(func=cmd_list)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `aps-zoo` command."""
    args = build_parser().parse_args(argv)
    from ._io import WriteError
    from .hub import HubError
    from .runs import CheckpointError, NonFiniteLossError
    try:
        args.func(args)
    except (ValueError, HubError, CheckpointError, NonFiniteLossError, FileNotFoundError, WriteError) as e:
        # RecipeError, ChannelConfigError, SearchSpaceError, HubConfigError and DataError are ValueErrors
        print(f"aps-zoo {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == '__main__':
    sys.exit(main())
