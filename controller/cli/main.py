"""Command line: the local stack (`dev`), the operator (`operator run`)."""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shlex
import signal
import sys
import traceback
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from controller.cli.errors import CliError
from controller.cli.program import program
from controller.cli.shape import printable
from controller.devstack.processes import StackError, interrupt_on_termination

if TYPE_CHECKING:
    from controller.cli.oncall import OnCall

OBJECT_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
WATCH_ERROR = 2  # `get --watch` exits 1 for a rollout that failed: an error must not read as one


def _dev_up(args: argparse.Namespace) -> int:
    from controller.devstack.stack import Stack, default_state_dir

    stack = Stack(root=args.state_dir or default_state_dir())
    # Once the stack is up, a `kill` or a closed terminal is ignored (the handler below puts this back on leaving):
    # killed in the last moments before exiting 0, `dev up` would leave the stack running while its caller (the
    # demo's cleanup) reads the kill as "not up". It exits right after printing; Ctrl-C and SIGKILL still end it.
    # The disposition, not a mask: a mask is per thread.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    started = False
    try:
        with interrupt_on_termination():  # a `kill` or a closed terminal mid-start stops what did start, as Ctrl-C
            stack.up(with_mlflow=not args.no_mlflow, with_prometheus=not args.no_prometheus)
            started = True
    except KeyboardInterrupt:
        if started:  # it came after up() had returned, before the handler was taken away: stop it as up() would
            stack.down()
        raise
    for key, value in stack.environment().items():
        print(f"export {key}={shlex.quote(value)}")
    timings = ", ".join(f"{name} {seconds:.1f}s" for name, seconds in stack.timings.items())
    # Named whatever chose it (the flag, MODELROLLOUT_STATE_DIR): the shell that runs `dev down` may lack either.
    down = f"{program()} dev down --state-dir {shlex.quote(str(stack.root))}"
    print(f"# local stack up ({timings}); stop it with: {down}", file=sys.stderr)
    return 0


def _dev_down(args: argparse.Namespace) -> int:
    from controller.devstack.stack import Stack, default_state_dir

    stopped = Stack(root=args.state_dir or default_state_dir()).down()
    print(f"stopped {len(stopped)} process(es)" if stopped else "no local stack was running", file=sys.stderr)
    return 0


def _dev_env(args: argparse.Namespace) -> int:
    from controller.devstack.stack import load_state

    for key, value in load_state(args.state_dir).get("env", {}).items():
        print(f"export {key}={shlex.quote(value)}")
    return 0


def _dev_demo(args: argparse.Namespace) -> int:
    from controller.devstack.demo import run_demo
    from controller.devstack.stack import default_state_dir, load_state

    root = args.state_dir or default_state_dir()
    with interrupt_on_termination():  # the demo's operator, exporter and model servers are stopped on `kill` too
        return run_demo(load_state(root), root / "demo")


def _operator_run(args: argparse.Namespace) -> int:
    import logging

    from controller.cli.oncall import KUBECONFIG_ERRORS, no_cluster
    from controller.operator.handlers import run
    from controller.operator.kubeapi import load_client_config
    from controller.operator.runtime import DEFAULT_STORAGE_URI_TEMPLATE, OperatorConfig, fill_storage_uri

    try:  # kopf would retry a login that cannot work, every minute, for ever
        load_client_config(args.kubeconfig)
    except KUBECONFIG_ERRORS as exc:
        raise no_cluster(exc, args.kubeconfig) from None
    try:  # a typo here would fail every staging and restore
        fill_storage_uri(args.storage_uri_template or DEFAULT_STORAGE_URI_TEMPLATE, name="m", version="1",
                         source="s3://b/m", run_id="r", download_uri="s3://b/m")
    except ValueError as exc:
        raise CliError(str(exc)) from None
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    config = OperatorConfig(
        default_tracking_uri=args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"),
        default_prometheus_url=args.prometheus_url or os.environ.get("PROMETHEUS_URL"),
        storage_uri_template=args.storage_uri_template or None, gate_protocol=args.gate_protocol,
        https_allowed_hosts=tuple(h for h in args.dataset_https_hosts.split(",") if h),
        gate_hosts=args.gate_hosts, max_dataset_bytes=args.max_dataset_bytes, scrape_interval=args.scrape_interval)
    run(config, kubeconfig=args.kubeconfig, namespaces=args.namespace, liveness_endpoint=args.liveness,
        metrics_address=args.metrics_address, metrics_port=None if args.metrics_port < 0 else args.metrics_port)
    return 0


