"""Check that this machine is ready for the notebooks: one line per check, with the fix.

Run it after ``pip install -r requirements.txt``:

    python -m helpers.setup_check

or, in a notebook (the first cells of ``00_start_here.ipynb`` do this):

    from helpers.setup_check import run_checks
    report = await run_checks()

It checks, in order:

1. the Python version (3.11 or newer);
2. every package in ``requirements.txt`` is installed within its version range, including
   what an extra pulls in (``sqlalchemy[asyncio]`` needs greenlet: SQLAlchemy 2.1 no longer
   installs it by default);
3. a Jupyter kernel starts and runs a top-level ``await``;
4. the database selected by ``DATABASE_URL`` (SQLite when unset) accepts a connection, and
   the notebook's private database can be created there (on PostgreSQL that needs CREATEDB).

Each check prints ``ok: ...`` or ``problem: ... fix: ...``; the command exits with status 1
when there is any problem.
"""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import IO

from packaging.requirements import InvalidRequirement, Requirement

__all__ = [
    "MIN_PYTHON",
    "REQUIREMENTS",
    "CheckResult",
    "Report",
    "check_database",
    "check_kernel",
    "check_packages",
    "check_python",
    "main",
    "run_checks",
]

MIN_PYTHON = (3, 11)
REQUIREMENTS = Path(__file__).resolve().parents[1] / "requirements.txt"
INSTALL = "pip install -r requirements.txt (from the repository root, in the environment Jupyter uses)"
KERNEL_CODE = "import asyncio\nawait asyncio.sleep(0)\nprint('top-level await works')"
VersionOf = Callable[[str], str]


@dataclass(frozen=True)
class CheckResult:
    """The outcome of one check: ``ok`` with what was found, or a problem and its fix."""

    name: str
    ok: bool
    detail: str
    fix: str = ""

    def __str__(self) -> str:
        if self.ok:
            return f"ok: {self.detail}"
        return f"problem: {self.detail} fix: {self.fix}"


@dataclass
class Report:
    """All results, printable as one line per check plus a summary line."""

    results: list[CheckResult] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(r.ok for r in self.results)

    @property
    def problems(self) -> list[CheckResult]:
        return [r for r in self.results if not r.ok]

    def __str__(self) -> str:
        lines = [str(r) for r in self.results]
        if self.ok:
            lines.append(f"all {len(self.results)} checks passed: you are ready.")
        else:
            count = len(self.problems)
            lines.append(
                f"{count} problem{'s' if count != 1 else ''}: apply the fixes above, "
                "then run python -m helpers.setup_check again."
            )
        return "\n".join(lines)

    def _repr_pretty_(self, printer: object, cycle: bool) -> None:
        printer.text(str(self))  # type: ignore[attr-defined]


# --- 1. Python ------------------------------------------------------------------------------


def check_python(version: Sequence[int] = tuple(sys.version_info[:3])) -> CheckResult:
    shown = ".".join(map(str, version[:3]))
    needed = ".".join(map(str, MIN_PYTHON))
    if tuple(version[:2]) >= MIN_PYTHON:
        return CheckResult("python", True, f"Python {shown} (needs {needed} or newer)")
    return CheckResult(
        "python",
        False,
        f"Python {shown} is too old; the notebooks need {needed} or newer.",
        f"install Python {needed}+ and create the virtual environment with it "
        f"(python{needed} -m venv .venv), then {INSTALL}.",
    )


# --- 2. Packages ----------------------------------------------------------------------------


def read_requirements(path: Path = REQUIREMENTS) -> list[Requirement]:
    """The requirements in ``path`` that apply to this platform (options such as ``-e .`` skipped)."""
    found = []
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        try:
            requirement = Requirement(line)
        except InvalidRequirement as exc:
            raise ValueError(f"{path.name}: cannot parse {line!r}: {exc}") from None
        if requirement.marker is None or requirement.marker.evaluate():
            found.append(requirement)
    return found


