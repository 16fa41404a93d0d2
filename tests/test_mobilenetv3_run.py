"""The MobileNetV3-Large family end to end on digits at 16x16: `aps-zoo run` (search, retrain, export), then the
exported folder loads through timm as the network that was trained."""
import json

import timm
import torch
import yaml
from safetensors.torch import load_file

from aps_zoo import cli
from aps_zoo.channels import ChannelConfig
from aps_zoo.flops import count_macs
from aps_zoo.models import create_model_from_config

BUDGET = 7.0e4  # the space spans 33k-92k MACs at 16x16


def test_mobilenetv3_search_train_export_load(tmp_path, capsys):
    recipe = {
        'name': 'mbv3', 'seed': 0, 'output_dir': str(tmp_path),
        'data': {'dataset': 'digits', 'image_size': 16, 'val_fraction': 0.2, 'batch_size': 64, 'augment': False},
        'space': {'family': 'mobilenetv3_large', 'depth': 0, 'candidates': [4, 8]},
        'search': {'budget_macs': BUDGET, 'epochs': 2, 'warmup_epochs': 1, 'steps_per_epoch': 2,
                   'decode_candidates': 8, 'decode_top_k': 2, 'band_samples': 4, 'calibration_batches': 1,
                   'controller': {'steps_per_epoch': 2}},
        'train': {'epochs': 1, 'steps_per_epoch': 4, 'select_best': False},
    }
    path = tmp_path / 'mbv3.yaml'
    path.write_text(yaml.safe_dump(recipe))
    assert cli.main(['run', str(path), '--cpu']) == 0
    run = tmp_path / 'mbv3'
    searched = ChannelConfig.load(run / 'search' / 'channel_config.json')
    assert searched.family == 'mobilenetv3_large' and count_macs(searched) <= BUDGET
    assert set(searched.widths[:3]) <= {4, 8}  # stem and block 0 take the candidates

    folder = run / 'export'
    assert json.loads((folder / 'config.json').read_text())['architecture'] == 'aps_mobilenetv3_large_100'
    loaded = timm.create_model(f'local-dir:{folder}', pretrained=True).eval()
    assert loaded.channel_config.widths == searched.widths and loaded.pretrained_cfg['input_size'] == (3, 16, 16)
    trained = create_model_from_config(searched).eval()
    trained.load_state_dict(load_file(str(run / 'train' / 'model.safetensors')))
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        assert torch.equal(loaded(x), trained(x))
