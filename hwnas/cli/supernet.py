"""``hwnas supernet``: train a weight-sharing supernet on a dataset, evaluate one of its subnets.

Training is :func:`hwnas.supernet_training.train_supernet_folder` (the pipeline's train stage
calls it too); the helpers that wire :mod:`hwnas.datasets` to :mod:`search_space.training` live in
:mod:`hwnas.data_wiring`, the shared options in :mod:`hwnas.arguments`, so that experiment
scripts train exactly as the command does.
"""

from __future__ import annotations

import argparse

import torch

from hwnas.cli.space import add_space_arg
from hwnas.datasets import AUGMENTATIONS
from search_space import Arch, SearchSpace, UserError, load_supernet
from search_space.evaluation import evaluate_archs
from search_space.train_dist import resolve_device
from search_space.training import STUDENT_RULES, TrainConfig
from hwnas.cli._group import command_group
from hwnas.arguments import add_recipe_args, check_positive, recipe_kwargs
from hwnas.data_wiring import calibration_batches, load_for_space, split_batches
from hwnas.supernet_training import RunSettings, train_supernet_folder


def register(sub) -> None:
    """Add ``hwnas supernet train|eval``."""
    cmds = command_group(sub, "supernet", description="Train a weight-sharing supernet and evaluate its subnets.")

    tr = cmds.add_parser("train", help="train a supernet (sandwich rule, in-place distillation)",
                         description="Train every subnet of a space at once: each step trains the largest subnet "
                         "on the labels and the smallest plus N random ones to match it. Writes OUT/supernet.pt "
                         "(every epoch) and OUT/metrics.jsonl. Multi-GPU: launch with torchrun.")
    add_space_arg(tr)
    _add_data_args(tr, dataset_default="cifar10-jpeg")
    tr.add_argument("--epochs", type=int, default=10, help="training epochs (default 10)")
    tr.add_argument("--time-budget-min", type=float, default=None, help="instead of --epochs: as many epochs as fit "
                    "this many minutes, measured on a throw-away supernet first (its evaluations and checkpoints "
                    "included); a resumed run keeps its plan")
    tr.add_argument("--out", required=True, help="output folder for supernet.pt and metrics.jsonl")
    tr.add_argument("--batch-size", type=int, default=256, help="global batch size (default 256)")
    tr.add_argument("--lr", type=float, default=None, help="peak learning rate (default 0.1 per 256 images, at "
                    "most 0.2: a sandwich step adds several subnets' gradients)")
    tr.add_argument("--weight-decay", type=float, default=5e-4, help="on conv/linear weights (default 5e-4; "
                    "on JPEG-CIFAR-10 at batch 1024, 2e-3 trained better: experiments/results/supernet_cifar/cifar_weight_decay.md)")
    tr.add_argument("--num-random", type=int, default=2, help="random subnets per step besides the largest and "
                    "smallest (default 2)")
    tr.add_argument("--students", default="mixed", choices=sorted(STUDENT_RULES),
                    help="the subnet trained every step besides the largest and the random ones: sandwich (the "
                    "smallest, BigNAS), mixed (the smallest sizes with random block types per layer), uniform "
                    "(one more random subnet) or none (with --num-random 0 the largest trains alone, as a plain "
                    "network: a baseline); default mixed")
    tr.add_argument("--augment", default=None, choices=AUGMENTATIONS,
                    help="training augmentation instead of the dataset's own (crop_flip_cutout adds Cutout to "
                    "crop and flip); default: the dataset's")
    tr.add_argument("--teacher-dropout", type=float, default=None, metavar="P",
                    help="head dropout for the largest subnet only (BigNAS: regularise the teacher, which over-fits, "
                    "not the students, which under-fit); default: the space's dropout for every subnet")
    tr.add_argument("--teacher-cutout", action="store_true",
                    help="Cutout on the largest subnet's labelled view only; the students distil its output on the "
                    "clean view they see (one extra forward of the largest per step)")
    add_recipe_args(tr)
    tr.add_argument("--ema-decay", type=float, default=None, metavar="D",
                    help="average the weights with this decay, e.g. 0.999 (BigNAS); the checkpoint, its evaluations "
                    "and the returned model hold the average (default: off)")
    tr.add_argument("--seed", type=int, default=0, help="seed of weights, subnets, data order and split (default 0)")
    tr.add_argument("--eval-every", type=int, default=1, help="validate largest/smallest every N epochs (default 1)")
    tr.add_argument("--resume", action="store_true", help="continue OUT/supernet.pt exactly where it stopped")
    tr.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    tr.set_defaults(func=_train)

    ev = cmds.add_parser("eval", help="BN-recalibrated accuracy of one subnet on val and test",
                         description="Activate ARCH in a trained supernet, recalibrate its BatchNorm statistics on "
                         "training images, and print its accuracy on the validation and test splits. The dataset "
                         "defaults to the one the checkpoint was trained on.")
    ev.add_argument("--checkpoint", required=True, help="supernet.pt written by 'hwnas supernet train'")
    _add_data_args(ev, dataset_default=None)
    ev.add_argument("arch", help="arch string, or 'largest' / 'smallest'")
    ev.set_defaults(func=_eval)