def _extra_requirements(requirement: Requirement, version_of: VersionOf) -> list[Requirement]:
    """What ``name[extra]`` adds, read from the installed distribution's metadata."""
    if not requirement.extras:
        return []
    try:
        declared = metadata.requires(requirement.name) or []
    except metadata.PackageNotFoundError:
        return []
    added = []
    for line in declared:
        dependency = Requirement(line)
        if dependency.marker is not None and any(
            dependency.marker.evaluate({"extra": extra}) for extra in requirement.extras
        ):
            dependency.marker = None
            added.append(dependency)
    return added


def _check_one(requirement: Requirement, version_of: VersionOf, via: str = "") -> CheckResult:
    name = requirement.name
    wanted = str(requirement.specifier) or "any version"
    origin = f" (needed by {via})" if via else ""
    try:
        installed = version_of(name)
    except metadata.PackageNotFoundError:
        return CheckResult(
            name,
            False,
            f"{name} is not installed{origin}; requirements.txt asks for {wanted}.",
            f"{INSTALL}.",
        )
    if requirement.specifier.contains(installed, prereleases=True):
        return CheckResult(name, True, f"{name} {installed} ({wanted}){origin}")
    return CheckResult(
        name,
        False,
        f"{name} {installed} is outside the range {wanted}{origin}.",
        f"pip install '{name}{requirement.specifier}' (or {INSTALL}).",
    )


def check_packages(
    requirements: Path = REQUIREMENTS, version_of: VersionOf = metadata.version
) -> list[CheckResult]:
    """One result per requirement, plus one per dependency an extra adds (e.g. greenlet)."""
    if not requirements.is_file():
        return [
            CheckResult(
                "requirements",
                False,
                f"{requirements} does not exist, so package versions cannot be checked.",
                "run the check from a clone of the repository.",
            )
        ]
    results = []
    listed = set()
    for requirement in read_requirements(requirements):
        listed.add(requirement.name.lower())
        results.append(_check_one(requirement, version_of))
    for requirement in read_requirements(requirements):
        for dependency in _extra_requirements(requirement, version_of):
            if dependency.name.lower() not in listed:
                listed.add(dependency.name.lower())
                extras = ",".join(sorted(requirement.extras))
                results.append(_check_one(dependency, version_of, via=f"{requirement.name}[{extras}]"))
    return results


# --- 3. Kernel ------------------------------------------------------------------------------


async def check_kernel(
    kernel_name: str = "python3", code: str = KERNEL_CODE, seconds: float = 60.0
) -> CheckResult:
    """Start a real Jupyter kernel, run a top-level ``await`` in it, and shut it down.

    ``seconds`` bounds the start and the execution (each).
    """
    # The kernel's own log (e.g. ipykernel's warning about TCP without encryption) would land in
    # the caller's terminal or notebook cell: keep it in a file, shown only if the start fails.
    with tempfile.TemporaryFile(mode="w+") as log:
        return await _run_in_kernel(kernel_name, code, seconds, log)


async def _run_in_kernel(kernel_name: str, code: str, seconds: float, log: IO[str]) -> CheckResult:
    from jupyter_client.kernelspec import NoSuchKernel
    from jupyter_client.manager import AsyncKernelManager

    fix_kernel = f"{INSTALL}; then python -m ipykernel install --user --name {kernel_name}."
    manager = AsyncKernelManager(kernel_name=kernel_name)
    try:
        await asyncio.wait_for(manager.start_kernel(stdout=log, stderr=log), seconds)
    except NoSuchKernel:
        return CheckResult("kernel", False, f"Jupyter has no kernel named {kernel_name!r}.", fix_kernel)
    except Exception as exc:
        log.seek(0)
        said = " ".join(log.read().split())[-300:]
        return CheckResult(
            "kernel", False, f"the {kernel_name!r} kernel did not start ({exc}; {said}).", fix_kernel
        )
    client = manager.client()
    client.start_channels()
    output: list[str] = []

    def collect(message: dict) -> None:
        content = message["content"]
        if message["msg_type"] == "stream":
            output.append(content["text"])
        elif message["msg_type"] == "error":
            output.append(f"{content['ename']}: {content['evalue']}")

    try:
        await client.wait_for_ready(timeout=seconds)
        reply = await client.execute_interactive(code, timeout=seconds, output_hook=collect)
        status = reply["content"]["status"]
    except Exception as exc:  # TimeoutError and kernel deaths alike
        status, output = "timeout", [f"{type(exc).__name__}: {exc}".strip()]
    finally:
        client.stop_channels()
        await manager.shutdown_kernel(now=True)
    said = " ".join("".join(output).split())
    if status == "ok" and "top-level await works" in said:
        return CheckResult("kernel", True, f"a {kernel_name!r} kernel runs top-level await")
    return CheckResult(
        "kernel",
        False,
        f"a {kernel_name!r} kernel could not run a top-level await ({said or status}).",
        "use ipykernel 6.29+ with IPython 8+ and keep autoawait on (run %autoawait on); " + INSTALL + ".",
    )


