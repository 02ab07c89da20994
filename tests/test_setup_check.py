"""helpers.setup_check: each check passes here, and each failure prints its problem and fix."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from helpers.setup_check import (
    CheckResult,
    Report,
    check_database,
    check_kernel,
    check_packages,
    check_python,
    read_requirements,
    run_checks,
)

ROOT = Path(__file__).resolve().parents[1]


def faking(**versions: str | None):
    """A ``version_of`` that returns fake versions for some packages (None: not installed)."""

    def version_of(name: str) -> str:
        if name in versions:
            fake = versions[name]
            if fake is None:
                raise metadata.PackageNotFoundError(name)
            return fake
        return metadata.version(name)

    return version_of


def by_name(results: list[CheckResult]) -> dict[str, CheckResult]:
    return {r.name: r for r in results}


# --- Python ---------------------------------------------------------------------------------


def test_python_current_is_ok() -> None:
    assert check_python().ok


def test_python_too_old() -> None:
    result = check_python((3, 10, 14))
    assert not result.ok
    assert str(result).startswith("problem: Python 3.10.14 is too old; the notebooks need 3.11 or newer.")
    assert "fix: install Python 3.11+" in str(result)


# --- packages -------------------------------------------------------------------------------


def test_requirements_are_parsed_with_packaging() -> None:
    names = [r.name for r in read_requirements(ROOT / "requirements.txt")]
    assert names[:4] == ["sqlalchemy", "greenlet", "aiosqlite", "asyncpg"]
    assert all(not n.startswith("-") for n in names)


def test_packages_installed_here_are_ok() -> None:
    results = check_packages()
    assert all(r.ok for r in results), [str(r) for r in results if not r.ok]
    assert "greenlet" in by_name(results)


def test_too_old_version() -> None:
    result = by_name(check_packages(version_of=faking(sqlalchemy="1.4.54")))["sqlalchemy"]
    assert str(result) == (
        "problem: sqlalchemy 1.4.54 is outside the range <2.2,>=2.0.36. "
        "fix: pip install 'sqlalchemy<2.2,>=2.0.36' (or pip install -r requirements.txt "
        "(from the repository root, in the environment Jupyter uses))."
    )


def test_missing_package() -> None:
    result = by_name(check_packages(version_of=faking(greenlet=None)))["greenlet"]
    assert not result.ok
    assert str(result).startswith("problem: greenlet is not installed; requirements.txt asks for <4,>=3.0.")
    assert "fix: pip install -r requirements.txt" in str(result)


def test_greenlet_is_found_through_the_asyncio_extra(tmp_path: Path) -> None:
    """Even if requirements.txt forgot to list greenlet, sqlalchemy[asyncio] brings it in."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("sqlalchemy[asyncio]>=2.0,<3  # the subject\n-e .\n")
    results = by_name(check_packages(requirements, faking(greenlet=None)))
    assert results["sqlalchemy"].ok
    assert str(results["greenlet"]).startswith(
        "problem: greenlet is not installed (needed by sqlalchemy[asyncio])"
    )


def test_missing_requirements_file(tmp_path: Path) -> None:
    [result] = check_packages(tmp_path / "nothing.txt")
    assert not result.ok and "does not exist" in result.detail


# --- kernel ---------------------------------------------------------------------------------


async def test_kernel_runs_top_level_await() -> None:
    result = await check_kernel()
    assert result.ok, str(result)
    assert str(result) == "ok: a 'python3' kernel runs top-level await"


async def test_kernel_that_cannot_await() -> None:
    """A real kernel with IPython's autoawait switched off refuses a top-level await."""
    code = "%autoawait off\nimport asyncio\nawait asyncio.sleep(0)\nprint('top-level await works')"
    result = await check_kernel(code=code)
    assert not result.ok
    assert str(result).startswith("problem: a 'python3' kernel could not run a top-level await (SyntaxError:")
    assert "fix: use ipykernel 6.29+ with IPython 8+ and keep autoawait on" in str(result)


async def test_kernel_that_hangs_times_out() -> None:
    result = await check_kernel(code="import time\ntime.sleep(30)", seconds=2)
    assert not result.ok
    assert "could not run a top-level await (TimeoutError" in str(result)


async def test_missing_kernel() -> None:
    result = await check_kernel(kernel_name="no-such-kernel")
    assert str(result).startswith("problem: Jupyter has no kernel named 'no-such-kernel'. fix:")


# --- database -------------------------------------------------------------------------------


async def test_database_default_answers() -> None:
    result = await check_database({})
    assert result.ok
    assert str(result).startswith("ok: the database answers: SQLite through aiosqlite (DATABASE_URL unset")


async def test_bad_database_url() -> None:
    result = await check_database({"DATABASE_URL": "sqlite_aiosqlite:///x.db"})
    assert str(result) == (
        "problem: DATABASE_URL='sqlite_aiosqlite:///x.db' names an unknown dialect 'sqlite_aiosqlite'; "
        "did you mean 'sqlite+aiosqlite'? (dialect and driver are joined by '+'). "
        "fix: correct DATABASE_URL as the sentence says, or unset it to use SQLite (no server needed)."
    )


async def test_sync_driver_url() -> None:
    result = await check_database({"DATABASE_URL": "postgresql+psycopg2://postgres@localhost/postgres"})
    assert not result.ok and "selects the synchronous driver" in result.detail


async def test_unreachable_server_port() -> None:
    result = await check_database(
        {"DATABASE_URL": "postgresql+asyncpg://postgres:secret@127.0.0.1:1/postgres"}
    )
    assert not result.ok
    assert str(result).startswith(
        "problem: Cannot reach PostgreSQL at 127.0.0.1:1 for 'postgresql+asyncpg://postgres:***@127.0.0.1:1/postgres'"
    )
    assert "secret" not in str(result)


# --- the whole run and the command ----------------------------------------------------------


async def test_report_counts_problems(capsys: pytest.CaptureFixture[str]) -> None:
    report = await run_checks(
        python=(3, 10, 0),
        version_of=faking(greenlet=None),
        kernel_name="no-such-kernel",
        environ={"DATABASE_URL": "sqlite:///x.db"},
    )
    assert not report.ok
    assert [r.name for r in report.problems] == ["python", "greenlet", "kernel", "database"]
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == len(report.results) + 1
    assert printed[-1] == "4 problems: apply the fixes above, then run python -m helpers.setup_check again."


def test_report_summary_when_ready() -> None:
    report = Report([CheckResult("python", True, "Python 3.11.7")])
    assert str(report).splitlines()[-1] == "all 1 checks passed: you are ready."


def test_command_exits_zero_when_ready() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    done = subprocess.run(
        [sys.executable, "-m", "helpers.setup_check"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert re.fullmatch(r"all \d+ checks passed: you are ready\.", done.stdout.splitlines()[-1])
    assert done.stderr == ""


def test_command_exits_one_on_a_problem() -> None:
    env = {**os.environ, "DATABASE_URL": "mysql+aiomysql://root@localhost/db"}
    done = subprocess.run(
        [sys.executable, "-m", "helpers.setup_check"], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert done.returncode == 1
    assert any(line.startswith("problem: DATABASE_URL='mysql+aiomysql") for line in done.stdout.splitlines())
