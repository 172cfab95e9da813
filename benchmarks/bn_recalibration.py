"""Does a model lose accuracy to its BatchNorm statistics? Test top-1 of each network of a checkpoint as saved,
and after its running statistics are recomputed from training images (a cumulative mean over ``--images``
random training images, eval preprocessing, no augmentation; "precise BN").

Written for FixMatch's EMA model, which validates with the student's statistics (the reference code's
behaviour): when the statistics follow fewer steps than the EMA of the weights averages, the EMA model's
accuracy drops, and recomputed statistics recover part of it. The recomputation sees clean images while the
training batches held augmented views, so it also moves a network whose statistics match its weights (the
student): compare the two networks' changes, not the absolute numbers.

    python benchmarks/bn_recalibration.py benchmarks/results/fmnist_10perc/fixmatch/checkpoint.pth

Prints one line per network: test top-1 as saved, with recomputed statistics, and the change.
"""
from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from src.data import ImageDataset, scan_image_folder  # noqa: E402
from src.data_setup import eval_transform  # noqa: E402
from src.evaluate import val_dataset  # noqa: E402
from src.trained import TrainedModel, load_trained  # noqa: E402


def top1(trained: TrainedModel, network: nn.Module, loader: DataLoader) -> float:
    """Test top-1 (%) of ``network`` in eval mode, in the run's validation precision (as ``--evaluate``)."""
    network.eval()
    correct = total = 0
    with torch.no_grad(), trained.eval_precision().autocast():
        for images, labels in loader:
            correct += int((network([trained.prepare(images)]).scores.argmax(-1) == labels).sum())
            total += len(labels)
    return 100.0 * correct / total


def recomputed_statistics(trained: TrainedModel, network: nn.Module, loader: DataLoader) -> nn.Module:
    """A copy of ``network`` whose BatchNorm running statistics are the cumulative mean over ``loader``."""
    network = copy.deepcopy(network)
    for module in network.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.reset_running_stats()
            module.momentum = None  # cumulative moving average
    network.train()
    with torch.no_grad(), trained.eval_precision().autocast():
        for images, _ in loader:
            network([trained.prepare(images)])
    return network.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="EXP/checkpoint.pth of a run of this project")
    parser.add_argument("--data_path", default="data/fashion-mnist", help="DATA with train/ and val/ folders")
    parser.add_argument("--images", type=int, default=12800, help="training images the statistics are taken from")
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0, help="which training images")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    trained = load_trained(args.checkpoint, data_path=args.data_path)
    test = DataLoader(val_dataset(args.data_path, trained), batch_size=1000, num_workers=1)
    class_to_idx = {name: index for index, name in enumerate(trained.classes)}
    train = ImageDataset(scan_image_folder(str(Path(args.data_path) / "train"), class_to_idx), class_to_idx,
                         eval_transform(trained.preprocessing))
    chosen = torch.randperm(len(train), generator=torch.Generator().manual_seed(args.seed))[:args.images]
    train_loader = DataLoader(Subset(train, chosen.tolist()), batch_size=args.batch_size, num_workers=1)

    print(f"{'network':<10} {'as saved':>9} {'recomputed BN':>14} {'change':>7}")
    for name, network in trained.networks.items():
        saved = top1(trained, network, test)
        recomputed = top1(trained, recomputed_statistics(trained, network, train_loader), test)
        print(f"{name:<10} {saved:>9.2f} {recomputed:>14.2f} {recomputed - saved:>+7.2f}", flush=True)


if __name__ == "__main__":
    main()
