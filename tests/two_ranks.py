"""Run under `accelerate launch` by tests/test_distributed.py: what each rank saw and holds, one JSON per rank.

    two_ranks.py train RECIPE OUT_DIR [--resume] [--kill-after-epoch N] [--nan-on-rank1-step N]
        aps_zoo.train.train on CPU; each rank writes OUT_DIR/rank<i>.json: a digest per image it trained on
        (per epoch), its random seed after the loaders were prepared, and a digest of its weights at the end
        of training (before the kept weights are reloaded). --nan-on-rank1-step: rank 1 alone gets a NaN
        loss at that step.
    two_ranks.py buckets OUT_DIR
        the tiny search space's supernet wrapped by DDP with and without keep_projections_out_of_ddp: the
        bytes DDP buckets, the bytes of the meta weights and of the projections, and a digest of the
        projections after three penalised steps.
    two_ranks.py cli ARGS...
        `aps-zoo ARGS...` (aps_zoo.cli.main, as `-m aps_zoo.cli ARGS...` runs it); a non-zero exit code ends
        the launch with that code.
    two_ranks.py batch JOBS_JSON
        the jobs of a JSON list (each the arguments of one of the commands above), one after the other in
        the same two ranks: one launch (process start, imports, gloo) instead of one per job. A job that
        is killed (--kill-after-epoch) has written its rank files; the message goes into them under 'error' and
        the next job starts. The patches of a train job are undone after it.
"""
import hashlib
import json
import sys
import zlib
from pathlib import Path

import torch
import torch.nn.functional as F

import aps_zoo.runs as runs
import aps_zoo.train as train_mod
from aps_zoo.recipe import load_recipe


def _digest(tensors) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _write(out: Path, record) -> None:
    from accelerate.state import PartialState
    out.mkdir(parents=True, exist_ok=True)
    (out / f'rank{PartialState().process_index}.json').write_text(json.dumps(record))


def run_train(recipe_path: str, out: Path, resume: bool, kill_after: int, nan_step: int) -> None:
    seen, record = {}, {}
    step, train_epoch, finish = train_mod._Trainer._step, train_mod._Trainer.train_epoch, train_mod._Trainer.finish

    def recording_step(self, images, labels):
        epoch = str(self.state['epoch'])
        seen.setdefault(epoch, []).extend(zlib.crc32(x.numpy().tobytes()) for x in images.float())
        if self.accelerator.process_index == 1 and self.state['step'] + 1 == nan_step:
            images = images * float('nan')
        return step(self, images, labels)

    def seeded_epoch(self, epoch):
        record.setdefault('seed', torch.initial_seed())
        return train_epoch(self, epoch)

    def digesting_finish(self):
        record['weights'] = _digest(self.accelerator.unwrap_model(self.model).state_dict().values())
        return finish(self)

    save = runs.save_checkpoint

    def save_then_die(accelerator, run_dir, epoch, extra):
        path = save(accelerator, run_dir, epoch, extra)
        if epoch == kill_after:
            _write(out, {**record, 'images': seen})
            raise SystemExit(f'killed after the checkpoint of epoch {epoch}')
        return path

    train_mod._Trainer._step, train_mod._Trainer.train_epoch = recording_step, seeded_epoch
    train_mod._Trainer.finish, runs.save_checkpoint = digesting_finish, save_then_die
    try:
        train_mod.train(load_recipe(recipe_path), resume=resume, cpu=True)
    finally:
        train_mod._Trainer._step, train_mod._Trainer.train_epoch = step, train_epoch
        train_mod._Trainer.finish, runs.save_checkpoint = finish, save
    _write(out, {**record, 'images': seen})


def run_buckets(out: Path) -> None:
    from aps_zoo.aps import add_orthogonality_grad_, attach_projections, renormalize_projections
    from aps_zoo.spaces import APSSupernet, build_space
    from aps_zoo.spaces.supernet import keep_projections_out_of_ddp
    space = build_space('resnet_cifar', 8, [4, 8, 16], num_classes=10, input_size=(3, 8, 8))
    record = {}
    for ignore in (False, True):
        torch.manual_seed(0)  # the same supernet on every rank (Run seeds every process alike)
        supernet = APSSupernet(space)
        record['meta_bytes'] = sum(p.numel() * 4 for p in supernet.meta_parameters())
        record['projection_bytes'] = sum(p.numel() * 4 for p in supernet.projection_parameters())
        attach_projections(supernet, False)  # projection_grad: penalty (the search's set_schedule)
        if ignore:
            keep_projections_out_of_ddp(supernet, 'penalty', True)
        accelerator = runs.make_accelerator(cpu=True, find_unused_parameters=True)  # as the search
        model = accelerator.prepare(supernet)
        optimizer = torch.optim.SGD(supernet.parameters(), lr=0.1, momentum=0.9)
        rank = accelerator.process_index
        for i in range(3):
            x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(10 * i + rank))  # per-rank data
            widths = space.widths(space.largest())
            F.cross_entropy(model(x, widths), torch.arange(4)).backward()
            add_orthogonality_grad_(supernet, 5e-3)
            optimizer.step()
            renormalize_projections(supernet)
            optimizer.zero_grad()
        key = 'ignored' if ignore else 'all'
        record[f'ddp_bytes_{key}'] = model._get_ddp_logging_data()['total_parameter_size_bytes']
        record[f'projections_{key}'] = _digest(supernet.projection_parameters())
        record[f'meta_{key}'] = _digest(supernet.meta_parameters())
    _write(out, record)


def run(args) -> None:
    if args[0] == 'train':
        def option(name):
            return int(args[args.index(name) + 1]) if name in args else -1
        run_train(args[1], Path(args[2]), '--resume' in args, option('--kill-after-epoch'),
                  option('--nan-on-rank1-step'))
    elif args[0] == 'cli':
        from aps_zoo.cli import main
        code = main(args[1:])
        if code:
            sys.exit(code)
    else:
        run_buckets(Path(args[1]))


def run_batch(jobs_path: str) -> None:
    from accelerate.state import PartialState
    for args in json.loads(Path(jobs_path).read_text()):
        try:
            run(args)
        except SystemExit as e:  # --kill-after-epoch; any other failure ends the launch, as a job of its own would
            if '--kill-after-epoch' not in args:
                raise
            out = Path(args[2])
            rank = out / f'rank{PartialState().process_index}.json'
            _write(out, {**json.loads(rank.read_text()), 'error': str(e)})


if __name__ == '__main__':
    if sys.argv[1] == 'batch':
        run_batch(sys.argv[2])
    else:
        run(sys.argv[1:])
