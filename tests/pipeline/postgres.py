"""A real PostgreSQL server for tests: Debian's initdb + postgres in a temporary directory.

The server listens only on a Unix socket in that directory (no TCP port to collide with other
test workers). PostgreSQL refuses to run as root, so as root it runs as `nobody`.
"""
from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator

import pytest

USER = "kfx"  # the database superuser initdb creates (trust authentication on the socket)


def _binaries() -> str | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"))
    return os.path.dirname(found[-1]) if found else None


@contextlib.contextmanager
def postgres_server(timeout: float = 60.0) -> Iterator[str]:
    """Start a throwaway PostgreSQL server; yields its SQLAlchemy URL, stops and deletes it after.

    Skips the test only where the server cannot be installed: not root and no `postgresql`
    package (`make test` installs it when root).
    """
    bindir = _binaries()
    if bindir is None:
        if os.geteuid() != 0:
            pytest.skip("PostgreSQL server not installed (apt package postgresql) and not root to install it")
        raise RuntimeError("PostgreSQL server binaries missing under /usr/lib/postgresql/*/bin: "
                           "run `make postgresql` (apt-get install postgresql)")
    # /tmp: a short path (a Unix socket path must stay under ~100 bytes) that `nobody` can reach.
    home = tempfile.mkdtemp(prefix="kfxpg", dir="/tmp")
    run_as: dict = {}
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        run_as = {"user": nobody.pw_uid, "group": nobody.pw_gid, "extra_groups": []}
    data = os.path.join(home, "data")
    log = open(os.path.join(home, "server.log"), "w")  # noqa: SIM115 - kept open for the server's life
    proc = None
    try:
        init = subprocess.run([f"{bindir}/initdb", "-D", data, "-U", USER, "--auth=trust", "--no-sync",
                               "-E", "UTF8", "--locale=C"], capture_output=True, text=True, timeout=120,
                              cwd=home, **run_as)
        if init.returncode != 0:
            raise RuntimeError(f"initdb -D {data} failed (exit {init.returncode}): {init.stderr[-2000:]}")
        proc = subprocess.Popen(
            [f"{bindir}/postgres", "-D", data, "-k", home, "-c", "listen_addresses=",
             "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"],
            stdout=log, stderr=subprocess.STDOUT, cwd=home, **run_as)
        deadline = time.monotonic() + timeout
        while subprocess.run([f"{bindir}/pg_isready", "-q", "-h", home, "-U", USER],
                             timeout=30).returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"PostgreSQL did not start (exit {proc.poll()}): "
                                   f"{open(log.name).read()[-2000:]}")
            time.sleep(0.2)
        yield f"postgresql://{USER}@/postgres?host={home}"
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGINT)  # fast shutdown: disconnect clients, then exit
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)
        log.close()
        shutil.rmtree(home, ignore_errors=True)
