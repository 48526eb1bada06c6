"""A throwaway PostgreSQL cluster for tests and benchmarks: initdb in a temporary folder,
started on a free port on 127.0.0.1, removed when stopped.

As a program it starts one and prints ``export MM_TEST_DATABASE_URL=...`` and
``export MM_TEST_PG_DIR=...`` (for ``eval``), or with ``--url`` the URL alone, and leaves
it running; ``--stop DIR`` stops and removes it::

    eval "$(.venv/bin/python tools/pg_throwaway.py)"
    .venv/bin/python tools/pg_throwaway.py --stop "$MM_TEST_PG_DIR"

The server binaries are looked up in ``/usr/lib/postgresql/*/bin`` (Debian's layout,
newest version first), then on ``PATH``. ``initdb`` refuses to run as root, so when run
as root the cluster runs as the ``postgres`` user (Debian's package creates it) or, where
that does not exist, as a ``mm-pg`` user created for it. The server trusts local
connections: it is for throwaway data on loopback only.
"""

from __future__ import annotations

import argparse
import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path
from urllib.parse import quote

USER = "mm"  # the database user and database the URL names


class Unavailable(RuntimeError):
    """PostgreSQL's server binaries are missing or the cluster could not start; the
    message says which."""


def find_bin(name: str = "initdb") -> Path | None:
    """The directory holding PostgreSQL's server binaries, or None."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version, reverse=True)
    if found:
        return Path(found[0]).parent
    on_path = shutil.which(name)
    return Path(on_path).parent if on_path else None


def _version(path: str) -> float:
    try:
        return float(Path(path).parts[-3])
    except ValueError:
        return 0.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> pwd.struct_passwd | None:
    """The unprivileged user to run the cluster as when we are root; None otherwise."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "mm-pg"):
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", "mm-pg"],
        check=True,
        capture_output=True,
    )
    return pwd.getpwnam("mm-pg")


def _cmd(user: pwd.struct_passwd | None, argv: list[str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LC_ALL": "C.UTF-8"}
    if user is not None:
        env["HOME"] = tempfile.gettempdir()
    return subprocess.run(
        argv,
        user=user.pw_uid if user is not None else None,
        group=user.pw_gid if user is not None else None,
        extra_groups=[] if user is not None else None,
        capture_output=True,
        text=True,
        env=env,
        cwd=tempfile.gettempdir(),
        timeout=120,
        check=False,
    )


def start(base: Path | None = None) -> tuple[str, Path]:
    """Create and start a cluster; return (database URL, its folder). Raises
    :class:`Unavailable` with the reason."""
    bindir = find_bin()
    if bindir is None:
        raise Unavailable("PostgreSQL's initdb was not found (/usr/lib/postgresql/*/bin, PATH)")
    user = _run_as()
    root = Path(tempfile.mkdtemp(prefix="mm-pg-", dir=base))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if user is not None:
        os.chmod(root, 0o755)
        for path in (root, sock):
            os.chown(path, user.pw_uid, user.pw_gid)
    init = _cmd(
        user,
        [
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            USER,
            "--auth=trust",
            "--encoding=UTF8",
            "--no-sync",
        ],
    )
    if init.returncode != 0:
        raise Unavailable(f"initdb failed: {init.stderr.strip() or init.stdout.strip()}")
    port = _free_port()
    opts = (
        f"-c listen_addresses=127.0.0.1 -p {port} -k {sock} -c fsync=off"
        " -c synchronous_commit=off -c full_page_writes=off -c max_connections=300"
    )
    run = _cmd(
        user,
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(data),
            "-l",
            str(root / "log"),
            "-o",
            opts,
            "-w",
            "start",
        ],
    )
    if run.returncode != 0:
        log = (root / "log").read_text(errors="replace") if (root / "log").exists() else ""
        raise Unavailable(f"pg_ctl start failed: {run.stderr.strip()} {log[-2000:]}")
    (root / "port").write_text(str(port))
    (root / "opts").write_text(opts)
    create = _cmd(
        user,
        [
            str(bindir.parent / "bin" / "createdb"),
            "-h",
            str(sock),
            "-p",
            str(port),
            "-U",
            USER,
            USER,
        ],
    )
    if create.returncode != 0 and shutil.which("createdb"):
        create = _cmd(user, ["createdb", "-h", str(sock), "-p", str(port), "-U", USER, USER])
    if create.returncode != 0:
        stop(root)
        raise Unavailable(f"createdb failed: {create.stderr.strip()}")
    return f"postgresql://{USER}@127.0.0.1:{port}/{USER}", root


def fresh_schema(server: str, prefix: str = "t") -> str:
    """``server`` (a database URL) with a new, empty schema as its search path, so that
    a test or a benchmark setup starts with no rows and sees no one else's."""
    import psycopg  # (only this function needs it: the rest runs before it is installed)

    schema = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in server else "?"
    return f"{server}{sep}options={quote(f'-csearch_path={schema}')}"


def halt(root: Path) -> None:
    """Stop the server of the cluster in ``root`` (fast shutdown: clients are told
    ``AdminShutdown``), keeping its data for :func:`resume`."""
    bindir = find_bin("pg_ctl")
    assert bindir is not None
    done = _cmd(
        _run_as(), [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "fast", "-w", "stop"]
    )
    if done.returncode != 0:
        raise Unavailable(f"pg_ctl stop failed: {done.stderr.strip()}")


def resume(root: Path) -> None:
    """Start again the server :func:`halt` stopped, on the same port."""
    bindir = find_bin("pg_ctl")
    assert bindir is not None
    argv = [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-l", str(root / "log")]
    done = _cmd(_run_as(), [*argv, "-o", (root / "opts").read_text(), "-w", "start"])
    if done.returncode != 0:
        raise Unavailable(f"pg_ctl start failed: {done.stderr.strip()}")


def stop(root: Path) -> None:
    """Stop the cluster in ``root`` (fast shutdown) and remove the folder."""
    bindir = find_bin("pg_ctl")
    if bindir is not None and (root / "data").exists():
        user = _run_as()
        _cmd(user, [str(bindir / "pg_ctl"), "-D", str(root / "data"), "-m", "immediate", "stop"])
    shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--stop", metavar="DIR", help="stop and remove the cluster in DIR")
    parser.add_argument(
        "--url",
        action="store_true",
        help="print only the database URL (the way to stop it goes to stderr)",
    )
    args = parser.parse_args(argv)
    if args.stop:
        stop(Path(args.stop))
        return 0
    try:
        url, root = start()
    except Unavailable as exc:
        print(f"pg_throwaway: {exc}", file=sys.stderr)
        return 1
    if args.url:
        print(url)
        print(f"stop it with: {sys.argv[0]} --stop {root}", file=sys.stderr)
        return 0
    print(f"export MM_TEST_DATABASE_URL={url}")
    print(f"export MM_TEST_PG_DIR={root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
