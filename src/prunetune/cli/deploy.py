"""``prunetune deploy``: write a pruned model as ONNX, TorchScript or a torch.export program, and check it."""

from __future__ import annotations

import argparse

from prunetune.cli._common import add_allow_code, add_plugins, load_cli_plugins, need_file, print_json


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("deploy", help="export a pruned model (onnx | torchscript | export) and check it",
                       description="Write a pruned model for inference, run the file on a random batch and "
                       "print its largest difference to the PyTorch model (an error above 1e-4 relative). "
                       "The batch dimension is dynamic. ONNX needs: pip install -e '.[deploy]'.")
    p.add_argument("--model", required=True, help="pruned model file written by `prunetune prune --out`")
    p.add_argument("--format", dest="deploy_format", required=True, choices=["onnx", "torchscript", "export"],
                   help="onnx (onnxruntime checks it), torchscript (traced) or export (torch.export .pt2)")
    p.add_argument("--out", required=True, help="file to write")
    p.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                   help="keep batch norms (by default they are folded into the convs before export)")
    p.add_argument("--check-batch", type=int, default=3,
                   help="batch size of the random check (default 3; at most 65536 for export)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (--format names the file format)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    add_allow_code(p)
    add_plugins(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from prunetune.deployment import deploy

    load_cli_plugins(args)  # a model a plugin registers
    model = need_file(args.model, "pruned model", "pruned model file (.pt)")
    result = deploy(model, args.deploy_format, args.out, fold_bn=args.fold_bn,
                    check_batch=args.check_batch, allow_code=args.allow_code, overwrite=args.overwrite)
    if args.json:
        print_json(result.as_dict())
        return 0
    print(f"wrote {result.path} ({result.format}, {result.bytes / 1e6:.2f} MB, input (N, "
          f"{', '.join(map(str, result.input_shape))}) with N dynamic, {result.folded_bn} BN folded)")
    print(f"check on a random batch of {result.check_batch}: max abs difference to PyTorch {result.max_abs_diff:.3g} "
          f"({result.rel_diff:.3g} relative)")
    return 0