def _add_data_args(p: argparse.ArgumentParser, dataset_default: str | None) -> None:
    """Dataset options shared by train and eval."""
    default = f" (default {dataset_default})" if dataset_default else " (default: the checkpoint's)"
    p.add_argument("--dataset", default=dataset_default, help="digits, fashion-mnist, cifar10-jpeg, cifar10, "
                   "cifar100 or image-folder" + default)
    p.add_argument("--data", "--data-dir", dest="data", default=None,
                   help="dataset file or folder (digits needs none)" + ("" if dataset_default else
                                                                       "; default: the checkpoint's"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--eval-batch-size", type=int, default=256, help="batch size for BN recalibration and "
                   "evaluation (default 256)")
    p.add_argument("--calib-batches", type=int, default=20, help="training batches for BN recalibration (default 20)")


def parse_arch(space: SearchSpace, text: str) -> Arch:
    """An arch string of ``space``, or the names ``largest`` / ``smallest``."""
    named = {"largest": space.largest, "smallest": space.smallest}
    return named[text]() if text in named else space.parse(text)


# ----------------------------------------------------------------------------- commands


def _train(args) -> int:
    config = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         num_random=args.num_random, students=args.students, augment=args.augment,
                         teacher_dropout=args.teacher_dropout, teacher_cutout=args.teacher_cutout,
                         ema_decay=args.ema_decay, seed=args.seed, **recipe_kwargs(args))
    run = RunSettings(dataset=args.dataset, data=args.data, device=args.device, time_budget_min=args.time_budget_min,
                      eval_every=args.eval_every, eval_batch_size=args.eval_batch_size,
                      calib_batches=args.calib_batches, resume=args.resume, progress=not args.quiet)
    train_supernet_folder(SearchSpace.from_config(args.space), args.out, config, run)
    return 0


def _eval(args) -> int:
    check_positive(args.eval_batch_size, "--eval-batch-size")
    check_positive(args.calib_batches, "--calib-batches")
    device = resolve_device(args.device)
    supernet, blob = load_supernet(args.checkpoint)
    meta = blob.get("meta", {})
    dataset = args.dataset or meta.get("dataset")
    if dataset is None:
        raise UserError(f"checkpoint {args.checkpoint!r} does not record its dataset; expected --dataset")
    data = args.data or (meta.get("data") if dataset == meta.get("dataset") else None)
    space = supernet.space
    arch = parse_arch(space, args.arch)
    bundle = load_for_space(dataset, data, space, seed=meta.get("split_seed", 0),
                            val_fraction=meta.get("val_fraction", 0.1), device=device)
    supernet.to(device)
    autocast = torch.bfloat16 if device.type == "cuda" else None
    calib = calibration_batches(bundle, args.eval_batch_size, device)
    results = {name: evaluate_archs(supernet, [arch], calib, split_batches(split, bundle, args.eval_batch_size),
                                    args.calib_batches, autocast)[0]
               for name, split in (("val", bundle.val), ("test", bundle.test))}
    calib_size = min(args.eval_batch_size, len(bundle.train))
    calib_images = min(args.calib_batches, len(bundle.train) // calib_size) * calib_size
    print(f"{arch}\n  {dataset}: val accuracy {results['val']:.4f}  test accuracy {results['test']:.4f}  "
          f"(BN recalibrated on {calib_images} training images)")
    return 0
