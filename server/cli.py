"""The ``nudge`` command: serve, tenant create, replay, train, evaluate, export, replay-bandit."""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from pathlib import Path

import numpy as np

from model import TenantConfig
from model.event_files import FORMATS

from . import gc_tuning
from .config import ServerConfig, workers_for
from .logs import ACCESS_LOG_FORMAT, configure_logging
from .storage import Store


_background: set[asyncio.Task] = set()


async def _freeze_once_ready(app) -> None:
    """What recovery built lives as long as its tenant: frozen, the collector no longer walks it."""
    from .keys import RUNTIME

    async def freeze() -> None:
        await app[RUNTIME].wait_ready()
        frozen = gc_tuning.freeze()
        logging.getLogger("nudge").info("recovery done: %d objects frozen out of the garbage collector", frozen)

    task = asyncio.get_running_loop().create_task(freeze(), name="nudge-gc-freeze")
    _background.add(task)
    task.add_done_callback(_background.discard)


def _serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    import kernels

    from .app import SERVER_KWARGS, create_app

    given = dict(data_dir=args.data_dir, host=args.host, port=args.port, backend=args.backend, workers=args.workers)
    config = ServerConfig.load(args.config, **given)
    configure_logging(config.log_level.upper(), config.log_format)
    # What can fail is checked before the demo key is shown: a key printed for a server that never runs is lost.
    try:
        if config.backend != "auto":  # an automatic choice falls back to numpy, it never fails
            kernels.resolve_backend(config.backend)
    except kernels.BackendUnavailable as exc:
        raise ValueError(f"{exc}; start with --backend numpy (runs anywhere) or --backend auto") from None
    loop = _event_loop(config.event_loop)
    demo = _create_demo_tenant(config.data_dir)
    gpu = kernels.resolve_backend(config.backend) != "numpy"
    config = ServerConfig.load(args.config, defaults={"workers": workers_for(gpu=gpu)}, **given)
    listening = False

    def _listening(_banner: str) -> None:
        nonlocal listening
        listening = True

    try:
        app = create_app(config)
        gc_tuning.tune()
        app.on_startup.append(_freeze_once_ready)
        print(f"nudge serving on http://{config.host}:{config.port} (data in {config.data_dir}; "
              f"event loop {type(loop).__module__.split('.')[0]}; "
              f"{config.workers or 'no'} worker process{'' if config.workers == 1 else 'es'})", flush=True)
        web.run_app(
            app,
            loop=loop,
            host=config.host,
            port=config.port,
            print=_listening,  # called once every socket is bound
            access_log=logging.getLogger("nudge.access") if config.access_log else None,
            access_log_format=ACCESS_LOG_FORMAT,
            handle_signals=True,
            **SERVER_KWARGS,
        )
    except BaseException:
        if demo and not listening:
            # Nobody can have used the key: forget the tenant, so the next start makes one and shows its key.
            store = Store(config.data_dir)
            try:
                store.delete_tenant("demo")
            finally:
                store.close()
        raise
    return 0


def _create_demo_tenant(data_dir: Path) -> bool:
    """Create the tenant 'demo' and print its key when the data dir has no tenant; whether it did."""
    store = Store(data_dir)
    try:
        if store.tenants():
            return False
        _, key = store.create_tenant("demo")
    finally:
        store.close()
    print("Created tenant 'demo' in the empty data dir. Its API key (shown once, stored hashed):", flush=True)
    print(key, flush=True)
    return True


def _event_loop(kind: str):
    """uvloop where it is installed (``auto``), else asyncio's own loop."""
    import asyncio

    if kind in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if kind == "uvloop":
                raise ValueError("event_loop is uvloop but uvloop is not installed: pip install uvloop") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _tenant_create(args: argparse.Namespace) -> int:
    store = Store(Path(args.data_dir))
    try:
        tenant, key = store.create_tenant(args.name)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        store.close()
    print(f"Created tenant {tenant.name!r} (id {tenant.id}). Its API key, shown once:")
    print(key)
    return 0


def _file_config(fmt: str, path: str, **settings) -> TenantConfig:
    """A tenant config that takes the events of the file at ``path``; a file is replayed in time order, so
    nothing arrives late and the watermark can follow the clock."""
    from model.event_files import format_actions

    return TenantConfig(actions=format_actions(fmt, path), allow_backfill=True, allowed_lateness_s=0.0, **settings)


