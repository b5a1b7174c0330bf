"""The ``average`` subcommand of the command line: parse, call
:func:`switchema.checkpoints.average`, print.

Exit statuses: 0 written; 2 a usage error (a bad flag, a missing file or folder, too few
checkpoints, mismatched checkpoints, an existing output): one line, nothing written; 3 a
checkpoint could not be read, or the output could not be written.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

__all__ = ["add_parser"]

EPILOG = (
    "exit status: 0 written; 2 usage error (bad flag, missing file or folder, too few or "
    "mismatched checkpoints, existing --out; nothing was written); 3 a checkpoint could not "
    "be read or the output could not be written."
)


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Add ``average`` to the subcommands ``sub``."""
    p = sub.add_parser(
        "average",
        help="average saved checkpoints (the last N of a run, uniform / EMA / power weights) "
        "into one file",
        description=(
            "Average checkpoints of one run, tensor by tensor (memory: the output plus one "
            "tensor, whatever the number of checkpoints). Reads torch.save files (.pt, .pth, "
            ".bin; the state dict may sit under 'state_dict', 'model' or 'module'), Lightning "
            ".ckpt, .safetensors, Hugging Face model folders and torch.distributed.checkpoint "
            "folders. Floating tensors are averaged in float32 (--float64 on request) and "
            "written in their own dtype; integer and bool tensors are copied from the last "
            "checkpoint. Example: switchema average --dir checkpoints --last 5 --out avg.pt"
        ),
        epilog=EPILOG,
    )
    p.add_argument(
        "checkpoints",
        nargs="*",
        type=Path,
        metavar="CKPT",
        help="checkpoint files or folders, oldest first (or use --dir)",
    )
    p.add_argument(
        "--dir",
        type=Path,
        default=None,
        metavar="FOLDER",
        help="take the checkpoints from FOLDER, ordered by the step (else epoch, else any) "
        "number in their names, or by modification time when no name has a number",
    )
    p.add_argument(
        "--last",
        type=int,
        default=None,
        metavar="N",
        help="average only the newest N checkpoints (default: all)",
    )
    p.add_argument(
        "--weights",
        default="uniform",
        metavar="uniform|ema|power|W1,W2,...",
        help="uniform (1/N each, default); ema (with --decay: the EMA of the checkpoint "
        "sequence started at the oldest); power (with --sigma-rel or --gamma: the EDM2 power "
        "EMA at the checkpoints' steps, read from their names); or one number >= 0 per "
        "checkpoint, oldest first, divided by their sum",
    )
    p.add_argument(
        "--decay",
        type=float,
        default=None,
        metavar="D",
        help="EMA decay per checkpoint interval, in [0, 1) (a per-step decay a with "
        "checkpoints every k steps is a**k)",
    )
    p.add_argument(
        "--sigma-rel",
        type=float,
        default=None,
        metavar="S",
        help="power EMA width relative to the training length, in (0, 0.2887]",
    )
    p.add_argument(
        "--gamma", type=float, default=None, metavar="G", help="power EMA exponent, >= 0"
    )
    p.add_argument(
        "--steps",
        default=None,
        metavar="T1,T2,...",
        help="each checkpoint's optimizer step (or epoch), oldest first, for power weights "
        "(default: the numbers in the names)",
    )
    p.add_argument(
        "--key",
        default=None,
        help="where the state dict sits inside each file, e.g. ema or model/module "
        "(default: the file itself, or under state_dict / model / module)",
    )
    p.add_argument(
        "--float64", action="store_true", help="accumulate in float64 (default: float32)"
    )
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="output file; .safetensors or .pt (.pth, .bin) decides the format",
    )
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.set_defaults(func=_average)


_ORDERS = {
    "step": "ordered by the step number in their names",
    "epoch": "ordered by the epoch number in their names",
    "number": "ordered by natural sort of their names",
    "mtime": "ordered by modification time: no number in their names",
    "given": "in the order given",
}


def _weights(text: str) -> str | list[float]:
    if text in ("uniform", "ema", "power"):
        return text
    return _numbers(text, "--weights", "uniform, ema, power or ")


def _numbers(text: str | None, flag: str, other: str = "") -> list[float] | None:
    from .lab.errors import UsageError

    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",")]
    except ValueError:
        raise UsageError(
            f"{flag} must be {other}numbers separated by commas, got {text!r}"
        ) from None


def _average(args: argparse.Namespace) -> int:
    import torch

    from .checkpoints import CheckpointReadError, average
    from .lab.errors import EXIT_FAILED, UsageError

    if bool(args.checkpoints) == (args.dir is not None):
        raise UsageError("give the checkpoints (CKPT ...) or --dir FOLDER, one of the two")
    try:
        result = average(
            args.dir if args.dir is not None else args.checkpoints,
            weights=_weights(args.weights),
            decay=args.decay,
            sigma_rel=args.sigma_rel,
            gamma=args.gamma,
            steps=_numbers(args.steps, "--steps"),
            last=args.last,
            out=args.out,
            overwrite=args.force,
            accumulate=torch.float64 if args.float64 else torch.float32,
            key=args.key,
        )
    except FileExistsError as e:
        raise UsageError(f"{e} (--force overwrites it)") from None
    except CheckpointReadError as e:
        failed = UsageError(str(e))
        failed.exit_code = EXIT_FAILED
        raise failed from None
    except OSError as e:  # writing the output failed (disk full, permissions)
        if isinstance(e, FileNotFoundError):
            raise UsageError(str(e)) from None
        failed = UsageError(f"cannot write {args.out}: {e}")
        failed.exit_code = EXIT_FAILED
        raise failed from None
    except (ValueError, TypeError, ImportError) as e:
        raise UsageError(str(e)) from None
    selection = result.selection
    for path in selection.left_out:
        print(f"left out (no number in its name): {path}", file=sys.stderr)
    order = _ORDERS[selection.order]
    print(f"averaged {len(result.checkpoints)} checkpoints ({order}), weight and file:")
    for path, w in zip(result.checkpoints, result.weights):
        print(f"  {w:.6f}  {path}")
    print(f"wrote {args.out} ({len(result.state_dict)} tensors)")
    return 0
