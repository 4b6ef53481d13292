"""The release artefacts: ``python -m build`` makes an sdist and a wheel that install into a
fresh venv, with nothing else, and work there (issue 13, part 4).

One build serves every test of this module (a module fixture): the sdist and the wheel come
from a copy of the repository's own files, so the work tree gets no ``build/`` or
``*.egg-info``. The build runs without isolation, on the dev extra's setuptools and build, so
the suite needs no network; ``make dist`` builds the same way with isolation, as a user would.
The wheel installed in a fresh venv (no pooly on ``sys.path`` from this checkout, no other
package installed) must start a pool, survive a SIGKILLed worker, run an executor, report
0.2.0 from both ``pooly.__version__`` and the installed metadata, and offer the ``pooly``
command. The sdist must hold everything the wheel is built from: a wheel built from the
unpacked sdist alone has the same files.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
VERSION = "0.2.0"

pytestmark = pytest.mark.timeout(240)


def build(source: Path, out: Path, *what: str) -> None:
    """``python -m build`` of ``source`` into ``out`` (``--sdist`` / ``--wheel``), offline."""
    subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", *what, "--outdir", str(out), str(source)],
        check=True,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An sdist and a wheel of this checkout, built from a copy of its tracked files."""
    root = tmp_path_factory.mktemp("dist")
    src = root / "src-copy"
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        check=True,
        capture_output=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        path = REPO / name.decode()
        if path.is_file():
            target = src / name.decode()
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    out = root / "out"
    build(src, out, "--sdist", "--wheel")
    return out


def only(folder: Path, pattern: str) -> Path:
    (found,) = folder.glob(pattern)
    return found


def test_the_artefacts_are_named_for_the_version(dist: Path) -> None:
    """One sdist and one pure-Python wheel, both of version 0.2.0."""
    names = sorted(p.name for p in dist.iterdir())
    assert names == [f"pooly-{VERSION}-py3-none-any.whl", f"pooly-{VERSION}.tar.gz"], names


def test_the_wheel_holds_the_package_and_nothing_else(dist: Path) -> None:
    """The wheel has every module of src/pooly, py.typed, the licence and the ``pooly``
    entry point; no tests, benchmarks or docs; and its metadata declares no dependency
    outside the extras (the core has none)."""
    with zipfile.ZipFile(only(dist, "*.whl")) as whl:
        names = set(whl.namelist())
        meta = whl.read(f"pooly-{VERSION}.dist-info/METADATA").decode()
        entry = whl.read(f"pooly-{VERSION}.dist-info/entry_points.txt").decode()
    modules = {
        f"pooly/{p.relative_to(REPO / 'src' / 'pooly').as_posix()}"
        for p in (REPO / "src" / "pooly").rglob("*.py")
    }
    assert modules <= names, sorted(modules - names)
    assert "pooly/py.typed" in names
    assert f"pooly-{VERSION}.dist-info/licenses/LICENSE" in names
    assert not [n for n in names if n.split("/")[0] in {"tests", "bench", "docs"}]
    assert "pooly = pooly.cli.main:main" in entry
    requires = [line for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert requires and all("extra ==" in line for line in requires), requires
    assert "Requires-Python: >=3.11" in meta


def test_the_sdist_rebuilds_the_same_wheel(dist: Path, tmp_path: Path) -> None:
    """The sdist is complete: unpacked alone, it builds a wheel with the same files, and it
    carries the README, the licence and the changelog."""
    with tarfile.open(only(dist, "*.tar.gz")) as sdist:
        sdist.extractall(tmp_path / "unpacked", filter="data")
        members = {m.split("/", 1)[1] for m in sdist.getnames() if "/" in m}
    assert {"README.md", "LICENSE", "CHANGELOG.md", "pyproject.toml"} <= members
    rebuilt = tmp_path / "rebuilt"
    build(only(tmp_path / "unpacked", "pooly-*"), rebuilt, "--wheel")
    with (
        zipfile.ZipFile(only(dist, "*.whl")) as a,
        zipfile.ZipFile(only(rebuilt, "*.whl")) as b,
    ):
        assert sorted(a.namelist()) == sorted(b.namelist())


SMOKE = textwrap.dedent(
    """
    import importlib.metadata, os, signal, sys
    import pooly

    class Adder:
        def add(self, a, b):
            return a + b

    def square(x):
        return x * x

    if __name__ == "__main__":
        assert pooly.__file__.startswith(sys.prefix), pooly.__file__  # the installed copy
        assert pooly.__version__ == importlib.metadata.version("pooly") == "{version}"
        with pooly.Pooly() as sup:
            pool = sup.start_pool("adders", Adder, size=2)
            with pool.checkout(timeout=10) as w:
                assert w.add(2, 3) == 5
                os.kill(w.pid, signal.SIGKILL)  # the lease knows its worker's pid
                try:
                    w.add(1, 1)
                except pooly.WorkerCrashed:
                    pass
                else:
                    raise AssertionError("a killed worker's call did not raise WorkerCrashed")
            assert pool.transaction(lambda w: w.add(40, 2), timeout=10) == 42
        with pooly.ProcessPoolExecutor(max_workers=2) as ex:
            assert list(ex.map(square, range(5))) == [0, 1, 4, 9, 16]
        print("smoke ok", pooly.__version__)
    """
).format(version=VERSION)


def test_the_wheel_works_in_a_fresh_venv(dist: Path, tmp_path: Path) -> None:
    """Installed with pip into a new venv, offline and with no other package, the wheel's
    pooly runs a pool through a worker's SIGKILL, an executor, and the ``pooly`` command."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    subprocess.run(
        [str(py), "-m", "pip", "install", "--quiet", "--no-index", str(only(dist, "*.whl"))],
        check=True,
        timeout=120,
    )
    script = tmp_path / "smoke.py"
    script.write_text(SMOKE)
    # cwd and the environment must not lead the venv's python to this checkout's sources.
    env = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path)}
    run = subprocess.run(
        [str(py), str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == f"smoke ok {VERSION}"
    cli = subprocess.run(
        [str(venv / "bin" / "pooly"), "--help"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cli.returncode == 0, cli.stderr
    assert "demo" in cli.stdout