def _replay(args: argparse.Namespace) -> int:
    from model.event_files import load_events
    from model.replay import progress_bar, replay

    config = _file_config(args.format, args.data, seed=args.seed)
    batch = load_events(args.data, args.format, config, limit=args.limit)
    if args.policy:
        return _replay_policy(args, batch, config)
    report = replay(batch, config, replicates=args.replicates, seed=args.seed,
                    progress=None if args.quiet else progress_bar("replay"))
    if args.json:
        print(json.dumps(_finite(report.as_dict()), indent=2))
    else:
        print(f"replayed {report.events} events of {report.users} users in {report.seconds} s "
              "(prequential: each event scored just after it, with everything known then; "
              f"intervals: bootstrap over users, {args.replicates} replicates)")
        print(report.table())
        print("learned weights (posterior mean, all contexts): "
              + ", ".join(f"{a} {w:.4f}" for a, w in report.weights.items()))
    return 0


def _replay_policy(args: argparse.Namespace, batch, config: TenantConfig) -> int:
    from model.policy_replay import replay_policy
    from model.replay import progress_bar

    report = replay_policy(batch, config, progress=None if args.quiet else progress_bar("policy"))
    if args.json:
        print(json.dumps(_finite(report.as_dict()), indent=2))
    else:
        print(f"the default signal policy over {report.events} events of {report.users} users "
              f"({report.users_with_cart} put something in a cart)")
        print(report.table())
    return 0


def _finite(value):
    """JSON has no NaN: undefined metrics become null."""
    if isinstance(value, float):
        return value if np.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _load_split(args: argparse.Namespace, config: TenantConfig):
    """The event file, and the time at the given fraction of its span (None without one)."""
    from model.event_files import load_events

    batch = load_events(args.data, args.format, config, limit=args.limit)
    if not len(batch):
        raise ValueError(f"{args.data} holds no events")
    frac = getattr(args, "until_frac", None) or getattr(args, "from_frac", None)
    if frac is None:
        return batch, None
    if not 0.0 < frac < 1.0:
        raise ValueError(f"the fraction must lie strictly between 0 and 1, got {frac}")
    return batch, float(batch.ts.min() + frac * (batch.ts.max() - batch.ts.min()))


def _tenant_events(data_dir: Path, name: str):
    """A tenant's config and its whole event log as one batch, from the server's database."""
    from model import EventBatch

    from .storage import DB_NAME

    if not (data_dir / DB_NAME).is_file():  # opening a Store would create an empty database there
        raise ValueError(f"{data_dir} holds no nudge database ({DB_NAME}); pass the --data-dir the server uses")
    store = Store(data_dir)
    try:
        tenant = next((t for t in store.tenants() if t.name == name), None)
        if tenant is None:
            raise ValueError(f"no tenant {name!r} in {data_dir}; tenants: {[t.name for t in store.tenants()]}")
        batches = [batch for batch, _ in store.read_events(tenant.id, tenant.config)]
    finally:
        store.close()
    if not batches:
        raise ValueError(f"tenant {name!r} has no events yet")
    batch = EventBatch.concat(batches)
    return tenant.config, batch.take(np.argsort(batch.ts, kind="stable"))


def _train(args: argparse.Namespace) -> int:
    from model.predictor import write_checkpoint
    from model.training import TrainSettings, train

    from .models import model_path

    if args.data_dir:
        config, batch = _tenant_events(Path(args.data_dir), args.tenant)
        out = Path(args.out) if args.out else model_path(Path(args.data_dir), args.tenant)
        source = f"{args.data_dir} tenant {args.tenant}"
    else:
        if not args.out:
            raise ValueError("--out is required when training from --data")
        config = _file_config(args.format, args.data, session_gap_s=args.session_gap_s, seed=args.seed)
        batch, cut = _load_split(args, config)
        if cut is not None:
            batch = batch.take(batch.ts < cut)
        out, source = Path(args.out), str(args.data)
    settings = TrainSettings(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
                             learning_rate=args.learning_rate, seed=args.seed)
    checkpoint = train(batch, config, settings, show_progress=not args.quiet)
    checkpoint["data"]["source"] = source
    # Atomic: a server watching the file loads either the old checkpoint or this one, never half of it.
    write_checkpoint(checkpoint, out)
    print(json.dumps(_finite({"out": str(out), "seconds": checkpoint["seconds"], "data": checkpoint["data"],
                              "validation_metrics": checkpoint["validation_metrics"]}), indent=2))
    return 0


