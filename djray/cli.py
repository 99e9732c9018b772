"""The `djray` command line: run, validate, submit, inspect, report, sample-data, train, eval.

Exit codes: 0 the job completed (rejected rows are not failures); 2 configuration error, reported before any work;
1 the job failed (infrastructure, a failed task) — re-running the same command resumes it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

EXIT_OK, EXIT_JOB_FAILED, EXIT_CONFIG = 0, 1, 2


def _add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="job config (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="dotted.key=value",
                   help="override a config value (repeatable), e.g. --set output.mode=overwrite")


def build_parser() -> argparse.ArgumentParser:
    from djray import __version__

    parser = argparse.ArgumentParser(prog="djray", description="Govern image-text training data on Ray Data.")
    parser.add_argument("--version", action="version", version=f"djray {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("run", help="validate, then run (or resume) a governance job")
    _add_config_args(p)
    p.add_argument("--no-progress", action="store_true", help="do not print progress lines")
    p.add_argument("--verbose", action="store_true",
                   help="show Ray's own output on the terminal (default: OUTPUT/_djray/logs/ray-*.log)")

    p = sub.add_parser("validate", help="every check `run` makes before reading data, and nothing else")
    _add_config_args(p)

    p = sub.add_parser("submit", help="validate here, then run the job on a Ray cluster (Ray Job Submission API)",
                       description="Validate CONFIG here (no data is read), then submit it to a Ray cluster as a job "
                                   "running `python -m djray.jobs.govern` (djray.jobs.train with --train) on the resolved "
                                   "config. Prints the job's submission id. See docs/cluster.md.")
    _add_config_args(p)
    p.add_argument("--address", default=None, metavar="URL",
                   help="the cluster's job API, e.g. http://HEAD:8265 (default: RAY_API_SERVER_ADDRESS, RAY_ADDRESS)")
    p.add_argument("--runtime-env", dest="runtime_env", default=None, metavar="FILE",
                   help="YAML/JSON runtime environment merged into the job's (pip, py_modules, env_vars, ...)")
    p.add_argument("--wait", action="store_true",
                   help="stream the job's logs until it ends; exit 0 if it SUCCEEDED, 1 if it FAILED or was STOPPED")
    p.add_argument("--train", action="store_true", help="submit the training entrypoint (djray.jobs.train) instead")

    p = sub.add_parser("train", help="train CLIP on governed output (DeepSpeed; in process or Ray Train workers)",
                       description="Train CLIP on the kept patches of governed output (docs/train.md). Exit 2 on a "
                                   "configuration or data problem found before training; re-run to resume.")
    _add_config_args(p)

    p = sub.add_parser("eval", help="zero-shot and retrieval evaluation of a training checkpoint (full images)")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, metavar="PATH",
                   help="output dir, its checkpoints/ dir (latest) or one checkpoints/step_* dir")

    p = sub.add_parser("inspect", help="print one row of an output: captions, evidence, kept patches, reject reason")
    p.add_argument("output", help="a djray output directory (local or s3://)")
    p.add_argument("--key", required=True, help="the row's key")
    p.add_argument("--shard", default=None, help="look only in this input shard's file (faster on large outputs)")
    p.add_argument("--endpoint-url", dest="endpoint_url", default=None, help="S3 endpoint (default: AWS's)")

    p = sub.add_parser("sample-data", help="write a deterministic synthetic image-text corpus")
    p.add_argument("out", help="output directory")
    p.add_argument("--num-samples", type=int, required=True)
    p.add_argument("--shards", type=int, required=True)
    p.add_argument("--format", choices=["webdataset", "parquet"], required=True)
    p.add_argument("--seed", type=int, default=0)

    p = sub.add_parser("report", help="write one offline HTML page about a governed output (docs/report.md)",
                       description="Totals, rejects, the selection funnel, signal histograms, sample images with "
                                   "dropped patches greyed out, caption diffs, reject examples and models of OUTPUT, "
                                   "in one self-contained HTML file. Reads only column statistics and a few images.")
    p.add_argument("output", help="a djray output directory (local path or s3://bucket/prefix)")
    p.add_argument("--html", default=None, metavar="PATH", help="where to write it (default OUTPUT/report.html)")
    p.add_argument("--samples", type=int, default=16, metavar="N", help="kept sample images shown (default 16)")
    p.add_argument("--stat-files", type=int, default=None, metavar="K",
                   help="histograms from K signals/data files spread evenly over the output (default: all files)")
    p.add_argument("--endpoint-url", default=None, help="S3 endpoint (default: the standard AWS variables)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "report":
        return _report(args)
    if args.command in ("train", "eval"):  # lazy: no pipeline, torch or DeepSpeed import for the other commands
        from djray.train.run import eval_command, train_command

        if args.command == "train":
            return train_command(args.config, args.overrides)
        return eval_command(args.config, args.checkpoint, args.overrides)
    if args.command == "inspect":  # reads Parquet only: no Ray import
        from djray.inspector import inspect_command

        return inspect_command(args.output, args.key, args.shard, args.endpoint_url)
    from djray import pipeline
    from djray.config import ConfigError, load_config

    try:
        if args.command == "sample-data":
            return _sample_data(args)
        if args.command == "submit":
            from djray.submit import submit_command

            return submit_command(args)
        if args.command == "validate" and _is_train_config(args.config):
            return _validate_train(args.config, args.overrides)
        cfg = load_config(args.config, args.overrides)
        if args.command == "validate":
            plan = pipeline.prepare(cfg)
            print(f"config OK: {len(plan.shards)} shard(s), stages {' → '.join(cfg.stages())}\n"
                  f"  fingerprints: signals {plan.fps.signals[:12]}  selection {plan.fps.selection[:12]}  "
                  f"output {plan.fps.output[:12]}")
            return EXIT_OK
        from djray.runtime.manifest import format_summary

        if args.verbose:
            manifest = pipeline.run(cfg, progress=not args.no_progress, log=lambda m: print(m, file=sys.stderr))
        else:
            manifest = _run_quietly(pipeline, cfg, not args.no_progress)
        print(format_summary(manifest))
        _report_after_run(cfg)
        return EXIT_OK
    except ConfigError as e:
        print(f"djray: {e}", file=sys.stderr)
        return EXIT_CONFIG
    except pipeline.JobError as e:
        print(f"djray: job failed: {e}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except KeyboardInterrupt:
        print("djray: interrupted (re-run the same command to resume)", file=sys.stderr)
        return 130


def _is_train_config(path: str) -> bool:
    """A training config (`djray train`) has a top-level `train:` section; a governance config never has."""
    from djray.config import read_yaml

    raw = read_yaml(path)
    return isinstance(raw, dict) and "train" in raw


def _validate_train(path: str, overrides: list[str]) -> int:
    """The config checks of `djray train` (keys, types, cross-checks, arch, batch split); the data is not read."""
    from djray.train.config import load_train_config

    cfg = load_train_config(path, overrides)
    arch = cfg.model.resolved()
    workers = max(1, cfg.ray.num_workers)
    micro = cfg.micro_batch(workers)
    print(f"train config OK: {arch.name} at {arch.image_size} px, patches {cfg.patches.mode}, loss {cfg.loss}, "
          f"{workers} worker(s) × micro batch {micro}; data.path is checked by `djray train` before training")
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    from djray.io.fs import Storage
    from djray.report import ReportError, write_report

    if args.samples < 0 or (args.stat_files is not None and args.stat_files < 1):
        print("djray: report: --samples must be at least 0 and --stat-files at least 1", file=sys.stderr)
        return EXIT_CONFIG
    try:
        path = write_report(args.output, args.html, args.samples, storage=Storage(endpoint_url=args.endpoint_url),
                            stat_files=args.stat_files)
    except (ReportError, FileNotFoundError, ValueError) as e:
        print(f"djray: report: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {path}")
    return EXIT_OK


def _report_after_run(cfg) -> None:  # noqa: ANN001 (JobConfig; kept lazy like the rest of main)
    """`report: true` writes OUTPUT/report.html; otherwise say how to get one."""
    import shlex

    from djray.io.fs import Storage

    if not cfg.report:
        print(f"  report        djray report {shlex.quote(cfg.output.path)}")
        return
    from djray.report import write_report

    print(f"  report        {write_report(cfg.output.path, storage=Storage.of(cfg.storage))}")


def _run_quietly(pipeline, cfg, progress: bool) -> dict:
    """`pipeline.run` with Ray's output in a log file under the output (djray/runtime/quiet.py). Ray's error-level
    lines, if any, are pointed at on the terminal; a failed job's message names the log."""
    import ray

    from djray.config import ConfigError
    from djray.io.fs import Storage
    from djray.runtime.quiet import ray_output_to_file

    failure = None
    ours = not ray.is_initialized()  # a driver that was connected before (a caller's session) stays connected
    with ray_output_to_file() as capture:
        try:
            return pipeline.run(cfg, progress=progress, log=capture.say)
        except ConfigError:
            capture.discard()  # reported before any work: the output stays untouched
            raise
        except pipeline.JobError as e:
            failure = e
        finally:
            if ours and ray.is_initialized():  # inside the capture: Ray's last forwarded lines go to the log
                ray.shutdown()
            if not capture.discarded:
                errors = capture.error_lines()
                where = capture.keep(cfg.output.path, Storage.of(cfg.storage))
                if errors:
                    capture.say(f"djray: Ray logged {len(errors)} error line(s), e.g. {errors[0][:300]}\n"
                                f"  full log: {where}")
    raise pipeline.JobError(f"{failure}\n  Ray's log of this run: {where}") from None


def _sample_data(args: argparse.Namespace) -> int:
    from djray.sample_data import write_sample_corpus

    if args.num_samples < 1 or args.shards < 1:
        print("djray: --num-samples and --shards must be at least 1", file=sys.stderr)
        return EXIT_CONFIG
    try:
        paths = write_sample_corpus(args.out, args.num_samples, args.shards, args.format, seed=args.seed)
    except ValueError as e:
        print(f"djray: sample-data: {e}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"wrote {args.num_samples} samples in {len(paths)} {args.format} shard(s) to {args.out}")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
