"""`mldp`: the project's command line (demo, demo data, the embedded database, the Dagster UI)."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from pathlib import Path

from resources.settings import PROJECT_ROOT, ConfigurationError, PlatformSettings, open_resources


def _settings() -> PlatformSettings:
    try:
        return PlatformSettings.from_env()
    except ConfigurationError as exc:
        raise SystemExit(f"configuration error: {exc}") from None


def cmd_seed_customers(args: argparse.Namespace) -> int:
    from credit_assets import customer_store, population

    with open_resources(_settings()) as resources, resources.app_db.connect(autocommit=True) as conn:
        existing = customer_store.count_customers(conn, args.table)
        if existing and not args.replace:
            print(f"{args.table} already holds {existing:,} customers in {resources.app_db.describe()}; "
                  "pass --replace to start over")
            return 0
        loaded = customer_store.load_customers(conn, population.customers(args.count, seed=args.seed), args.table,
                                               replace=True)
        print(f"loaded {loaded:,} demo customers into {args.table} ({resources.app_db.describe()})")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from credit_assets import customer_store, population
    from platform_cli.demo import DemoFlow, adopt_old_demo_cursors, daemon_running
    from platform_cli.workspace_runner import WorkspaceRunner, open_instance
    from platform_cli.dagster_instance import prepare_dagster_home

    settings = _settings()
    home = prepare_dagster_home(settings)
    instance = open_instance(home)
    if daemon_running(instance):
        print(f"`mldp dev` is running on {home}: its daemon runs the sensors and their runs. Stop it before "
              "`mldp demo`, or start the jobs from the UI.", file=sys.stderr)
        return 1
    run_log = settings.data_dir / "logs" / "demo-runs.log"
    with open_resources(settings) as resources:
        print(f"application database: {resources.app_db.describe()}")
        print(f"model registry: {type(resources.registry).__name__} ({resources.registry.version_policy} versions "
              f"are put to work); notifications: {resources.notifier.describe()}")
        if args.workflow in ("all", "credit"):
            with resources.app_db.connect(autocommit=True) as conn:
                existing = customer_store.count_customers(conn)
                if not existing or args.reset:
                    loaded = customer_store.load_customers(conn, population.customers(args.customers), replace=True)
                    print(f"loaded {loaded:,} demo customers")
                else:
                    print(f"using the {existing:,} customers already in the table (--reset to start over)")
            source = resources.datasets.credit_applications()
            print(f"credit training data: {source or 'generated (no BankCaseStudyData.csv under DATASETS_DIR)'}")
        if args.workflow in ("all", "recsys"):
            print(f"recommender source: {resources.source_db.describe()}")
        print(f"loading the code location of workspace.yaml (run logs: {run_log})")
        with WorkspaceRunner(instance, PROJECT_ROOT / "workspace.yaml", output=run_log) as runner:
            adopt_old_demo_cursors(runner, resources.artifacts)
            flow = DemoFlow(runner, resources)
            if args.workflow in ("all", "credit"):
                flow.credit()
            if args.workflow in ("all", "recsys"):
                flow.recsys(args.events)
            flow.tracking()
        print("\nwhere to look:")
        print(f"  artifacts          {resources.artifacts.uri()}")
        print("  model registry     mldp registry list")
    print(f"  Dagster UI         mldp dev   (then open http://127.0.0.1:3000: the runs above are on their jobs, and "
          f"the sensors carry on from here; instance in {home})")
    return 0 if flow.ok else 1


def cmd_produce_events(args: argparse.Namespace) -> int:
    import time

    from recsys_assets import ratings_etl
    from recsys_assets.session_events import make_events

    with open_resources(_settings()) as resources:
        products, customers = ratings_etl.dimension_frames(resources.source_db)
        payloads = make_events(products["productcode"].tolist(), customers, args.count, seed=args.seed,
                               new_customer_fraction=args.new_customers, broken_fraction=args.broken_fraction)
        stream = resources.events
        print(f"producing {len(payloads):,} events into {stream.describe()}"
              + (f" at {args.rate:g}/s" if args.rate else ""))
        batch = max(1, int(args.rate)) if args.rate else 500
        started = time.monotonic()
        sent = 0
        for start in range(0, len(payloads), batch):
            chunk = payloads[start:start + batch]
            sent += stream.put(chunk, [str(i) for i in range(start, start + len(chunk))])
            if args.rate:
                time.sleep(max(0.0, started + sent / args.rate - time.monotonic()))
        print(f"{sent:,} events sent in {time.monotonic() - started:.1f}s")
    return 0


def cmd_registry(args: argparse.Namespace) -> int:
    from resources.model_registry import RegistryError

    with open_resources(_settings()) as resources:
        registry = resources.registry
        try:
            if args.action == "list":
                groups = [args.group] if args.group else [registry.group_for(p) for p in registry.pipelines]
                for group in groups:
                    packages = registry.packages(group)
                    print(f"{group}: {len(packages)} version(s)")
                    for package in packages:
                        metrics = ", ".join(f"{k} {v:.3f}" for k, v in sorted(package.metrics.items()))
                        print(f"  {package.version:>3}  {package.status:<22} {package.model_version}  {metrics}"
                              + (f"  ({package.approval_description})" if package.approval_description else ""))
                return 0
            decide = registry.approve if args.action == "approve" else registry.reject
            package = decide(args.group, args.version, args.reason)
        except RegistryError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print(f"{package.arn}: {package.status} ({args.reason})")
    return 0


def cmd_embeddings(args: argparse.Namespace) -> int:
    from resources.pgvector import EmbeddingsBusyError, EmbeddingsLoadError
    from resources.vector_queries import VectorExtensionUnavailableError

    with open_resources(_settings()) as resources:
        store = resources.pgvector
        try:
            if args.action == "rollback":
                version = store.rollback()
                print(f"{store.item_table} and {store.user_table} are back on version {version}")
                return 0
            listings = {table: store.versions(table) for table in (store.item_table, store.user_table)}
        except (EmbeddingsLoadError, EmbeddingsBusyError, VectorExtensionUnavailableError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    for table, versions in listings.items():
        print(f"{table}: {len(versions)} version(s)")
        for row in versions:
            print(f"  {row['version']}  {row['status']:<8} {row['rows']:>9,} rows  dimension {row['dimension']}  "
                  f"loaded {row['loaded_at']:%Y-%m-%d %H:%M}")
    return 0


def cmd_training_runs(args: argparse.Namespace) -> int:
    with open_resources(_settings()) as resources:
        runs = resources.tracking.runs(limit=args.limit)
    print(f"{len(runs)} training run(s) recorded, newest first" + (" (--limit reached)" if len(runs) == args.limit else ""))
    for run in runs:
        ended = run["ended_at"].strftime("%Y-%m-%d %H:%M") if run["ended_at"] else "-"
        metrics = ", ".join(f"{k} {v:.4g}" for k, v in sorted(run["metrics"].items()) if isinstance(v, (int, float)))
        print(f"  {run['job_name']}  {run['status']}  ended {ended}  project {run['project']} ({run['owner']})  "
              f"model {run['model']} [{run['model_type']}] on {run['backend']}")
        for dataset in run["inputs"]:
            print(f"    input {dataset['channel']}: {dataset['uri']}")
        if metrics:
            print(f"    metrics: {metrics}")
    return 0


def cmd_sagemaker_pipeline(args: argparse.Namespace) -> int:
    from mlops_assets.sagemaker_pipeline import CreditPipelineExportConfig, PipelineExportError, export_credit_pipeline

    with open_resources(_settings()) as resources:
        try:
            result = export_credit_pipeline(CreditPipelineExportConfig(upsert=args.upsert), resources.sagemaker,
                                            resources.registry)
        except PipelineExportError as exc:
            print(f"mldp sagemaker-pipeline: {exc}", file=sys.stderr)
            return 2
    print(f"SageMaker Pipeline {result['pipeline']}: {result['outcome']} ({len(result['steps'])} steps: "
          f"{', '.join(result['steps'])}); definition at {result['definition_uri']}")
    return 0


def cmd_dev(args: argparse.Namespace) -> int:
    from platform_cli.dagster_instance import prepare_dagster_home

    home = prepare_dagster_home(_settings())
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    if not os.environ.get("DAGSTER_UI_URL", "").strip():  # the alerts' links point at this UI
        env["DAGSTER_UI_URL"] = ui_address(args.dagster_args)
    command = [str(Path(sys.executable).with_name("dagster")), "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
               *args.dagster_args]
    print(f"DAGSTER_HOME={home}")
    # A process group of its own: a Ctrl-C in the terminal reaches only this process, which asks `dagster dev` to
    # stop its services in order. Delivered to the whole group, it interrupts the code server in the middle of
    # importing the project and each child prints a traceback.
    process = subprocess.Popen(command, env=env, cwd=PROJECT_ROOT, start_new_session=True)
    return _wait_stopping_on_ctrl_c(process)


def ui_address(dagster_args: list[str]) -> str:
    """The address `dagster dev` serves the UI at, from its -h/--host and -p/--port options."""
    options = {"host": "127.0.0.1", "port": "3000"}
    for index, arg in enumerate(dagster_args):
        for name, flags in (("host", ("-h", "--host")), ("port", ("-p", "--port"))):
            if arg in flags and index + 1 < len(dagster_args):
                options[name] = dagster_args[index + 1]
            elif any(arg.startswith(f"{flag}=") for flag in flags if flag.startswith("--")):
                options[name] = arg.split("=", 1)[1]
    host = "127.0.0.1" if options["host"] in ("0.0.0.0", "::", "") else options["host"]
    return f"http://{host}:{options['port']}"


def _wait_stopping_on_ctrl_c(process: subprocess.Popen, grace_seconds: float = 30) -> int:
    """Wait for `process`; the first Ctrl-C asks it to stop (SIGINT), a second one or `grace_seconds` without
    exiting ends its process group (SIGTERM, then SIGKILL). Returns its exit code, 0 after a Ctrl-C.

    SIGTERM (`kill`, a supervisor) and SIGHUP (the terminal closed) stop it the same way: in a session of its
    own, `dagster dev` gets neither from the terminal."""

    def stop(_signum, _frame):
        raise KeyboardInterrupt

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, stop)
    try:
        return process.wait()
    except KeyboardInterrupt:
        pass
    print("\nstopping Dagster (Ctrl-C again to stop it at once) ...", file=sys.stderr, flush=True)
    process.send_signal(signal.SIGINT)
    try:
        process.wait(timeout=grace_seconds)
        return 0
    except (KeyboardInterrupt, subprocess.TimeoutExpired):
        pass
    for sig, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
            break
        except ProcessLookupError:
            break
        except (KeyboardInterrupt, subprocess.TimeoutExpired):
            continue
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    """The recommendations API (recsys_assets/api.py) under uvicorn, until Ctrl-C."""
    import uvicorn

    from resources.embedded_postgres import exit_cleanly_on_sigterm

    _settings()  # a bad setting stops here, with its message, before any worker starts
    # uvicorn stops gracefully on SIGTERM, then raises it again: through the exit handlers, so that this process
    # leaves the embedded server's users
    exit_cleanly_on_sigterm()
    print(f"recommendations API on http://{args.host}:{args.port} (Ctrl-C stops it)", flush=True)
    uvicorn.run("recsys_assets.api:app_from_env", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=args.log_level, access_log=args.access_log,
                timeout_graceful_shutdown=10)
    return 0


def cmd_psql(args: argparse.Namespace) -> int:
    from resources.embedded_postgres import psql_binary

    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    with open_resources(_settings()) as resources:
        params = conninfo_to_dict(resources.app_db.conninfo())
        env = dict(os.environ)
        if params.get("password"):
            env["PGPASSWORD"] = str(params.pop("password"))  # not on the command line, where `ps` shows it
        return subprocess.call([str(psql_binary()), make_conninfo(**params), *args.psql_args], env=env)


def cmd_services(args: argparse.Namespace) -> int:
    from resources.embedded_postgres import embedded_server_status, stop_embedded_server

    settings = _settings()
    if settings.database_url:
        print("DATABASE_URL is set: the application database is external; no embedded server is used")
        return 0
    if args.action == "stop":
        stopped = stop_embedded_server(settings.embedded_postgres_dir)
        print("embedded PostgreSQL stopped" if stopped else "embedded PostgreSQL was not running")
        return 0
    print(embedded_server_status(settings.embedded_postgres_dir))
    return 0


def cmd_readonly_check(args: argparse.Namespace) -> int:
    with open_resources(_settings()) as resources:
        readonly = resources.readonly_db
        report = readonly.test_connection()
    print(f"connected to {readonly.describe()}: PostgreSQL {report.server_version}, database {report.database}, "
          f"user {report.user}")
    print(f"  transactions read-only: {report.transaction_read_only}; write privilege on any table: "
          f"{report.can_write_any_table}")
    for probe, outcome in report.probes.items():
        print(f"  {probe}: {outcome}")
    print("  read-only: yes" if report.ok else "  read-only: NO (see above)")
    return 0 if report.ok else 1


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number from 1, not {text!r}")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mldp", description="ML data platform on Dagster")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="load demo data if needed and materialise the workflows")
    demo.add_argument("--customers", type=int, default=2_000, help="demo customers to generate (default 2,000)")
    demo.add_argument("--reset", action="store_true", help="replace the customers table with fresh demo data")
    demo.add_argument("--workflow", choices=["all", "credit", "recsys"], default="all",
                      help="which pipelines to run (default: all; recsys includes the streaming demo)")
    demo.add_argument("--events", type=int, default=300, help="session events the streaming demo produces")
    demo.set_defaults(func=cmd_demo)

    seed = commands.add_parser("seed-customers", help="generate demo customers into the application database")
    seed.add_argument("--count", type=int, default=2_000)
    seed.add_argument("--seed", type=int, default=42)
    seed.add_argument("--table", default="customers")
    seed.add_argument("--replace", action="store_true", help="replace existing rows")
    seed.set_defaults(func=cmd_seed_customers)

    dev = commands.add_parser("dev", help="run `dagster dev` on this project with a persistent DAGSTER_HOME")
    dev.add_argument("dagster_args", nargs=argparse.REMAINDER)
    dev.set_defaults(func=cmd_dev)

    serve = commands.add_parser("serve", help="the recommendations API (user embeddings, items for a user or an item)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0: every interface)")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--workers", type=int, default=1, help="processes (each holds the live item vectors)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--access-log", action=argparse.BooleanOptionalAction, default=True,
                       help="a line per request (--no-access-log under load)")
    serve.set_defaults(func=cmd_serve)

    psql = commands.add_parser("psql", help="psql on the application database (the embedded server by default)")
    psql.add_argument("psql_args", nargs=argparse.REMAINDER)
    psql.set_defaults(func=cmd_psql)

    services = commands.add_parser("services", help="status or stop of the embedded PostgreSQL server")
    services.add_argument("action", choices=["status", "stop"])
    services.set_defaults(func=cmd_services)

    produce = commands.add_parser("produce-events", help="write shopping-session events to the stream")
    produce.add_argument("--count", type=int, default=100)
    produce.add_argument("--rate", type=float, default=0.0, help="events per second (0: as fast as possible)")
    produce.add_argument("--broken-fraction", type=float, default=0.0, help="share of deliberately broken events")
    produce.add_argument("--new-customers", type=float, default=0.1, help="share of customers the model never saw")
    produce.add_argument("--seed", type=int, default=None)
    produce.set_defaults(func=cmd_produce_events)

    registry = commands.add_parser("registry", help="list, approve or reject model package versions")
    registry_actions = registry.add_subparsers(dest="action", required=True)
    listing = registry_actions.add_parser("list", help="the versions of a group (default: credit and recsys)")
    listing.add_argument("group", nargs="?")
    for action in ("approve", "reject"):
        decide = registry_actions.add_parser(action, help=f"{action} a version, with a reason")
        decide.add_argument("group", help="e.g. credit-dev-models")
        decide.add_argument("version", type=int)
        decide.add_argument("--reason", required=True)
    registry.set_defaults(func=cmd_registry)

    embeddings = commands.add_parser("embeddings", help="the embeddings versions loaded; roll back to the previous one")
    embeddings.add_argument("action", choices=["list", "rollback"],
                            help="rollback: put the previous version of both tables live again, in one transaction")
    embeddings.set_defaults(func=cmd_embeddings)

    runs = commands.add_parser("training-runs", help="the training runs the tracking sync recorded, newest first")
    runs.add_argument("--limit", type=_positive_int, default=20, help="how many at most (default 20)")
    runs.set_defaults(func=cmd_training_runs)

    pipeline = commands.add_parser("sagemaker-pipeline", help="export the credit pipeline as a SageMaker Pipeline")
    pipeline.add_argument("--upsert", action="store_true", help="create or update it in SageMaker (needs AWS)")
    pipeline.set_defaults(func=cmd_sagemaker_pipeline)

    readonly = commands.add_parser("readonly-check", help="connect through the read-only resource and report")
    readonly.set_defaults(func=cmd_readonly_check)

    from platform_cli.deploy import add_parser as add_deploy_parser

    add_deploy_parser(commands)
    return parser


PASS_THROUGH = {"psql": cmd_psql, "dev": cmd_dev}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in PASS_THROUGH:
        # everything after the command belongs to psql / dagster dev, options included
        key = "psql_args" if argv[0] == "psql" else "dagster_args"
        return PASS_THROUGH[argv[0]](argparse.Namespace(**{key: argv[1:]}))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