def _export(args: argparse.Namespace) -> int:
    from model.event_files import export_events

    config, batch = _tenant_events(Path(args.data_dir), args.tenant)
    with open(args.out, "w") as fh:
        n = export_events(iter([batch]), config, fh)
    print(f"exported {n} events of tenant {args.tenant!r} to {args.out} (format: nudge)")
    return 0


def _evaluate(args: argparse.Namespace) -> int:
    from model.evaluation import evaluate
    from model.predictor import read_checkpoint

    from model.replay import progress_bar

    checkpoint = read_checkpoint(args.model)
    config = TenantConfig.from_dict(checkpoint["tenant_config"])
    batch, cut = _load_split(args, config)
    result, charts = evaluate(checkpoint, batch, from_ts=cut, plots_dir=Path(args.plots) if args.plots else None,
                              replicates=args.replicates, progress=None if args.quiet else progress_bar("features"))
    if args.plots:
        written = ", ".join(str(c) for c in charts) or "none: no scored event's 5-minute outcome is known"
        print(f"charts: {written}", file=sys.stderr)
    if args.json:
        print(json.dumps(_finite(result), indent=2))
        return 0
    predictors = {k: v for k, v in result.items() if k in ("transformer", "transformer_calibrated", "markov",
                                                          "popularity")}
    keys = ["next_action_logloss", "next_action_top1", "purchase_5m_auc", "purchase_5m_logloss",
            "purchase_5m_calibration_slope", "purchase_5m_mean_predicted", "purchase_5m_observed_rate",
            "purchase_60m_auc", "purchase_60m_calibration_slope", "purchase_5m_positives", "purchase_60m_positives"]
    print("| predictor | " + " | ".join(keys) + " |")
    print("|---" * (len(keys) + 1) + "|")
    for name, metrics in predictors.items():
        cells = [f"{metrics[k]:.4f}" if isinstance(metrics[k], float) else str(metrics[k]) for k in keys]
        print(f"| {name} | " + " | ".join(cells) + " |")
    margin = result["transformer_vs_markov"]
    for key in ("next_action_logloss_relative_gain", "purchase_5m_auc_gain"):
        if key in margin:
            lo, hi = margin[f"{key}_ci"]
            print(f"transformer over markov, {key}: {margin[key]:+.4f} (95 % CI {lo:+.4f} to {hi:+.4f}, users resampled)")
    settled = result["transformer_calibrated_settled"]
    print(f"calibrated, after the first 1000 outcomes ({settled['n_events']} events): " + ", ".join(
        f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}" for k, v in settled.items() if k != "n_events"))
    return 0


def _replay_bandit(args: argparse.Namespace) -> int:
    from model.bandit_replay import evaluate_campaigns

    rows = evaluate_campaigns(Path(args.data), runs=args.runs)
    if not rows:
        raise ValueError(f"{args.data}: no random/<campaign>/<campaign>.csv files found")
    if args.json:
        print(json.dumps(_finite(rows), indent=2))
        return 0
    print(f"replay method, Thompson sampling (Beta(1,1) priors) averaged over {args.runs} runs")
    print("| campaign | arms | random: impressions, clicks, CTR (95 % CI) | TS: matched, clicks, CTR (95 % CI) | TS / random |")
    print("|---|---|---|---|---|")
    for r in rows:
        lo, hi = r["random_ctr_ci95"]
        tlo, thi = r["ts_ctr_ci95"]
        print(f"| {r['campaign']} | {r['arms'] or '-'} | {r['random_impressions']}, {r['random_clicks']:.0f}, "
              f"{r['random_ctr']:.4f} ({lo:.4f}–{hi:.4f}) | {r['ts_matched_impressions']:.1f}, {r['ts_clicks']:.2f}, "
              f"{r['ts_ctr']:.4f} ({tlo:.4f}–{thi:.4f}) | {r['ts_over_random']:.2f} |")
    return 0


def _positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _fraction(text: str) -> float:
    """An argparse type: a share of the time span, strictly between 0 and 1."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number between 0 and 1, got {text!r}") from None
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"must lie strictly between 0 and 1, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nudge", description="GPU-accelerated engagement scoring server")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    serve.add_argument("--data-dir", default=None, help="database and snapshots (default ./nudge-data)")
    serve.add_argument("--host", default=None)
    serve.add_argument("--port", type=int, default=None)
    serve.add_argument("--backend", choices=("auto", "numpy", "triton", "cupy"), default=None)
    serve.add_argument("--workers", type=int, default=None,
                       help="worker processes that own the tenants' engines (0: a thread of the server's process); "
                            "default: one per core beside the server's, at most 8")
    serve.add_argument("--config", default=None, help="a TOML file of server settings")
    serve.set_defaults(run=_serve)

    tenant = sub.add_parser("tenant", help="manage tenants")
    tenant_sub = tenant.add_subparsers(dest="tenant_command", required=True)
    create = tenant_sub.add_parser("create", help="create a tenant and print its API key (last line)")
    create.add_argument("name")
    create.add_argument("--data-dir", required=True)
    create.set_defaults(run=_tenant_create)

    rep = sub.add_parser("replay", help="feed an event file through the engine and report prequential AUC")
    rep.add_argument("--data", required=True)
    rep.add_argument("--format", choices=FORMATS, default="taobao")
    rep.add_argument("--json", action="store_true")
    rep.add_argument("--limit", type=_positive_int, default=None, help="read only the first N rows")
    rep.add_argument("--replicates", type=int, default=200, help="bootstrap replicates (resampling users)")
    rep.add_argument("--policy", action="store_true",
                     help="replay the signal policy instead: which intents and signals fire for what share of users")
    rep.add_argument("--seed", type=int, default=0)
    rep.add_argument("--quiet", action="store_true", help="no progress bar")
    rep.set_defaults(run=_replay)

    tr = sub.add_parser("train", help="train the next-action Transformer on an event file or a tenant's event log")
    source = tr.add_mutually_exclusive_group(required=True)
    source.add_argument("--data", help="an event file (see --format)")
    source.add_argument("--data-dir", help="a server's data dir: train on --tenant's log, with the tenant's config")
    tr.add_argument("--tenant", help="with --data-dir: whose events; the model goes to DATA_DIR/models/TENANT.pt")
    tr.add_argument("--format", choices=FORMATS, default="taobao")
    tr.add_argument("--out", default=None, help="where to write the checkpoint (.pt)")
    tr.add_argument("--until-frac", type=_fraction, default=None, help="train only on this first fraction of the time span")
    tr.add_argument("--limit", type=_positive_int, default=None, help="read only the first N rows")
    tr.add_argument("--session-gap-s", type=float, default=1800.0, help="a longer gap ends a session")
    tr.add_argument("--epochs", type=_positive_int, default=30)
    tr.add_argument("--patience", type=_positive_int, default=3, help="stop after this many epochs without improvement")
    tr.add_argument("--batch-size", type=_positive_int, default=256)
    tr.add_argument("--learning-rate", type=float, default=2e-3)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--quiet", action="store_true", help="no progress bar")
    tr.set_defaults(run=_train)

    ev = sub.add_parser("evaluate", help="score an event file with a checkpoint, the Markov chain and popularity")
    ev.add_argument("--model", required=True)
    ev.add_argument("--data", required=True)
    ev.add_argument("--format", choices=FORMATS, default="taobao")
    ev.add_argument("--from-frac", type=_fraction, default=None,
                    help="score only events after this fraction of the time span (earlier ones are history)")
    ev.add_argument("--limit", type=_positive_int, default=None)
    ev.add_argument("--json", action="store_true")
    ev.add_argument("--plots", default=None, help="write calibration.png and lift.png (5-minute purchase) here")
    ev.add_argument("--replicates", type=int, default=200, help="bootstrap replicates (resampling users)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    ev.set_defaults(run=_evaluate)

    ex = sub.add_parser("export", help="write a tenant's event log as JSON Lines (--format nudge)")
    ex.add_argument("--data-dir", required=True)
    ex.add_argument("--tenant", required=True)
    ex.add_argument("--out", required=True)
    ex.set_defaults(run=_export)

    rb = sub.add_parser("replay-bandit", help="replay the Thompson bandit on Open Bandit Dataset random logs")
    rb.add_argument("--data", required=True, help="a folder holding random/{all,men,women}/*.csv")
    rb.add_argument("--runs", type=_positive_int, default=20, help="replays averaged (each with its own seed)")
    rb.add_argument("--json", action="store_true")
    rb.set_defaults(run=_replay_bandit)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "data_dir", None) and args.command == "train" and not args.tenant:
        parser.error("train --data-dir needs --tenant NAME")
    try:
        return args.run(args)
    except ImportError as exc:
        print(f"error: {exc}; training and evaluation need torch: pip install -e '.[dev]'", file=sys.stderr)
        return 2
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
