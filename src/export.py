"""Export a trained model: ``python -m src.export --checkpoint CKPT --out DIR [--checkpoint_key KEY]``.

Writes into DIR:

- ``backbone.pth`` (a plain state_dict) and ``backbone.safetensors`` (when the ``safetensors`` package is
  installed): the backbone alone, keys in the layout of torchvision's ResNets (Suave's ResNet-18/34/50; the
  SwAV release's layout differs only by a parameter-free padding module) or timm's ViTs, which is DINO's
  (``vit_small_patch16_224`` ...), ready for ``load_state_dict(strict=True)`` into those models without their
  classifier (``fc = nn.Identity()`` / ``num_classes=0``). When torchvision / timm is installed the export is
  verified here: loaded strict into the real model, outputs compared with ours.
- ``classifier.pt2``: the whole classifier as a ``torch.export`` program that runs with torch alone:
  images in [0, 1], (B, 3, crop, crop) -> class scores / temperature (softmax: the class probabilities),
  normalisation included; backbone, projection / head, prototypes (as validation uses them) and temperature of
  the network asked (default: the one validation reports first, Daino's teacher and Suave's student).
  ``torch.export.load(path).module()(images)``.
- ``export.json``: the class names in index order, the preprocessing (resize, crop, mean, std), the target
  model and how to build it, the verification.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from src.atomic_io import atomic_open, atomic_path, write_json_atomic
from src.errors import UserError
from src.models import BackboneFlags
from src.trained import FLAGS_HELP, ClassScores, TrainedModel, classifier, load_trained

@dataclass
class BackboneTarget:
    """The public model the exported backbone loads into (library "" when there is none)."""

    library: str
    model: str
    small_stem: bool = False
    code: str = ""


def backbone_target(args: argparse.Namespace) -> BackboneTarget:
    """torchvision / timm model with the key layout of ``--arch`` (and its stem / patch size):
    ``src.models.BackboneFlags.public_model``."""
    flags = BackboneFlags.from_args(args)
    (library, name), small_stem = flags.public_model(), flags.small_stem and not flags.is_vit
    if library == "torchvision":
        code = f"model = torchvision.models.{name}(weights=None); model.fc = torch.nn.Identity()"
        if small_stem:
            code += ("; model.conv1 = torch.nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False); "
                     "model.maxpool = torch.nn.Identity()")
        return BackboneTarget("torchvision", name, small_stem, code)
    if library == "timm":
        return BackboneTarget("timm", name, False, f"model = timm.create_model('{name}', pretrained=False, num_classes=0)")
    return BackboneTarget("", name, small_stem,
                          f"model = src.models.build_backbone('{name}') (no torchvision / timm equivalent)")


def build_target(target: BackboneTarget) -> nn.Module:
    """The real torchvision / timm model of ``target``, without classifier (ImportError if not installed)."""
    if target.library == "torchvision":
        import torchvision

        model = getattr(torchvision.models, target.model)(weights=None)
        model.fc = nn.Identity()
        if target.small_stem:
            model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
            model.maxpool = nn.Identity()
        return model.eval()
    if target.library == "timm":
        import timm

        if not timm.is_model(target.model):
            raise ValueError(f"timm {timm.__version__} has no model {target.model}")
        return timm.create_model(target.model, pretrained=False, num_classes=0).eval()
    raise ValueError(f"no torchvision / timm model for {target.model}")


def backbone_state(backbone: nn.Module) -> dict[str, torch.Tensor]:
    """Contiguous CPU copies of the backbone's tensors (safetensors refuses shared or strided storage)."""
    return {key: value.detach().to("cpu").contiguous().clone() for key, value in backbone.state_dict().items()}


@torch.no_grad()
def verify_backbone(state: dict[str, torch.Tensor], backbone: nn.Module, target: BackboneTarget,
                    image_size: int) -> dict[str, Any]:
    """Load ``state`` strict into the real target model and compare its output with ``backbone``'s."""
    try:
        model = build_target(target)
    except ImportError as error:
        return {"verified": False, "reason": f"{target.library} is not installed ({error})"}
    except ValueError as error:
        return {"verified": False, "reason": str(error)}
    model.load_state_dict(state, strict=True)
    images = torch.randn(2, 3, image_size, image_size, generator=torch.Generator().manual_seed(0))
    ours = backbone.eval().to("cpu")(images)
    theirs = model(images)
    return {"verified": True, "strict": True, "input": [2, 3, image_size, image_size],
            "max_abs_diff": float((ours - theirs).abs().max())}


class ClassifierProgram(nn.Module):
    """Images in [0, 1] -> normalise (mean, std) -> ``ClassScores`` (scores / temperature)."""

    def __init__(self, scores: ClassScores, mean: list[float], std: list[float]) -> None:
        super().__init__()
        self.scores = scores
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.scores((images - self.mean) / self.std)


