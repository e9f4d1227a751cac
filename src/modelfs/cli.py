"""The ``modelfs`` command line: argument parsing and printing only; the work is done by ``Store`` and ``mount``.

Every ``ModelfsError`` becomes one line on stderr and its exit code; nothing prints a traceback to a user.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from .allocator import tune_for_chunks
from .errors import BadInputError, ModelfsError
from .progress import Progress, human_bytes
from .sizes import parse_size
from .store import DEFAULT_CHUNK_SIZE, Store

EPILOG = "Docs: README.md, docs/architecture.md, docs/format.md, docs/operations.md."


def _waiting() -> None:
    if sys.stderr.isatty():
        print("waiting for another add/rm/gc on this store to finish...", file=sys.stderr)


def cmd_init(args: argparse.Namespace) -> int:
    Store.init(Path(args.store), chunk_size=args.chunk_size)
    print(f"created empty store {args.store}")
    return 0


def cmd_add(args: argparse.Namespace) -> int:
    with Store.open(Path(args.store)) as store:
        progress = Progress(f"adding {args.name}")
        from .delta import base_options

        extra = base_options(store, args.base, Path(args.src))
        try:
            store.add(Path(args.src), args.name, progress=progress, on_wait=_waiting, **extra)
        finally:
            progress.finish()
        info = next(m for m in store.models() if m.name == args.name)
    print(
        f"added {info.name}: {info.files} files, {human_bytes(info.logical_bytes)} logical, "
        f"{human_bytes(info.stored_bytes)} stored" + (f" (delta of {info.base})" if info.base else "")
    )
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    with Store.open(Path(args.store)) as store:
        models = store.models()
        if args.name:
            for entry in store.model_files(args.name):
                print(f"{entry.size:>14}  {entry.stored_size:>14}  {entry.path}")
            return 0
        print(f"{'MODEL':<40} {'FILES':>5} {'LOGICAL':>12} {'STORED':>12}  BASE")
        for m in models:
            print(
                f"{m.name:<40} {m.files:>5} {human_bytes(m.logical_bytes):>12} "
                f"{human_bytes(m.stored_bytes):>12}  {m.base or '-'}"
            )
    return 0


def cmd_stats(args: argparse.Namespace) -> int:
    from .delta import delta_report

    with Store.open(Path(args.store)) as store:
        stats = store.stats()
        stats["deltas"] = delta_report(store)
    if args.json:
        print(json.dumps(stats, indent=2, sort_keys=True))
        return 0
    logical = int(stats["logical_bytes"])  # type: ignore[call-overload]
    print(f"models:               {stats['models']}")
    print(f"logical bytes:        {human_bytes(logical)} ({logical})")
    for key in ("saved_by_dedup", "saved_by_compression", "stored_bytes", "disk_bytes"):
        value = int(stats[key])  # type: ignore[call-overload]
        share = f" ({value / logical:.1%} of logical)" if logical else ""
        print(f"{key.replace('_', ' ') + ':':<22}{human_bytes(value)}{share}")
    for d in stats["deltas"]:  # type: ignore[attr-defined]
        print(
            f"delta:                {d['model']} against {d['base']}: {human_bytes(d['stored_bytes'])} stored "
            f"of {human_bytes(d['logical_bytes'])} ({d['ratio']:.1%}); {d['delta_tensors']} tensors as XOR deltas "
            f"saved ~{human_bytes(d['saved_by_delta_est'])}, {human_bytes(d['shared_with_base'])} shared with base"
        )
    return 0


def cmd_cat(args: argparse.Namespace) -> int:
    with Store.open(Path(args.store)) as store:
        entry = store.lookup_file(args.path)
        out = sys.stdout.buffer
        for piece in store.iter_file(entry):
            out.write(piece)
        out.flush()
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export_model

    with Store.open(Path(args.store)) as store:
        count = export_model(store, args.name, Path(args.dest))
    print(f"exported {count} files of {args.name} to {args.dest}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with Store.open(Path(args.store)) as store:
        store.remove(args.name, on_wait=_waiting)
    print(f"removed {args.name}; run 'modelfs gc {args.store}' to reclaim its space")
    return 0


def cmd_gc(args: argparse.Namespace) -> int:
    with Store.open(Path(args.store)) as store:
        report = store.gc(on_wait=_waiting)
    print(
        f"gc: freed {report.objects_freed} objects, deleted {report.packs_deleted} packs, rewrote "
        f"{report.packs_rewritten}, reclaimed {human_bytes(report.bytes_reclaimed)}"
    )
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    with Store.open(Path(args.store)) as store:
        progress = Progress("verifying")
        report = store.verify(progress=progress)
        progress.finish()
    for problem in report.problems:
        print(f"DAMAGED: {problem}", file=sys.stderr)
    if report.orphan_packs:
        print(f"note: {len(report.orphan_packs)} unreferenced pack(s); 'modelfs gc' removes them", file=sys.stderr)
    status = "FAILED" if report.problems else "ok"
    print(f"verify {status}: {report.objects} objects, {report.chunks} chunks, {human_bytes(report.bytes)} checked")
    return 1 if report.problems else 0


def cmd_mount(args: argparse.Namespace) -> int:
    from .config import from_cli_args
    from .mount import run_mount

    return run_mount(from_cli_args(args))


def cmd_umount(args: argparse.Namespace) -> int:
    from .config import mountpoint_from_toml
    from .mount import is_mounted, unmount

    if (args.mountpoint is None) == (args.config is None):
        raise BadInputError("give MOUNTPOINT or --config FILE")
    mnt = Path(args.mountpoint) if args.mountpoint else mountpoint_from_toml(Path(args.config))
    if args.if_mounted and not is_mounted(mnt.absolute()):
        return 0
    unmount(mnt, lazy=args.lazy)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from .metrics import status_main

    return status_main(Path(args.mountpoint))


def _mount_helper(argv: list[str]) -> int:
    """``modelfs STORE MOUNTPOINT -o OPTIONS``: how mount.fuse3 runs us (fstab, ``mount -t fuse.modelfs``)."""
    from .config import parse_mount_helper_argv
    from .mount import run_mount

    logging.basicConfig(level="WARNING", format="modelfs: %(levelname)s %(message)s")
    try:
        return run_mount(parse_mount_helper_argv(argv))
    except ModelfsError as exc:
        print(f"modelfs: error: {exc}", file=sys.stderr)
        return exc.exit_code


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="modelfs",
        description="Store model weights deduplicated and losslessly compressed, and serve them through a "
        "read-only FUSE mount whose files are byte-identical to the originals.",
        epilog=EPILOG,
    )
    parser.add_argument("--log-level", default=None, help="logging level (default: warning; mount: info)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable[[argparse.Namespace], int], help: str, desc: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=desc, epilog=EPILOG)
        p.set_defaults(func=func)
        return p

    p = command("init", cmd_init, "create an empty store", "Create an empty store in STORE (new or empty directory).")
    p.add_argument("store")
    p.add_argument(
        "--chunk-size",
        type=parse_size,
        default=DEFAULT_CHUNK_SIZE,
        help="raw bytes per compressed chunk, e.g. 512K or 1M (default 1M): larger compresses slightly better, "
        "smaller decodes less per random read",
    )

    p = command(
        "add",
        cmd_add,
        "ingest a model directory",
        "Ingest SRC_DIR (*.safetensors shards and any other files) as model NAME. Tensors and files already in the "
        "store are stored once; the model becomes visible all at once when the command succeeds.",
    )
    p.add_argument("store")
    p.add_argument("src")
    p.add_argument("--name", required=True, help="model name, e.g. org/model")
    p.add_argument(
        "--base",
        default="auto",
        help="store tensors as deltas (XOR or float difference) of this model's same-name tensors where that is smaller: a model name, "
        "'auto' (default: the store's most similar model, if any saves space) or 'none'",
    )

    p = command("ls", cmd_ls, "list models (or one model's files)", "List models with logical and stored size.")
    p.add_argument("store")
    p.add_argument("name", nargs="?", help="list this model's files instead")

    p = command("stats", cmd_stats, "show space savings", "Logical bytes, stored bytes and what dedup and "
                "compression saved.")
    p.add_argument("store")
    p.add_argument("--json", action="store_true", help="machine-readable output")

    p = command("cat", cmd_cat, "write a file's original bytes to stdout", "Stream org/model/path/file to stdout.")
    p.add_argument("store")
    p.add_argument("path", help="org/model/relative/path")

    p = command("export", cmd_export, "write a model back out", "Write model NAME into DEST_DIR, byte-identical.")
    p.add_argument("store")
    p.add_argument("name")
    p.add_argument("dest")

    p = command("rm", cmd_rm, "remove a model", "Remove model NAME; 'gc' then reclaims its space.")
    p.add_argument("store")
    p.add_argument("name")

    p = command("gc", cmd_gc, "reclaim unreferenced space", "Delete chunks and packs no model references any "
                "more, and leftovers of interrupted adds.")
    p.add_argument("store")

    p = command("verify", cmd_verify, "check every chunk", "Re-read and re-hash every chunk; exit 1 on any damage.")
    p.add_argument("store")

    p = command("mount", cmd_mount, "mount the store read-only", "Mount STORE at MOUNTPOINT: every model appears as "
                "MOUNTPOINT/org/model with its original files.")
    p.add_argument("store", nargs="?")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--config", help="TOML config file (see docs/operations.md)")
    p.add_argument("--cache-size", type=parse_size, help="decoded-chunk cache budget, e.g. 2G (default 1G)")
    p.add_argument("--foreground", "-f", action="store_true", help="stay in the foreground (systemd, debugging)")
    p.add_argument("-o", dest="options", default=None, help="mount options, e.g. allow_other,cache_size=4G")
    p.add_argument(
        "--log-level", default=argparse.SUPPRESS, help="the daemon's log level: debug, info, warning, error (default info)"
    )

    p = command("umount", cmd_umount, "unmount", "Unmount MOUNTPOINT (lazily if the daemon died).")
    p.add_argument("mountpoint", nargs="?")
    p.add_argument("--config", help="unmount the mountpoint this TOML config names")
    p.add_argument("--lazy", action="store_true", help="detach now even if busy (umount -l)")
    p.add_argument("--if-mounted", action="store_true", help="succeed quietly if nothing is mounted there")

    p = command("status", cmd_status, "show a mount's live metrics", "Print a mount's live counters.")
    p.add_argument("mountpoint")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_for_chunks()
    parser = build_parser()
    from .config import is_mount_helper_argv

    commands = next(a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    if is_mount_helper_argv(argv, list(commands)):
        return _mount_helper(argv)
    args = parser.parse_args(argv)
    level = (args.log_level or "warning").upper()
    logging.basicConfig(level=level, format="modelfs: %(levelname)s %(message)s")
    try:
        return int(args.func(args))
    except ModelfsError as exc:
        print(f"modelfs: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("modelfs: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except OSError as exc:
        print(f"modelfs: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "), file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
