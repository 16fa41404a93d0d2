"""Top-1 of the shipped aps_resnet20_fashion_mnist weights on the 10,000 Fashion-MNIST test images, loaded the way
a timm user loads them: ``timm.create_model(..., pretrained=True)`` and the transform timm resolves from the model.
It must print the top-1 its card states.

    python benchmarks/zoo_fashion_mnist.py [--folder /usr/share/datasets/fashion-mnist]
"""
import argparse
from pathlib import Path

import timm
import torch
from PIL import Image

import aps_zoo  # noqa: F401  (registers the aps_* models)
from aps_zoo.idx import read_split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--folder', type=Path, default=Path('/usr/share/datasets/fashion-mnist'),
                        help='IDX folder (Debian: apt-get install dataset-fashion-mnist)')
    parser.add_argument('--model', default='aps_resnet20_fashion_mnist')
    args = parser.parse_args()
    images, labels = read_split(args.folder, 'test')
    labels = torch.tensor(labels, dtype=torch.long)
    model = timm.create_model(args.model, pretrained=True).eval()
    config = timm.data.resolve_model_data_config(model)
    transform = timm.data.create_transform(**config)
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(images), 500):
            x = torch.stack([transform(Image.fromarray(im).convert('RGB')) for im in images[i:i + 500]])
            correct += int((model(x).argmax(-1) == labels[i:i + 500]).sum())
    print(f'{args.model}: top-1 {100 * correct / len(images):.2f}% on {len(images)} test images '
          f'({args.folder}), preprocessing {config}')


if __name__ == '__main__':
    main()
