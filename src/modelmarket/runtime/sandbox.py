"""Sandboxes for runners: what a version's runner may see and use, and how its death is explained.

Profiles, from least to most confined (``registry/serving.py``):

- ``inprocess``: the model runs inside the gateway. Only for runtimes the operator lists in
  ``MODELMARKET_INPROCESS_RUNTIMES`` and never for provider code (the cheapest hop, no isolation at all).
- ``process``: a child process with rlimits (data size, open files, file size, no core dumps), a private empty
  working directory, an environment with nothing inherited (no keys, no database URL), and the cgroup below. It
  does **not** hide the file system or the network: a model can read what the platform's user can read.
- ``bwrap``: bubblewrap. New user, pid, network, ipc, uts and cgroup namespaces (no network at all), every
  capability dropped, a read-only view of the system and of the Python installation, the version's own folder
  read-only, a tmpfs for ``/tmp``, and nothing else: not the platform's home, not the other models.
- ``gvisor``: the runner inside a gVisor sandbox (``runsc``, ptrace platform) built from an OCI bundle with the
  same allow-list of mounts, ``--network=none``, and host Unix sockets only for its own listening socket.

Every profile but ``inprocess`` runs in its own cgroup where the host allows one (v2, or v1 with the memory,
pids and cpu controllers): memory, CPU quota and number of processes. The runner is placed in it by
``runtime/confine.py`` before it (or bwrap, or runsc) starts, so everything it forks stays inside. When the
runner dies, ``Cgroup.cause()`` tells a memory kill from a fork bomb, and ``kill_all()`` removes whatever it left.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from modelmarket.core.errors import NotReady
from modelmarket.core.process import pid_alive
from modelmarket.registry.serving import PROFILES, Profile, SandboxDecl, at_least
from modelmarket.settings import Settings

log = logging.getLogger(__name__)

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
CPU_PERIOD_US = 100_000
MIN_CPU_QUOTA_US = 1_000
"""The least CPU quota the kernel accepts (v1 and v2): a smaller grant (``cpus: 0.001``) is raised to it. Writing
less fails, and a failed write must not cost the runner its whole cgroup (its memory and process limits)."""
MB = 1024 * 1024
DEFAULT_NOFILE = 1024
DEFAULT_FSIZE_MB = 1024
SAFE_ENV = ("LANG", "LC_ALL", "TZ", "PYTHONPATH")
"""The only variables a runner inherits (besides PATH and HOME, which are set): the locale, and where the
operator installed runtime plug-ins. No keys, no database URL, no ``MODELMARKET_*``."""
SYSTEM_DIRS = ("/usr", "/etc/ld.so.cache", "/etc/localtime", "/etc/alternatives")
GVISOR_HOST_MEMORY_MB = 512
"""Added to a gvisor runner's cgroup: the sentry and gofer's own memory is not the model's."""
GVISOR_HOST_PIDS = 1024
"""Added to a gvisor runner's cgroup: runsc's own host threads. The model's processes are counted inside the
sandbox (RLIMIT_NPROC, enforced by gVisor for a root without capabilities)."""
REMOVE_WAIT_S = 1.0
MEMORY_LIMIT = "sandbox: memory limit"
PIDS_LIMIT = "sandbox: process limit"


@dataclass(frozen=True, slots=True)
class Confinement:
    """What one runner is granted: the operator's settings applied to the package's ``sandbox`` request."""

    profile: Profile
    memory_mb: int
    pids: int
    timeout_s: float
    cpus: float | None = None

    def describe(self) -> str:
        cpus = f", {self.cpus:g} cpus" if self.cpus is not None else ""
        return f"{self.profile} ({self.memory_mb} MB, {self.pids} pids{cpus}, {self.timeout_s:g}s per call)"