def _scrape_interval(text: str) -> timedelta:
    from controller.api.durations import parse_duration

    try:
        interval = parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    if not timedelta(seconds=1) <= interval <= timedelta(minutes=10):
        raise argparse.ArgumentTypeError(f"{text!r} is not a scrape interval from 1s to 10m")
    return interval


def _wait(text: str) -> timedelta:
    from controller.api.durations import parse_duration

    if text == "0":
        return timedelta()
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _host_patterns(text: str) -> tuple[str, ...]:
    from controller.api.reach import parse_host_patterns

    try:
        return parse_host_patterns(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _port(text: str, off: int | None = None) -> int:
    """A TCP port to bind (0: any free one), or `off` where the option has a value for "none": bind() would fail
    with a traceback on one above 65535."""
    try:
        port = int(text)
    except ValueError:
        port = -2
    if port != off and not 0 <= port <= 65535:
        also = f", or {off} for none" if off is not None else ""
        raise argparse.ArgumentTypeError(f"{text!r} is not a port: a number from 0 to 65535{also}")
    return port


def _byte_size(text: str, env: str | None = None) -> int:
    """A size as Kubernetes writes quantities (768Mi), for the chart's values."""
    match = re.fullmatch(r"([0-9]{1,15})(Ki|Mi|Gi|Ti)?", text.strip())
    if not match or not int(match.group(1)):
        # The value may come from the environment (as in the shipped manifests), not the flag: say both.
        where = f" (the flag, or ${env})" if env else ""
        raise argparse.ArgumentTypeError(f"{text!r}{where} is not a positive size: bytes, or a number with Ki, Mi, "
                                         "Gi or Ti")
    return int(match.group(1)) * 1024 ** ("", "Ki", "Mi", "Gi", "Ti").index(match.group(2) or "")


def _positive_int(text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,15}", text.strip()) or not int(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def _object_name(text: str) -> str:
    # An empty name would ask for the list; a slash for another path.
    if len(text) > 253 or not OBJECT_NAME.fullmatch(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a Kubernetes object name (lowercase letters, digits, "
                                         "'-' and '.', starting and ending with a letter or digit)")
    return text


def _exporter_run(args: argparse.Namespace) -> int:
    import logging

    from controller.exporter.events import DecodeOptions
    from controller.exporter.server import MAX_TOTAL_SERIES, class_names_problem, run

    total = args.max_series or MAX_TOTAL_SERIES
    if args.max_namespace_series is not None and args.max_namespace_series > total:
        args.usage_error(f"argument --max-namespace-series: {args.max_namespace_series} is more than --max-series "
                         f"({total}): one namespace's share cannot exceed all series")
    # Unset bounds are left to run(): the exporter's constants are the one source of their defaults.
    bounds = {name: value for name, value in (
        ("max_total_series", args.max_series), ("max_namespace_series", args.max_namespace_series),
        ("max_pending_bytes", args.max_pending_bytes), ("body_read_slots", args.body_read_slots),
        ("max_connections", args.max_connections)) if value is not None}
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    names = tuple(n.strip() for n in args.class_names.split(",")) if args.class_names else ()
    if (problem := class_names_problem(names)) is not None:  # (the one check run() makes too)
        args.usage_error(f"argument --class-names: {problem}")
    try:
        run(args.host, args.port, DecodeOptions(class_names=names, v2_output=args.v2_output),
            drain_seconds=args.drain.total_seconds(), **bounds)
    except OSError as exc:  # the port is taken, or the address is not this host's
        raise CliError(f"cannot listen on {args.host}:{args.port}: {exc.strerror or type(exc).__name__}") from None
    return 0


def _oncall(args: argparse.Namespace) -> int:
    try:
        return _oncall_command(args)
    except CliError as exc:
        if getattr(args, "watch", False):
            raise CliError(str(exc), code=WATCH_ERROR) from None
        raise
    except OSError:  # main's own exit codes (141 for a closed pipe, 2 for a watch's output that failed)
        raise
    except Exception as exc:
        if not getattr(args, "watch", False):
            raise
        # Exit 1 would read as a failed rollout: what no handler foresaw (a status nested past the recursion limit)
        # means it could not be read. Only the type, as in main().
        raise CliError(f"ModelRollout {args.name} cannot be read: unexpected {type(exc).__name__}{_raised_at(exc)} "
                       "(its message is not shown: it may hold credentials)", code=WATCH_ERROR) from None


def _oncall_command(args: argparse.Namespace) -> int:
    from controller.api.commands import CommandAction
    from controller.cli.oncall import OnCall, printable

    if getattr(args, "timeout", None) is not None and not args.watch:
        raise CliError("--timeout applies to --watch only")
    oncall = OnCall(args.kubeconfig, args.namespace, context_name=args.context)
    output = getattr(args, "output", None)
    if args.command in ("abort", "promote", "retry", "rollback"):
        command, uid = oncall.send(args.name, CommandAction(args.command), full=getattr(args, "full", False))
        print(printable(f"{command.label} sent to {oncall.namespace}/{args.name} as {command.actor} "
                        f"(id {command.id})"), flush=True)
        if args.wait:  # the exit code says whether the operator carried it out, not only that it was written
            oncall.await_handled(args.name, command, uid, args.wait.total_seconds())
        return 0
    if args.command == "list":
        found: Any = oncall.list(args.all_namespaces)
        what = "ModelRollouts: a status"
    elif args.command == "get" and args.watch:
        found = None  # the watch reads for itself: within --timeout, and on through an API server restart
        what = f"{oncall.namespace}/{args.name}: its status"
    else:
        found = oncall.get(args.name)
        what = f"{oncall.namespace}/{args.name}: its status"
    try:
        return _show(oncall, args, found, output)
    except (KeyError, TypeError, AttributeError, ValueError, OverflowError) as exc:
        # A status no view foresaw (hand-edited, or from another writer): one line, and -o json still works.
        raise CliError(f"cannot show {what} has an unexpected shape ({type(exc).__name__}); "
                       "`-o json` shows it as stored") from None


def _show(oncall: OnCall, args: argparse.Namespace, obj: Any, output: str | None) -> int:
    """`obj`: the rollout, or for `list` the list of them."""
    from controller.cli.oncall import dump

    if args.command == "list" and output:
        dump({"items": obj}, output, sys.stdout)
    elif args.command == "list":
        oncall.print_list(obj, args.all_namespaces)
    elif output:
        dump(obj if args.command == "get" else (obj.get("status") or {}).get("history", []), output, sys.stdout)
    elif args.command == "get" and args.watch:
        # Like `kubectl rollout status`: scripts and CI read the outcome from the exit code.
        phase = oncall.watch(args.name, timeout=args.timeout.total_seconds() if args.timeout else None)
        if phase is None:
            from controller.api.durations import format_duration

            raise CliError(f"{oncall.namespace}/{args.name} did not end within --timeout "
                           f"{format_duration(args.timeout)}", code=WATCH_ERROR)
        return 0 if phase == "Succeeded" else 1
    elif args.command == "get":
        oncall.print_rollout(obj)
    elif args.command == "history":
        oncall.print_history(obj)
    else:
        explanation = oncall.explain(obj)
        print(explanation)
        if getattr(args, "html", None):
            from controller.cli.report import write_html

            try:
                path = write_html(obj, args.html, explanation)
            except OSError as exc:
                raise CliError(f"cannot write {args.html}: {exc.strerror or type(exc).__name__}") from None
            print(f"wrote {path}: the timeline of {oncall.namespace}/{args.name} as a self-contained page")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="modelrollout", description="Safe rollouts of ML models on Kubernetes.")
    commands = parser.add_subparsers(dest="command", required=True)

    dev = commands.add_parser("dev", help="the local stack: kube-apiserver + etcd, MLflow, Prometheus")
    dev_commands = dev.add_subparsers(dest="dev_command", required=True)
    for name, handler, help_text in (("up", _dev_up, "start the stack and print shell exports"),
                                     ("down", _dev_down, "stop every process the stack started"),
                                     ("env", _dev_env, "print the shell exports of the running stack"),
                                     ("demo", _dev_demo, "run the content-moderation rollouts on the stack")):
        sub = dev_commands.add_parser(name, help=help_text)
        # Absolute: the exports and the `dev down` hint it is printed in are used from other directories.
        sub.add_argument("--state-dir", type=lambda text: Path(os.path.abspath(text)), default=None,
                         help="where the stack keeps its files")
        sub.set_defaults(handler=handler)
        if name == "up":
            sub.add_argument("--no-mlflow", action="store_true", help="skip the MLflow server")
            sub.add_argument("--no-prometheus", action="store_true", help="skip Prometheus")

    operator = commands.add_parser("operator", help="the controller")
    operator_commands = operator.add_subparsers(dest="operator_command", required=True)
    run_parser = operator_commands.add_parser("run", help="run the controller against a cluster")
    run_parser.add_argument("--kubeconfig", default=None,
                            help="kubeconfig path (default: $KUBECONFIG, else in-cluster, else ~/.kube/config)")
    run_parser.add_argument("--namespace", "-n", action="append", default=None,
                            help="watch only this namespace (repeatable); default: all namespaces")
    run_parser.add_argument("--liveness", default=None, help="serve a health endpoint, e.g. http://0.0.0.0:8080/healthz")
    run_parser.add_argument("--metrics-address", default="127.0.0.1",
                            help="address /metrics binds to (default 127.0.0.1; 0.0.0.0 in a pod)")
    run_parser.add_argument("--metrics-port", type=lambda text: _port(text, off=-1), default=9100,
                            help="port of /metrics (default 9100; 0: any free port, logged; -1: no metrics)")
    run_parser.add_argument("--tracking-uri", default=None,
                            help="default MLflow tracking URI (default: $MLFLOW_TRACKING_URI)")
    run_parser.add_argument("--prometheus-url", default=None, help="default Prometheus URL (default: $PROMETHEUS_URL)")
    run_parser.add_argument("--storage-uri-template", default=os.environ.get("MODELROLLOUT_STORAGE_URI_TEMPLATE"),
                            help="what the serving system loads: {name} {version} {source} {run_id} {download_uri} "
                                 "(MLflow's get-download-uri, read only when named). Not set: {source}, refused for "
                                 "KServe and SeldonDeployment targets when it is a models:, runs: or "
                                 "mlflow-artifacts: URI, which only MLflow resolves")
    run_parser.add_argument("--scrape-interval", type=_scrape_interval, default="30s",
                            help="how often Prometheus scrapes the prediction exporter (default 30s): a judge whose "
                                 "arm has no sample within twice this is inconclusive (StaleSeries)")
    run_parser.add_argument("--gate-protocol", choices=["v1", "v2"], default="v2",
                            help="inference protocol the golden gate speaks to the model servers")
    run_parser.add_argument("--dataset-https-hosts", default="",
                            help="comma-separated hosts that https:// golden datasets may come from")
    run_parser.add_argument("--gate-hosts", type=_host_patterns, default=(),
                            help="comma-separated hosts a gate URL override may name besides the rollout's "
                                 "namespace's Services; {namespace} and a leading *. allowed")

    # Below the pod's /tmp volume: the kubelet evicts a pod whose emptyDir outgrows its sizeLimit.
    run_parser.add_argument("--max-dataset-bytes", type=lambda text: _byte_size(text, "MODELROLLOUT_MAX_DATASET_BYTES"),
                            default=os.environ.get("MODELROLLOUT_MAX_DATASET_BYTES", "4Gi"),
                            help="golden-dataset bytes the gate keeps on its scratch disk, one dataset and all gates "
                                 "in flight together (e.g. 768Mi; default $MODELROLLOUT_MAX_DATASET_BYTES or 4Gi)")
    run_parser.set_defaults(handler=_operator_run)

    for name, help_text in (("list", "list ModelRollouts"), ("get", "show one rollout (--watch: live)"),
                            ("history", "the timeline, with who did what"),
                            ("explain", "the last decision in plain words"),
                            ("abort", "stop and go back to stable"), ("promote", "go past the current pause or step"),
                            ("retry", "run a failed or rolled-back rollout again"),
                            ("rollback", "go back to the previous version, also after success")):
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument("--kubeconfig", default=None)
        sub.add_argument("--context", default=None, help="the kubeconfig context to use (default: the current one)")
        sub.add_argument("-n", "--namespace", default=None)
        if name == "list":
            sub.add_argument("-A", "--all-namespaces", action="store_true")
        else:
            sub.add_argument("name", type=_object_name)
        # One or the other: a watch prints progress until the end, -o one document now.
        shown = sub.add_mutually_exclusive_group() if name == "get" else sub
        if name in ("list", "get", "history"):
            shown.add_argument("-o", "--output", choices=["json", "yaml"], default=None)
        if name == "get":
            shown.add_argument("-w", "--watch", action="store_true",
                               help="print each change until the rollout ends; exit 0 on Succeeded, 1 on RolledBack "
                                    "or Failed or a pause for a human after a failed or gate-inconclusive check, "
                                    "or a Succeeded that left a version a verdict rejected serving (Ready False, "
                                    "PreviouslyRejected), or a status the operator cannot store or read "
                                    "(StatusRejected, StatusUnreadable), "
                                    f"{WATCH_ERROR} on an error (it could not be read: not found, no permission, "
                                    "deleted and created again; an API server that does not answer or answers 5xx is "
                                    "read again until --timeout) or at --timeout")
            sub.add_argument("--timeout", type=_wait, default=None, metavar="DURATION",
                             help=f"with --watch: give up after this long, exit {WATCH_ERROR} (default and 0: no "
                                  "limit)")
        if name == "explain":
            sub.add_argument("--html", type=Path, default=None, metavar="FILE",
                             help="also write a self-contained page: weight and class rates over time, decisions")
        if name == "promote":
            sub.add_argument("--full", action="store_true", help="skip every remaining step")
        if name in ("abort", "promote", "retry", "rollback"):
            # Past KServe's 10 s settle time, which a rollback's reconcile can spend before it reads the command.
            sub.add_argument("--wait", type=_wait, default="30s", metavar="DURATION",
                             help="wait this long for the operator to handle the command (default 30s; 0: do not "
                                  "wait): exit 1 when it refuses it, 0 when it applied it or has not handled it yet")
        sub.set_defaults(handler=_oncall)

    exporter = commands.add_parser("exporter", help="the prediction exporter (logger CloudEvents -> Prometheus)")
    exporter_commands = exporter.add_subparsers(dest="exporter_command", required=True)
    exporter_run = exporter_commands.add_parser("run", help="receive logger events and serve /metrics")
    exporter_run.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    exporter_run.add_argument("--port", type=_port, default=9102)
    exporter_run.add_argument("--class-names", default="",
                              help="comma-separated class names, for outputs that are indexes or probabilities "
                                   "(without them, such an output is dropped as NoClassNames)")
    exporter_run.add_argument("--v2-output", default=None, help="V2 output holding the prediction (default: first)")
    # Memory bounds (see controller/exporter/server.py): raise them with the pod's memory limit.
    exporter_run.add_argument("--max-series", type=_positive_int, default=None, metavar="N",
                              help="prediction series counted in all; one past it is dropped as TooManySeries "
                                   "(default 6144, ~50 MiB at the peak of a /metrics render)")
    exporter_run.add_argument("--max-namespace-series", type=_positive_int, default=None, metavar="N",
                              help="prediction series one namespace may take, at most --max-series "
                                   "(default: a quarter of --max-series)")
    exporter_run.add_argument("--max-pending-bytes", type=_byte_size, default=None, metavar="SIZE",
                              help="request attributes held in memory until their response event comes, e.g. 16Mi "
                                   "(default 8Mi; past it the oldest request is forgotten)")
    exporter_run.add_argument("--body-read-slots", type=_positive_int, default=None, metavar="N",
                              help="event bodies read at once, each up to 4 MiB in memory; a sender finding none free "
                                   "for 5s gets 503 (default 8)")
    exporter_run.add_argument("--max-connections", type=_positive_int, default=None, metavar="N",
                              help="connections held open at once, each up to ~270 KiB of memory for its headers "
                                   "(136 KiB of text); past it the longest-idle one, else the longest stalled in a "
                                   "request, is closed for the newcomer (default 256)")
    exporter_run.add_argument("--drain", type=_wait, default="0", metavar="DURATION",
                              help="after SIGTERM, fail /readyz and go on serving until a scrape 2s later has read "
                                   "the last counts, for at most this long, e.g. 40s (default 0: stop at once); "
                                   "a second signal stops at once")
    exporter_run.set_defaults(handler=_exporter_run, usage_error=exporter_run.error)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        code = int(args.handler(args))
        sys.stdout.flush()  # a closed pipe shows here, not in the interpreter's last flush
        return code
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except CliError as exc:
        # Escaped: the text may quote the API server (a Status message, a proxy's) or a kubeconfig's namespace.
        print(f"error: {printable(str(exc))}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # the reader went away (`| head`): stop quietly, as a killed pipe writer would
        _stdout_to_devnull()
        return 141
    except OSError as exc:  # one no handler foresaw, e.g. stdout on a full disk: the OS's words, not the paths
        _stdout_to_devnull()
        print(f"error: {exc.strerror or 'input/output failed'} ({type(exc).__name__})", file=sys.stderr)
        return WATCH_ERROR if getattr(args, "watch", False) else 1  # a watch's 1 says the rollout failed
    except Exception as exc:  # the last resort: only the type, as the text may quote a secret (a request's header)
        print(f"error: unexpected {type(exc).__name__}{_raised_at(exc)} (its message is not shown: it may hold "
              "credentials)", file=sys.stderr)
        return 1


def _raised_at(exc: BaseException) -> str:
    """Where in our code it was raised (file and line say nothing secret), for a bug report."""
    package = Path(__file__).resolve().parent.parent  # controller/
    for frame in reversed(traceback.extract_tb(exc.__traceback__)):
        path = Path(frame.filename).resolve()
        if path.is_relative_to(package):
            return f" at {path.relative_to(package.parent).as_posix()}:{frame.lineno}"
    return ""


def _stdout_to_devnull() -> None:
    """What stdout can still take is written, the rest dropped: the interpreter's last flush must not fail with a
    traceback after the one line already said what went wrong."""
    with contextlib.suppress(OSError, ValueError):  # ValueError: a stdout without a descriptor (in tests)
        sys.stdout.flush()
    with contextlib.suppress(OSError, ValueError):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    sys.exit(main())