# --- 4. Database ----------------------------------------------------------------------------


async def check_database(environ: dict[str, str] | None = None) -> CheckResult:
    """Open a private notebook database on the selected backend, run ``SELECT 1``, remove it."""
    from sqlalchemy import text

    from helpers.database import (
        DatabaseConfigError,
        configured_url,
        hide_password,
        is_embedded,
        open_database,
    )

    try:
        url = configured_url(environ)
        db = await open_database("setup_check", environ=environ)
    except DatabaseConfigError as exc:
        return CheckResult(
            "database",
            False,
            str(exc),
            "correct DATABASE_URL as the sentence says, or unset it to use SQLite (no server needed).",
        )
    try:
        async with db.engine.connect() as conn:
            answer = await conn.scalar(text("SELECT 1"))
    except Exception as exc:
        return CheckResult(
            "database",
            False,
            f"the database did not answer SELECT 1 ({type(exc).__name__}: {exc}).",
            "check the server's log and DATABASE_URL.",
        )
    finally:
        await db.close()
    raw = (os.environ if environ is None else environ).get("DATABASE_URL", "").strip()
    if url is None:
        where = "DATABASE_URL unset"
    elif is_embedded(environ):
        where = f"DATABASE_URL={raw}: the embedded server"
    else:
        where = f"DATABASE_URL={hide_password(url)}"
    if answer != 1:
        return CheckResult(
            "database", False, f"{where} answered {answer!r} to SELECT 1.", "check the server."
        )
    backend = (
        "SQLite through aiosqlite" if db.is_sqlite else f"PostgreSQL {db.server_version} through {db.driver}"
    )
    return CheckResult(
        "database",
        True,
        f"the database answers: {backend} ({where}; a private database was made and removed)",
    )


# --- all together -----------------------------------------------------------------------------


async def run_checks(
    *,
    python: Sequence[int] = tuple(sys.version_info[:3]),
    requirements: Path = REQUIREMENTS,
    version_of: VersionOf = metadata.version,
    kernel_name: str = "python3",
    kernel_code: str = KERNEL_CODE,
    kernel_seconds: float = 60.0,
    environ: dict[str, str] | None = None,
    echo: bool = True,
) -> Report:
    """Run every check; print one line each as it finishes (unless ``echo=False``)."""
    report = Report()

    def add(result: CheckResult) -> None:
        report.results.append(result)
        if echo:
            print(result, flush=True)

    add(check_python(python))
    for result in check_packages(requirements, version_of):
        add(result)
    add(await check_kernel(kernel_name, kernel_code, kernel_seconds))
    add(await check_database(environ))
    if echo:
        print(str(report).splitlines()[-1], flush=True)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m helpers.setup_check``: exit status 0 when ready, 1 when there is a problem."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m helpers.setup_check", description=__doc__.split("\n")[0])
    parser.add_argument("--kernel", default="python3", help="kernel name to try (default: python3)")
    args = parser.parse_args(argv)
    report = asyncio.run(run_checks(kernel_name=args.kernel))
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())