@dataclass(frozen=True, slots=True)
class SandboxPolicy:
    """The operator's rules (settings ``sandbox_*``): defaults, caps, the floor for provider code, and the
    runtimes allowed to run inside the gateway."""

    default_profile: Profile = "bwrap"
    minimum_for_provider_code: Profile = "bwrap"
    trusted_default_profile: Profile = "process"
    inprocess_runtimes: frozenset[str] = frozenset()
    memory_mb: int = 2048
    max_memory_mb: int = 16384
    pids: int = 256
    max_pids: int = 4096
    cpus: float | None = None
    timeout_s: float = 60.0
    max_timeout_s: float = 600.0

    def confinement(self, runtime: str, provider_code: bool, declared: SandboxDecl | None) -> Confinement:
        """The grant for a runner of ``runtime``. Provider code gets at least ``minimum_for_provider_code``
        (and never ``inprocess``); the platform's own runtimes get what they declare, ``inprocess`` only when
        the operator listed them."""
        wanted = declared.profile if declared is not None and declared.profile is not None else None
        if provider_code:
            profile = at_least(wanted or self.default_profile, self.minimum_for_provider_code)
            profile = at_least(profile, "process")
        else:
            profile = wanted or ("inprocess" if runtime in self.inprocess_runtimes else self.trusted_default_profile)
            if profile == "inprocess" and runtime not in self.inprocess_runtimes:
                profile = self.trusted_default_profile
            if profile != "inprocess":  # the operator's profile for its own runtimes is also their floor
                profile = at_least(profile, self.trusted_default_profile)
        d = declared or SandboxDecl()
        return Confinement(
            profile=profile,
            memory_mb=min(d.memory_mb or self.memory_mb, self.max_memory_mb),
            pids=min(d.pids or self.pids, self.max_pids),
            timeout_s=min(d.timeout_s or self.timeout_s, self.max_timeout_s),
            cpus=d.cpus if d.cpus is not None else self.cpus,
        )


def parse_profile(text: str) -> Profile:
    if text not in PROFILES:
        raise ValueError(f"unknown sandbox profile {text!r}: use one of {', '.join(PROFILES)}")
    return text


def _host_memory_mb(c: Confinement) -> int:
    return c.memory_mb + (GVISOR_HOST_MEMORY_MB if c.profile == "gvisor" else 0)


def _host_pids(c: Confinement) -> int:
    return c.pids + (GVISOR_HOST_PIDS if c.profile == "gvisor" else 0)


def _cpu_quota_us(cpus: float) -> int:
    return max(int(cpus * CPU_PERIOD_US), MIN_CPU_QUOTA_US)


def _remove_dirs(dirs: list[Path]) -> None:
    for d in reversed(dirs):
        with contextlib.suppress(OSError):
            d.rmdir()


# -- cgroups ------------------------------------------------------------------------------------------------


def _own_cgroup_v1(controller: str) -> str:
    """This process's cgroup path in the v1 hierarchy of ``controller`` ('/' when unknown)."""
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, path = line.split(":", 2)
            if controller in controllers.split(","):
                return path
    return "/"


def _own_cgroup_v2() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return line[3:]
    return "/"


