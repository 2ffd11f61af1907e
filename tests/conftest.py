"""Shared fixtures: a throwaway PostgreSQL server, a freshly migrated store on SQLite or PostgreSQL, and the demo
packages; plus `shared_builds`, which builds an expensive folder once per test run, however many xdist workers
(`make test` runs the suite with `-n`) ask for it."""

from __future__ import annotations

import fcntl
import os
import shutil
import signal
import stat
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

import engines
from engines import clone_home_store
from modelmarket.adapters.store import SqlStore, open_store
from modelmarket.cluster.postgres import PostgresServer, PostgresUnavailable, find_pg_tools, running_postgres
from modelmarket.demo import build_packages

pytest_plugins = ["fixtures_nats", "fixtures_s3"]


def _dump_asyncio_tasks(signum: int, frame: Any) -> None:
    """``kill -USR1 <worker pid>``: write the pending asyncio tasks of the loop running in the main thread, with
    their stacks, to ``/tmp/mm-tasks-<pid>.txt`` (a test stuck closing its event loop shows what it waits for)."""
    import asyncio

    with open(f"/tmp/mm-tasks-{os.getpid()}.txt", "a") as out:
        try:
            tasks = asyncio.all_tasks(asyncio.get_running_loop())
        except RuntimeError:
            out.write("no event loop running in the main thread\n")
            traceback.print_stack(frame, file=out)
            return
        for task in tasks:
            out.write(f"--- {task!r}\n")
            task.print_stack(file=out)


if hasattr(signal, "SIGUSR1"):
    signal.signal(signal.SIGUSR1, _dump_asyncio_tasks)


@pytest.fixture(scope="session", autouse=True)
def engine_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """On the real engines (`MM_TEST_ENGINES=real`, see tests/engines.py), the servers for this session and the
    MODELMARKET_ variables that point every platform of the session at them; otherwise nothing."""
    if not engines.REAL:
        yield {}
        return
    pg, nats, s3 = (request.getfixturevalue(name) for name in ("pg_server", "nats_server", "s3_server"))
    env = {
        "MODELMARKET_DATABASE_URL": pg.url("{home_id}"),
        "MODELMARKET_BUS_URL": nats.url,
        "MODELMARKET_BUS_NAMESPACE": "{home_id}",
        "MODELMARKET_BUS_PARTITIONS": "2",
        "MODELMARKET_BLOB_URL": "s3://modelmarket-tests",
        "MODELMARKET_S3_ENDPOINT": s3.endpoint,
        "AWS_ACCESS_KEY_ID": s3.access_key,
        "AWS_SECRET_ACCESS_KEY": s3.secret_key,
    }
    assert set(env) == engines.ENGINE_NAMES
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server on a free loopback port in a temp dir, stopped at the end of the session."""
    try:
        tools = find_pg_tools()
    except PostgresUnavailable as exc:
        pytest.skip(str(exc))
    with running_postgres(tools) as server:
        yield server


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SqlStore]:
    """A freshly migrated store: SQLite in tmp_path, or a new database on the session's PostgreSQL."""
    if request.param == "sqlite":
        sqlite_store = open_store(f"sqlite:///{tmp_path / 'modelmarket.db'}")
        try:
            yield sqlite_store
        finally:
            sqlite_store.dispose()
        return
    server: PostgresServer = request.getfixturevalue("pg_server")
    dbname = f"t_{uuid.uuid4().hex[:16]}"
    with psycopg.connect(server.admin_conninfo, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(dbname)))
    pg_store = open_store(server.url(dbname))
    try:
        yield pg_store
    finally:
        pg_store.dispose()
        with psycopg.connect(server.admin_conninfo, autocommit=True) as admin:
            admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(dbname)))


