"""`aps-zoo` command line: search, train, export, push, flops, list, run.

Runs the same under ``python -m aps_zoo.cli`` and ``accelerate launch -m aps_zoo.cli``.
Errors in user input end with one clear line (exit code 2), never a traceback; Ctrl-C ends with
exit code 130 and the command that resumes the run; a SIGTERM (a preempted job) with a checkpoint of where
the run was and exit code 143. ``--resume auto`` resumes a run that has a checkpoint and starts it
otherwise, so one command serves the first submission and every requeue.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import List, Optional

import yaml

from .channels import ChannelConfig

INTERRUPTED = 130  # the shell's code for a process ended by SIGINT
PREEMPTED = 143  # the shell's code for a process ended by SIGTERM


class UsageError(ValueError):
    """Arguments that do not fit together (reported in one line, exit code 2)."""


def _launch_rank() -> int:
    """This process's rank under ``accelerate launch``/``torchrun`` (0 when launched alone), read before any
    Accelerator exists so that notes and recipe errors print once."""
    return int(os.environ.get('RANK', '0'))


def check_text_file(path, what: str) -> None:
    """Refuse a folder or a file that is not UTF-8 text, naming it, before any work starts."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{what} {path} is a folder; give a file")
    if path.is_file():
        try:
            path.read_bytes().decode('utf-8')
        except UnicodeDecodeError as e:
            raise UsageError(f"{what} {path} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def check_output_dir(recipe) -> None:
    """Refuse an ``output_dir`` (or run folder) that exists as a file, before any work starts."""
    for folder in (recipe.run_dir, *recipe.run_dir.parents):
        if folder.exists():
            if not folder.is_dir():
                raise UsageError(f"recipe key 'output_dir': {folder} is a file, not a folder")
            return


def _scaled_warmup(path, overrides: List[str]) -> List[str]:
    """``overrides``, plus a scaled ``search.warmup_epochs`` when ``--set search.epochs=N`` leaves no search
    epoch after the recipe's warm-up: it keeps the recipe's warm-up fraction (printed once as a note)."""
    from .recipe import load_recipe
    keys = [item.partition('=')[0].strip() for item in overrides]
    if 'search.epochs' not in keys or 'search.warmup_epochs' in keys:
        return overrides
    epochs = yaml.safe_load(overrides[len(keys) - 1 - keys[::-1].index('search.epochs')].partition('=')[2])
    base = load_recipe(path, [item for item, key in zip(overrides, keys) if key != 'search.epochs']).search
    if not isinstance(epochs, int) or isinstance(epochs, bool) or not 0 < epochs <= base.warmup_epochs:
        return overrides  # a bad value is named by the recipe check; a longer search keeps its warm-up
    warmup = base.warmup_epochs * epochs // base.epochs
    if _launch_rank() == 0:
        print(f"note: search.epochs={epochs} leaves no search epoch after the recipe's {base.warmup_epochs} "
              f"warm-up epochs; warm-up scaled to {warmup} (the recipe's {base.warmup_epochs}/{base.epochs}); "
              f"set search.warmup_epochs to choose", file=sys.stderr)
    return [*overrides, f'search.warmup_epochs={warmup}']


def load_cli_recipe(path, overrides: List[str]):
    """The recipe at ``path`` with ``--set`` overrides, its file and output folder checked before any work.
    Under a launcher only rank 0 reports a bad recipe (every rank reads the same file)."""
    from .recipe import load_recipe
    try:
        check_text_file(path, 'recipe')
        recipe = load_recipe(path, _scaled_warmup(path, overrides))
        check_output_dir(recipe)
    except ValueError:
        if _launch_rank() != 0:
            raise SystemExit(2)
        raise
    return recipe


def _recipe(args):
    return load_cli_recipe(args.recipe, args.set)


def _cpu(args) -> Optional[bool]:
    return True if args.cpu else None


def cmd_search(args) -> None:
    """Run `aps-zoo search`: the APS search of a recipe."""
    from .search.loop import search
    result = search(_recipe(args), resume=args.resume, cpu=_cpu(args))
    if _is_main():
        print(f"searched config: {result.config_path}  ({', '.join(map(str, result.config.widths))})")
        print(f"report and plots: {result.out_dir}  (search_report.md, search_curves.png, widths.png)")


def cmd_train(args) -> None:
    """Run `aps-zoo train`: retrain a searched or zoo config."""
    from .train import train
    if args.config:
        check_text_file(args.config, '--config')
    result = train(_recipe(args), args.config, resume=args.resume, cpu=_cpu(args), init=args.init)
    if _is_main():
        print(f"trained weights and curves: {result.out_dir}")


def cmd_export(args) -> None:
    """Run `aps-zoo export`: a trained run folder to a Hub folder."""
    from .hub import export_run, load_line
    folder = export_run(args.run, args.out, hub_config=args.hub_config, repo_id=args.repo_id)
    print(f"exported: {folder}\nload it with: {load_line(folder)}  (after `import aps_zoo`)")


def cmd_push(args) -> None:
    """Run `aps-zoo push`: upload exported folders to the Hub."""
    from .hub import push, push_all
    if args.all:
        for row in push_all(args.hub_configs, private=args.private, revision=args.revision,
                            commit_message=args.message):
            print(f"{row['name']}: {row['status']} ({row['detail']})")
        return
    if not args.folder or not args.repo_id:
        raise UsageError('give FOLDER and a non-empty REPO_ID (org/name), or --all')
    print(push(args.folder, args.repo_id, private=args.private, revision=args.revision,
               commit_message=args.message))


def cmd_flops(args) -> None:
    """Run `aps-zoo flops`: MACs and parameters of a zoo name or a ChannelConfig JSON."""
    from .flops import count_macs, count_params
    target = args.config
    check_text_file(target, 'channel config')
    if Path(target).is_file():
        config = ChannelConfig.load(target)
    else:
        from .models import zoo_config
        config = zoo_config(target)
    print(f"{config.name}: {count_macs(config):,} MACs ({count_macs(config) / 1e6:.2f}M), "
          f"{count_params(config):,} params at input {config.input_size}")


def cmd_list(args) -> None:
    """Run `aps-zoo list`: the zoo table."""
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
    """Run `aps-zoo run`: search, retrain and export in one go."""
    from .hub import export_run, load_line
    from .search.loop import search
    from .train import train
    recipe = _recipe(args)
    result = search(recipe, resume=args.resume, cpu=_cpu(args))
    trained = train(recipe, result.config_path, resume=args.resume, cpu=_cpu(args))
    if _is_main():
        folder = export_run(trained.out_dir, recipe.run_dir / 'export')
        print(f"searched config: {result.config_path}")
        print(f"exported model:  {folder}")
        print(f"load it:         import aps_zoo, timm; {load_line(folder)}")


def _is_main() -> bool:
    from accelerate.state import PartialState
    return PartialState().is_main_process


def build_parser() -> argparse.ArgumentParser:
    """The `aps-zoo` argument parser with every subcommand."""
    parser = argparse.ArgumentParser(prog='aps-zoo', description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest='command', required=True)

    def recipe_command(name, func, help_text):
        p = sub.add_parser(name, help=help_text)
        p.add_argument('recipe', help='YAML recipe (see recipes/)')
        p.add_argument('--resume', nargs='?', const=True, default=False, type=_resume_value, metavar='auto',
                       help="continue from the newest checkpoint of the run; '--resume auto': continue if the run "
                            "has a checkpoint, else start it (one command for a job and its requeues)")
        p.add_argument('--cpu', action='store_true', help='run on CPU even if a GPU is present')
        p.add_argument('--set', action='append', default=[], metavar='SECTION.KEY=VALUE',
                       help='override a recipe value (repeatable)')
        p.set_defaults(func=func)
        return p

    recipe_command('search', cmd_search, 'APS channel search')
    p = recipe_command('train', cmd_train, 'retrain a ChannelConfig or aps_* model')
    p.add_argument('--config', help='ChannelConfig JSON or aps_* model name (default: recipe train.config)')
    p.add_argument('--init', choices=('random', 'inherited'),
                   help='start weights (default: recipe train.init); inherited: those the search wrote from its '
                        'parent (space.init_from)')
    recipe_command('run', cmd_run, 'search -> train -> export in one go')

    p = sub.add_parser('export', help='export a trained run to a Hub folder')
    p.add_argument('run', help='training output folder (holds model.safetensors and channel_config.json)')
    p.add_argument('out', help='folder to write')
    p.add_argument('--hub-config', help='hub_configs/<name>.yaml with repo id, license and card fields')
    p.add_argument('--repo-id', help='Hub repo id the card and usage snippet name (default: hub config, recipe '
                                     'export.repo_id, or aps-zoo/<run name>)')
    p.set_defaults(func=cmd_export)

    p = sub.add_parser('push', help='push an exported folder to the Hugging Face Hub')
    p.add_argument('folder', nargs='?', help='exported folder (from `aps-zoo export` or `run`)')
    p.add_argument('repo_id', nargs='?', help='Hub repo to create or update, as org/name')
    p.add_argument('--all', action='store_true', help='publish every model in --hub-configs')
    p.add_argument('--hub-configs', default='hub_configs',
                   help='folder of hub configs that --all publishes (default: %(default)s)')
    p.add_argument('--private', action='store_true', help='create the repo as private')
    p.add_argument('--revision', help='branch to push to (default: main)')
    p.add_argument('-m', '--message', default='Upload aps-zoo model', help='commit message (default: %(default)s)')
    p.set_defaults(func=cmd_push)

    p = sub.add_parser('flops', help='MACs and params of a ChannelConfig JSON or aps_* model')
    p.add_argument('config', help='ChannelConfig JSON file or aps_* model name (see `aps-zoo list`)')
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser('list', help='table of the zoo')
    p.set_defaults(func=cmd_list)
    return parser


def _resume_value(text: str):
    if text not in ('auto', RESUME_LATEST):
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: give --resume or --resume auto")
    return 'auto' if text == 'auto' else True


RESUME_LATEST = 'latest'


def _bare_resume(argv: List[str]) -> List[str]:
    """``argv`` with a bare ``--resume`` written ``--resume=latest``, so the recipe may follow it
    (``--resume recipe.yaml``) as before ``--resume auto`` existed."""
    return [f'--resume={RESUME_LATEST}' if tok == '--resume' and argv[i + 1:i + 2] != ['auto'] else tok
            for i, tok in enumerate(argv)]


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the `aps-zoo` command."""
    args = build_parser().parse_args(_bare_resume(sys.argv[1:] if argv is None else list(argv)))
    from .hub import HubError
    from .runs import CheckpointError, NonFiniteLossError, Preempted
    try:
        args.func(args)
    except Preempted as e:
        if _launch_rank() == 0:
            print(f"aps-zoo {args.command}: {e}", file=sys.stderr)
        return PREEMPTED
    except (ValueError, HubError, CheckpointError, NonFiniteLossError, OSError) as e:
        # RecipeError, ChannelConfigError, SearchSpaceError, HubConfigError and DataError are ValueErrors;
        # OSError: files that cannot be read or written (the message names the file)
        print(f"aps-zoo {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if _launch_rank() == 0:
            print(f"aps-zoo {args.command}: {_interrupted_hint(args)}", file=sys.stderr)
        return INTERRUPTED
    return 0


def _interrupted_hint(args) -> str:
    if not hasattr(args, 'resume'):
        return 'interrupted'
    command = ['aps-zoo', args.command, args.recipe, *(f'--set {s}' for s in args.set),
               *(['--config', args.config] if getattr(args, 'config', None) else []), *(['--cpu'] if args.cpu else [])]
    return f"interrupted; resume with --resume: {' '.join(command)} --resume"


if __name__ == '__main__':
    sys.exit(main())