@dataclass
class Cgroup:
    """One runner's cgroup. ``dirs`` are the directories to join (one per v1 controller, or one for v2)."""

    version: int
    dirs: list[Path]
    _baseline: dict[str, int] = field(default_factory=dict)

    @classmethod
    def create(cls, name: str, confinement: Confinement) -> Cgroup | None:
        """Create and configure a cgroup named ``name`` below this process's own; None where the host does not
        let us (no cgroupfs, read-only, controllers missing): the runner then has its rlimits only."""
        try:
            if (CGROUP_ROOT / "cgroup.controllers").exists():
                return cls._create_v2(name, confinement)
            if all((CGROUP_ROOT / c).is_dir() for c in V1_CONTROLLERS):
                return cls._create_v1(name, confinement)
        except OSError as exc:
            log.warning("no cgroup for %s (%s): memory, cpu and pids are limited by rlimits only", name, exc)
        return None

    @classmethod
    def _create_v1(cls, name: str, c: Confinement) -> Cgroup:
        dirs: list[Path] = []
        try:
            for controller in V1_CONTROLLERS:
                parent = CGROUP_ROOT / controller / _own_cgroup_v1(controller).lstrip("/") / "modelmarket"
                path = parent / name
                path.mkdir(parents=True, exist_ok=True)
                dirs.append(path)
            memory, pids, cpu = dirs
            limit = str(_host_memory_mb(c) * 1024 * 1024)
            (memory / "memory.limit_in_bytes").write_text(limit)
            with contextlib.suppress(OSError):  # no swap accounting on some hosts
                (memory / "memory.memsw.limit_in_bytes").write_text(limit)
            (pids / "pids.max").write_text(str(_host_pids(c)))
            if c.cpus is not None:
                (cpu / "cpu.cfs_period_us").write_text(str(CPU_PERIOD_US))
                (cpu / "cpu.cfs_quota_us").write_text(str(_cpu_quota_us(c.cpus)))
        except OSError:  # none of it half-made
            _remove_dirs(dirs)
            raise
        group = cls(1, dirs)
        group._baseline = group._counters()
        return group

    @classmethod
    def _create_v2(cls, name: str, c: Confinement) -> Cgroup:
        parent = CGROUP_ROOT / _own_cgroup_v2().lstrip("/") / "modelmarket"
        parent.mkdir(exist_ok=True)
        with contextlib.suppress(OSError):
            (parent / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        path = parent / name
        path.mkdir(exist_ok=True)
        try:
            (path / "memory.max").write_text(str(_host_memory_mb(c) * 1024 * 1024))
            with contextlib.suppress(OSError):
                (path / "memory.swap.max").write_text("0")
            (path / "pids.max").write_text(str(_host_pids(c)))
            if c.cpus is not None:
                (path / "cpu.max").write_text(f"{_cpu_quota_us(c.cpus)} {CPU_PERIOD_US}")
        except OSError:
            _remove_dirs([path])
            raise
        group = cls(2, [path])
        group._baseline = group._counters()
        return group

    def _file(self, v1_index: int, name: str) -> Path:
        return self.dirs[v1_index if self.version == 1 else 0] / name

    def _counters(self) -> dict[str, int]:
        counters = {"oom": 0, "pids": 0}
        with contextlib.suppress(OSError, ValueError):
            memory = "memory.oom_control" if self.version == 1 else "memory.events"
            for line in self._file(0, memory).read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    counters["oom"] = int(value)
        with contextlib.suppress(OSError, ValueError):
            for line in self._file(1, "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    counters["pids"] = int(value)
        if self.version == 1 and counters["oom"] == 0:
            with contextlib.suppress(OSError, ValueError):  # kernels without oom_kill: the limit was hit
                counters["oom"] = int(self._file(0, "memory.failcnt").read_text())
        return counters

    def cause(self) -> str | None:
        """What the cgroup saw since the last call: a memory kill or a refused fork (None: neither)."""
        now = self._counters()
        before, self._baseline = self._baseline, now
        if now["oom"] > before.get("oom", 0):
            return MEMORY_LIMIT
        if now["pids"] > before.get("pids", 0):
            return PIDS_LIMIT
        return None

    def pids(self) -> list[int]:
        found: list[int] = []
        with contextlib.suppress(OSError, ValueError):
            found = [int(p) for p in self._file(1, "cgroup.procs").read_text().split()]
        return found

    def rss_bytes(self) -> int | None:
        name = "memory.usage_in_bytes" if self.version == 1 else "memory.current"
        try:
            return int(self._file(0, name).read_text())
        except (OSError, ValueError):
            return None

    def procs_files(self) -> list[str]:
        return [str(d / "cgroup.procs") for d in self.dirs]

    def kill_all(self) -> None:
        """SIGKILL every process left in the cgroup (a fork bomb's children, a sandbox's helpers)."""
        if self.version == 2:
            with contextlib.suppress(OSError):
                (self.dirs[0] / "cgroup.kill").write_text("1")
                return
        for _ in range(10):  # processes may fork while we kill: a few passes
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)

    def remove(self, wait_s: float = REMOVE_WAIT_S) -> None:
        """Kill what is left, wait (bounded) for it to be gone, then remove the directories: a cgroup with a
        process still exiting cannot be removed, and a leaked one is never reused. Blocks up to ``wait_s``:
        call it off the event loop."""
        self.kill_all()
        deadline = time.monotonic() + wait_s
        while self.pids() and time.monotonic() < deadline:
            time.sleep(0.01)
        _remove_dirs(self.dirs)

    @staticmethod
    def remove_stale(own_pid: int) -> int:
        """Remove the cgroups of runners whose gateway is gone (named ``<gateway pid>-...``, a SIGKILLed gateway
        cannot clean up); returns how many were removed."""
        parents = [CGROUP_ROOT / _own_cgroup_v2().lstrip("/") / "modelmarket"]
        parents += [CGROUP_ROOT / c / _own_cgroup_v1(c).lstrip("/") / "modelmarket" for c in V1_CONTROLLERS]
        removed = 0
        for parent in parents:
            with contextlib.suppress(OSError):
                for entry in parent.iterdir():
                    pid_text = entry.name.split("-", 1)[0]
                    if not entry.is_dir() or not pid_text.isdigit() or int(pid_text) == own_pid:
                        continue
                    if pid_alive(int(pid_text)):
                        continue
                    with contextlib.suppress(OSError):
                        procs = [int(p) for p in (entry / "cgroup.procs").read_text().split()]
                        for pid in procs:
                            with contextlib.suppress(ProcessLookupError, PermissionError):
                                os.kill(pid, signal.SIGKILL)
                        entry.rmdir()
                        removed += 1
        return removed


# -- command lines ------------------------------------------------------------------------------------------


@functools.cache
def runner_import_path() -> tuple[str, ...]:
    """The import path a runner's interpreter starts with (in its own environment, from its own working directory).

    Not this process's ``sys.path``: that begins with the gateway's working directory (``python -m``) or its
    script's folder, which a runner never imports from and which may hold anything (the operator's home, a key
    file, another platform's database). Asked once of the interpreter itself, so ``.pth`` entries (an editable
    install) are included as the runner will see them.
    """
    probe = [sys.executable, "-c", "import json, sys; print(json.dumps(sys.path))"]
    try:
        done = subprocess.run(probe, env=sandbox_env(), cwd="/", capture_output=True, text=True, timeout=60, check=True)
        found = json.loads(done.stdout)
    except (OSError, subprocess.SubprocessError, ValueError) as exc:
        log.warning("could not ask %s for its import path (%s): sandboxes show its installation only", probe[0], exc)
        return ()
    return tuple(entry for entry in found if isinstance(entry, str))


def python_roots() -> list[str]:
    """Directories a runner's Python needs to see: the interpreter's installation, the environment, and every
    import path outside them (an editable install's source folder, ``PYTHONPATH``)."""
    roots = {os.path.realpath(sys.base_prefix), os.path.realpath(sys.prefix), sys.prefix}
    for entry in [*runner_import_path(), *os.environ.get("PYTHONPATH", "").split(os.pathsep)]:
        if entry and os.path.isabs(entry) and os.path.isdir(entry):
            roots.add(os.path.realpath(entry))
    kept: list[str] = []
    for root in sorted(roots, key=len):  # drop those inside another
        if not any(root == k or root.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(root)
    return kept


def visible_roots(hidden: Iterable[Path]) -> list[str]:
    """``python_roots`` without any that would show a hidden place (the platform's home) or the whole disk."""
    hidden_real = [os.path.realpath(h) for h in hidden]
    kept = []
    for root in python_roots():
        if root == "/" or any(h == root or h.startswith(root.rstrip("/") + "/") for h in hidden_real):
            log.warning("not showing %s inside sandboxes: it contains the platform's home", root)
            continue
        if any(root.startswith(s + "/") or root == s for s in ("/usr",)):
            continue  # part of the system view already
        kept.append(root)
    return kept


def check_available(profile: Profile) -> None:
    """Raise ``NotReady`` naming the missing tool when ``profile`` cannot run on this machine."""
    tool = {"bwrap": "bwrap", "gvisor": "runsc"}.get(profile)
    if tool is not None and shutil.which(tool) is None:
        package = "bubblewrap" if tool == "bwrap" else "runsc"
        raise NotReady(
            f"sandbox profile {profile!r} needs {tool!r}, which is not installed: install the Debian package "
            f"{package!r}, or have the operator allow a lower profile (MODELMARKET_SANDBOX_MINIMUM)"
        )


@dataclass(frozen=True, slots=True)
class Layout:
    """The places a sandboxed runner sees: its version folder (read-only), its socket folder (read-write, only
    for its own socket), and a private working directory (process profile; the others get a tmpfs)."""

    version_dir: Path
    socket_dir: Path
    work_dir: Path
    state_dir: Path
    """Where runsc keeps its state and the OCI bundle (gvisor only)."""
    hidden: tuple[Path, ...] = ()
    """Places that must never be visible inside (the platform's home)."""


def confine_prefix(
    confinement: Confinement, cgroup: Cgroup | None, work_dir: Path | None, data_limit: bool = True
) -> list[str]:
    """``python -m modelmarket.runtime.confine ... --``: joins the cgroup, sets rlimits, changes directory and
    clears the environment, then execs what follows."""
    argv = [sys.executable, "-I", "-m", "modelmarket.runtime.confine"]
    for path in cgroup.procs_files() if cgroup is not None else ():
        argv += ["--cgroup-procs", path]
    if data_limit:  # not for runsc: its own limits are not the model's (those are in the OCI bundle)
        argv += ["--data-mb", str(confinement.memory_mb), "--nofile", str(DEFAULT_NOFILE)]
        argv += ["--fsize-mb", str(DEFAULT_FSIZE_MB)]  # no RLIMIT_NPROC: it counts the user's every thread
    if work_dir is not None:
        argv += ["--cwd", str(work_dir)]
    argv.append("--die-with-parent")
    for name in SAFE_ENV:
        if name in os.environ:
            argv += ["--env", f"{name}={os.environ[name]}"]
    return [*argv, "--"]


def sandbox_env() -> dict[str, str]:
    """The whole environment a runner starts with: nothing inherited but the locale."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": "/tmp", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update({k: os.environ[k] for k in SAFE_ENV if k in os.environ})
    return env


def wrap(
    runner_argv: Sequence[str], confinement: Confinement, layout: Layout, cgroup: Cgroup | None, name: str
) -> list[str]:
    """The full command line that starts ``runner_argv`` under ``confinement``."""
    profile = confinement.profile
    if profile == "process":
        layout.work_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        return [*confine_prefix(confinement, cgroup, layout.work_dir), *runner_argv]
    check_available(profile)
    if profile == "bwrap":
        return [*confine_prefix(confinement, cgroup, None), *bwrap_argv(layout), *runner_argv]
    if profile == "gvisor":
        bundle = write_oci_bundle(runner_argv, layout, confinement)
        return [*confine_prefix(confinement, cgroup, None, data_limit=False), *runsc_argv(layout, bundle, name)]
    raise ValueError(f"profile {profile!r} does not run in a child process")


def bwrap_argv(layout: Layout) -> list[str]:
    argv = ["bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    argv += ["--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / link
        if target.is_symlink():
            argv += ["--symlink", os.readlink(target), str(target)]
        elif target.is_dir():
            argv += ["--ro-bind", str(target), str(target)]
    for path in SYSTEM_DIRS[1:]:
        argv += ["--ro-bind-try", path, path]
    # the tmpfs first: a Python installation, version folder or socket folder under /tmp is mounted over it
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp"]
    for root in visible_roots(layout.hidden):
        argv += ["--ro-bind", root, root]
    argv += ["--ro-bind", str(layout.version_dir), str(layout.version_dir)]
    argv += ["--bind", str(layout.socket_dir), str(layout.socket_dir)]
    argv += ["--chdir", "/tmp", "--clearenv"]
    for key, value in sandbox_env().items():
        argv += ["--setenv", key, value]
    return [*argv, "--"]


def runsc_argv(layout: Layout, bundle: Path, name: str) -> list[str]:
    state = layout.state_dir / "runsc"
    state.mkdir(mode=0o700, parents=True, exist_ok=True)
    return [
        "runsc",
        "--root",
        str(state),
        "--platform=ptrace",
        "--network=none",
        "--host-uds=create",
        "--ignore-cgroups",
        "run",
        "--bundle",
        str(bundle),
        f"{name}-{uuid.uuid4().hex[:8]}",
    ]


def write_oci_bundle(runner_argv: Sequence[str], layout: Layout, confinement: Confinement) -> Path:
    """An OCI bundle whose root is an empty read-only folder with the same mounts bwrap would make; the runner
    runs as a root with no capabilities, so gVisor enforces its process and data-size rlimits."""
    bundle = layout.state_dir / "bundle"
    rootfs = bundle / "rootfs"
    rootfs.mkdir(parents=True, exist_ok=True)
    mounts: list[dict[str, object]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev"]},
        {"destination": "/usr", "type": "bind", "source": "/usr", "options": ["rbind", "ro"]},
    ]
    for link in ("bin", "lib", "lib64", "sbin"):
        target = Path("/") / link
        if target.exists():
            real = os.path.realpath(target)
            mounts.append({"destination": str(target), "type": "bind", "source": real, "options": ["rbind", "ro"]})
    for path in SYSTEM_DIRS[1:]:
        if os.path.exists(path):
            mounts.append({"destination": path, "type": "bind", "source": path, "options": ["rbind", "ro"]})
    for root in visible_roots(layout.hidden):
        mounts.append({"destination": root, "type": "bind", "source": root, "options": ["rbind", "ro"]})
    mounts.append(
        {
            "destination": str(layout.version_dir),
            "type": "bind",
            "source": str(layout.version_dir),
            "options": ["rbind", "ro"],
        }
    )
    mounts.append(
        {
            "destination": str(layout.socket_dir),
            "type": "bind",
            "source": str(layout.socket_dir),
            "options": ["rbind", "rw"],
        }
    )
    config = {
        "ociVersion": "1.0.0",
        "hostname": "runner",
        "process": {
            "args": list(runner_argv),
            "env": [f"{k}={v}" for k, v in sandbox_env().items()],
            "cwd": "/tmp",
            "user": {"uid": 0, "gid": 0},
            "terminal": False,
            "noNewPrivileges": True,
            "capabilities": {k: [] for k in ("bounding", "effective", "permitted", "inheritable", "ambient")},
            "rlimits": [
                {"type": "RLIMIT_NPROC", "hard": confinement.pids, "soft": confinement.pids},
                {"type": "RLIMIT_DATA", "hard": confinement.memory_mb * MB, "soft": confinement.memory_mb * MB},
                {"type": "RLIMIT_NOFILE", "hard": DEFAULT_NOFILE, "soft": DEFAULT_NOFILE},
                {"type": "RLIMIT_CORE", "hard": 0, "soft": 0},
                {"type": "RLIMIT_FSIZE", "hard": DEFAULT_FSIZE_MB * MB, "soft": DEFAULT_FSIZE_MB * MB},
            ],
        },
        "root": {"path": "rootfs", "readonly": True},
        "mounts": mounts,
        "linux": {"namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")]},
    }
    (bundle / "config.json").write_text(json.dumps(config, indent=1))
    return bundle


def policy_from_settings(s: Settings) -> SandboxPolicy:
    """The operator's sandbox rules from the settings (``MODELMARKET_SANDBOX_*``, ``..._INPROCESS_RUNTIMES``)."""
    return SandboxPolicy(
        default_profile=parse_profile(s.sandbox_default),
        minimum_for_provider_code=parse_profile(s.sandbox_minimum),
        trusted_default_profile=parse_profile(s.sandbox_trusted),
        inprocess_runtimes=frozenset(r.strip() for r in s.inprocess_runtimes.split(",") if r.strip()),
        memory_mb=s.sandbox_memory_mb,
        max_memory_mb=s.sandbox_max_memory_mb,
        pids=s.sandbox_pids,
        max_pids=s.sandbox_max_pids,
        cpus=s.sandbox_cpus,
        timeout_s=s.runner_request_timeout_s,
        max_timeout_s=s.sandbox_max_timeout_s,
    )