@dataclass(frozen=True)
class SharedBuilds:
    """Folders built once per test run and shared by every xdist worker (and, without xdist, by the session).

    The first worker that asks for a folder builds it while holding a lock; the others wait on the lock and then
    use what it built. A build that failed is not tried again: the others fail at once with its error. What is
    built here is read-only for the tests: copy it (`SharedBuilds.copy_tree`) before changing it.
    """

    root: Path

    def get(self, name: str, build: Callable[[Path], object]) -> Path:
        built, failed = self.root / name, self.root / f"{name}.failed"
        with open(self.root / f"{name}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file is closed, whatever happens
            if failed.exists():
                raise AssertionError(f"building the shared {name!r} failed in another worker:\n{failed.read_text()}")
            if not built.is_dir():
                # On the real engines a home's database and namespace are named after its path: build it where it
                # stays (a failed build leaves the `.failed` mark, checked above, so its remains are never used).
                work = built if engines.REAL else self.root / f"{name}.building"
                shutil.rmtree(work, ignore_errors=True)
                work.mkdir()
                try:
                    build(work)
                except BaseException:
                    failed.write_text(traceback.format_exc())
                    raise
                if work != built:
                    work.rename(built)
        return built

    @staticmethod
    def copy_tree(src: Path, dest: Path) -> Path:
        """A copy of ``src`` (regular files, links and folders; sockets and FIFOs left out) at ``dest``."""

        def special_files(folder: str, names: list[str]) -> set[str]:
            return {
                n
                for n in names
                if not stat.S_ISDIR(m := os.lstat(os.path.join(folder, n)).st_mode)
                and not stat.S_ISREG(m)
                and not stat.S_ISLNK(m)
            }

        shutil.copytree(src, dest, symlinks=True, ignore=special_files, dirs_exist_ok=True)
        return dest

    @classmethod
    def copy_home(cls, src: Path, dest: Path) -> Path:
        """A copy of the MODELMARKET_HOME ``src``, with its store (on the real engines, its database)."""
        cls.copy_tree(src, dest)
        clone_home_store(src, dest)
        return dest


@pytest.fixture(scope="session")
def shared_builds(tmp_path_factory: pytest.TempPathFactory) -> SharedBuilds:
    """Under xdist each worker's temp root is a folder of the run's: the run's is shared by all of them. On the
    real engines each worker builds its own (a home's database is on the worker's own PostgreSQL server)."""
    base = tmp_path_factory.getbasetemp()
    root = base.parent if os.environ.get("PYTEST_XDIST_WORKER") and not engines.REAL else base
    (root / "shared").mkdir(exist_ok=True)
    return SharedBuilds(root / "shared")


@pytest.fixture(scope="session")
def demo_dir(shared_builds: SharedBuilds) -> Path:
    """The demo model packages, built once per test run. Read-only: copy a package before changing it."""

    def build(out: Path) -> None:
        packages = build_packages(out, progress=lambda _: None)
        assert [p.name for p in packages] == [
            "digits",
            "digits-mlp",
            "sentiment",
            "speech-to-text",
            "smollm2-135m-instruct",
            "all-minilm-l6-v2",
            "credit-approval",
            "credit-approval-biased",
            "voice-sentiment",
        ]

    return shared_builds.get("demo-packages", build)


MARKET_UNIT = "tests/hostile/"
"""tests/hostile's files share one platform (the session's `market`) and were written to run one after another on
it: they are one xdist work unit, except those of `OWN_PLATFORM`."""
OWN_PLATFORM = frozenset(
    f"tests/hostile/{name}.py"
    for name in (
        "test_c11_openai_and_pipelines",
        "test_c12_sandboxes_and_runners",
        "test_c13_privacy",
        "test_c14_package_upload",
        "test_c15_publish_gate",
    )
)
"""Hostile files that build platforms of their own (module fixtures), not the `market`: a work unit each."""
PER_TEST = frozenset(
    f"tests/e2e/{name}.py" for name in ("test_sandboxes", "test_runner_operations", "test_supervisor_and_demo")
)
"""Long files whose tests each build their own platform: every test is a work unit of its own."""
RUN_FIRST = (
    "tests/hostile/test_c11_",
    "tests/e2e/test_sandboxes.py",
    MARKET_UNIT,  # and the other hostile files
    "tests/e2e/test_runner_operations.py",
    "tests/e2e/test_supervisor_and_demo.py",
    "tests/e2e/",
    "tests/integration/",
)
"""Work units handed out first, longest first (as measured); tests/unit after them all."""


def work_unit(nodeid: str) -> str:
    """The xdist work unit of a test (see `MARKET_UNIT`, `OWN_PLATFORM`, `PER_TEST`); else its file."""
    file = nodeid.split("::", 1)[0]
    if file in PER_TEST:
        return nodeid
    if file.startswith(MARKET_UNIT) and file not in OWN_PLATFORM:
        return MARKET_UNIT
    return file


def _rank(nodeid: str) -> int:
    return next((i for i, prefix in enumerate(RUN_FIRST) if nodeid.startswith(prefix)), len(RUN_FIRST))


@pytest.hookimpl(tryfirst=True, optionalhook=True)  # an xdist hook: unknown where xdist is not installed
def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """`--dist loadfile` (as `make test` runs the suite): one work unit per test file, so that a file's module
    fixtures are built once (`work_unit` says where else); units are handed out in the order the workers
    collected them (`pytest_collection_modifyitems`: the longest first, so that no long unit starts last). Any
    other `--dist` is xdist's own."""
    if config.getoption("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class SuiteScheduling(LoadFileScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False  # the order is ours: not by the number of tests in a unit
    return SuiteScheduling(config, log)


def _store_param(item: pytest.Item) -> object:
    callspec = getattr(item, "callspec", None)
    return None if callspec is None else callspec.params.get("store")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In an xdist worker, the longest work units first (`RUN_FIRST`); a run without xdist keeps pytest's order. Every
    worker sorts the same way, so their collections stay the same, as xdist requires."""
    if engines.REAL:
        # The real-engines pass (`make test`'s second) runs each test on PostgreSQL, JetStream and S3. A test's
        # `store[sqlite]` case would pair a SQLite store with them, a set nobody deploys; it runs, on the embedded
        # engines, in the first pass. Deselected here, named in the summary.
        kept = [item for item in items if _store_param(item) != "sqlite"]
        if len(kept) != len(items):
            config.hook.pytest_deselected(items=[item for item in items if _store_param(item) == "sqlite"])
            items[:] = kept
    if os.environ.get("PYTEST_XDIST_WORKER"):
        items.sort(key=lambda item: _rank(item.nodeid))  # stable: a unit's tests keep their order