def export_program(trained: TrainedModel, network_name: str | None, path: str, metadata: dict) -> None:
    """``torch.export`` the classifier with a dynamic batch size and save it with ``metadata`` inside."""
    pre = trained.preprocessing
    # images used at their own size (--val_resize 0 --val_crop 0, e.g. 28-px Fashion-MNIST): the training crop
    size = pre["crop"] or pre["resize"] or int(getattr(trained.args, "lab_crop_size", 224))
    scores = classifier(trained, network_name).to("cpu", memory_format=torch.contiguous_format)  # not channels_last
    program = ClassifierProgram(scores, pre["mean"], pre["std"]).eval()
    example = torch.rand(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=65536)
    with torch.no_grad():
        exported = torch.export.export(program, (example,), dynamic_shapes=({0: batch},))
    with atomic_open(path) as handle:
        torch.export.save(exported, handle, extra_files={"export.json": json.dumps(metadata)})


def export_model(checkpoint: str, out_dir: str, checkpoint_key: str | None = None, data_path: str | None = None,
                 program: bool = True, flags: Sequence[str] = ()) -> dict[str, Any]:
    """Write the backbone (state_dict, safetensors), the classifier program and export.json; return the record.
    ``flags``: the method's flags for a file the release wrote (``src.trained.load_trained``'s command_line)."""
    trained = load_trained(checkpoint, "cpu", data_path=data_path, command_line=flags)
    name = checkpoint_key or trained.main_network
    scores = classifier(trained, name)  # refuses a network the checkpoint lacks
    backbone = scores.network.backbone
    os.makedirs(out_dir, exist_ok=True)
    target = backbone_target(trained.args)
    state = backbone_state(backbone)
    written = [os.path.join(out_dir, "backbone.pth")]
    with atomic_open(written[0]) as handle:
        torch.save(state, handle)
    metadata = {"checkpoint": trained.path, "method": trained.method_name, "network": name,
                "epoch": trained.epoch, "arch": trained.args.arch, "classes": trained.classes,
                "preprocessing": trained.preprocessing, "temperature": trained.temperature,
                "backbone_target": asdict(target), **({"flags_source": trained.flags_source}
                                                       if trained.flags_source else {})}
    try:
        from safetensors.torch import save_file

        written.append(os.path.join(out_dir, "backbone.safetensors"))
        with atomic_path(written[-1]) as temporary:
            save_file(state, str(temporary), metadata={"format": "pt", "target": f"{target.library}:{target.model}"})
    except ImportError:
        metadata["safetensors"] = "not written: pip install safetensors"
    if target.library:
        size = 224 if target.library == "timm" else (trained.preprocessing["crop"] or trained.args.lab_crop_size)
        metadata["verification"] = verify_backbone(state, backbone, target, size)
    if program:
        written.append(os.path.join(out_dir, "classifier.pt2"))
        export_program(trained, name, written[-1], metadata)
    metadata["files"] = written
    write_json_atomic(os.path.join(out_dir, "export.json"), metadata)
    return metadata


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser("python -m src.export", description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", required=True, help="EXP/checkpoint.pth of a Suave or Daino run")
    parser.add_argument("--out", required=True, help="folder to write backbone.pth/.safetensors, classifier.pt2")
    parser.add_argument("--checkpoint_key", default=None, choices=["student", "teacher"],
                        help="network to export (default: Daino's teacher, Suave's student)")
    parser.add_argument("--data_path", default=None, help="for checkpoints without layout_version (version 1) and files the "
                        "release wrote: the data the run was trained on (its train/ class folders name the classes)")
    parser.add_argument("--flags", default="", help=FLAGS_HELP)
    parser.add_argument("--no_program", action="store_true", help="skip classifier.pt2 (the backbone only)")
    args = parser.parse_args(argv)
    try:
        record = export_model(args.checkpoint, args.out, args.checkpoint_key, args.data_path, not args.no_program,
                              shlex.split(args.flags))
    except (UserError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    target = record["backbone_target"]
    print(f"exported the {record['network']} of {record['checkpoint']} ({record['method']}, {record['arch']})")
    if "flags_source" in record:
        print(f"  network flags from {record['flags_source']}")
    for path in record["files"]:
        print(f"  wrote {path}")
    print(f"  backbone loads strict=True into: {target['code']}")
    check = record.get("verification")
    if check and check["verified"]:
        print(f"  verified with {target['library']}.{target['model']}: strict load, max |output diff| "
              f"{check['max_abs_diff']:.2e} on {tuple(check['input'])}")
    elif check:
        print(f"  not verified: {check['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
