"""Build the wheel and sdist, check what they hold, install the wheel the way a user installs a
package (a regular install into a fresh venv, outside the checkout) and run the README's main job
there, from a folder that is not the checkout.

    python scripts/check_dist.py            # build, check, install, run (about 3 minutes)
    python scripts/check_dist.py --no-run   # build and check the archives only

Run by .ci/run after the test suite. Exits non-zero with one line naming what is wrong.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import venv
import zipfile
from pathlib import Path
from typing import NoReturn

ROOT = Path(__file__).resolve().parent.parent

# What a user's install needs: the shipped model and its card, both data sets, the Pi runner.
WHEEL_MUST_HOLD = (
    "edgecnn/cli.py",
    "edgecnn/files/shipped.py",
    "edgecnn/converters/ops/__init__.py",
    "edgecnn/targets/support/runner.py",
    "edgecnn/models/lenet5.pt",
    "edgecnn/models/lenet5.json",
    "edgecnn/models/mobile_se_outlier.pt",
    "edgecnn/models/mobile_se_outlier.json",
    "edgecnn/models/data/mnist-calib.npz",
    "edgecnn/models/data/mnist/t10k-images-idx3-ubyte.gz",
    "edgecnn/models/data/mnist/t10k-labels-idx1-ubyte.gz",
)
SDIST_MUST_HOLD = ("LICENSE", "README.md", "constraints.txt", "pyproject.toml",
                   "tests/conftest.py", "models/lenet5.pt", "models/data/mnist-calib.npz")
# Nothing a run leaves behind: venvs (CI's, the peers', the ARM emulation), outputs, caches.
MUST_NOT_HOLD = re.compile(r"(^|/)(\.venv[^/]*|\.peers|\.arm|out|__pycache__|\.pytest_cache|"
                           r"\.mypy_cache|dist|build)/|\.pyc$|\.part$|\.onnx$|\.tflite$")
MAX_ARCHIVE_BYTES = 8 << 20  # the shipped data is 2.4 MB; a venv or a model zoo is far larger


def fail(message: str) -> NoReturn:
    print(f"check_dist: {message}", file=sys.stderr)
    raise SystemExit(1)


def run(command: list[str], **kwargs: object) -> None:
    print("+ " + " ".join(command), flush=True)
    result = subprocess.run(command, **kwargs)  # type: ignore[call-overload]
    if result.returncode != 0:
        fail(f"{' '.join(command[:3])} ... exited {result.returncode}")


def clean_tree(dest: Path) -> Path:
    """The checkout's files that git keeps or would keep (tracked, or new and not ignored),
    copied to ``dest``: setuptools reuses a stale build/ and egg-info SOURCES.txt, which would
    let a file the configuration no longer ships slip into the archives."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_file():  # a deleted-but-tracked file is gone from the tree
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def build(dist: Path) -> tuple[Path, Path]:
    source = clean_tree(dist.parent / "source")
    run([sys.executable, "-m", "build", "--outdir", str(dist), str(source)],
        stdout=subprocess.DEVNULL)
    wheels, sdists = sorted(dist.glob("*.whl")), sorted(dist.glob("*.tar.gz"))
    if len(wheels) != 1 or len(sdists) != 1:
        fail(f"expected one wheel and one sdist in {dist}, found {[p.name for p in dist.iterdir()]}")
    return wheels[0], sdists[0]


def check_members(archive: Path, members: list[str], must_hold: tuple[str, ...]) -> None:
    missing = [name for name in must_hold if name not in members]
    if missing:
        fail(f"{archive.name}: is missing {', '.join(missing)} (pyproject package-data or "
             "MANIFEST.in)")
    stray = [name for name in members if MUST_NOT_HOLD.search(name)]
    if stray:
        fail(f"{archive.name}: holds files a run leaves behind: {', '.join(stray[:5])} "
             "(exclude them in MANIFEST.in)")
    if archive.stat().st_size > MAX_ARCHIVE_BYTES:
        fail(f"{archive.name}: is {archive.stat().st_size >> 20} MiB; something large slipped in")


def check_archives(wheel: Path, sdist: Path) -> None:
    with zipfile.ZipFile(wheel) as archive:
        check_members(wheel, archive.namelist(), WHEEL_MUST_HOLD)
    with tarfile.open(sdist) as archive:
        top = sdist.name.removesuffix(".tar.gz") + "/"
        names = [m.name.removeprefix(top) for m in archive.getmembers() if m.isfile()]
    check_members(sdist, names, SDIST_MUST_HOLD)
    run([sys.executable, "-m", "twine", "check", "--strict", str(wheel), str(sdist)])
    run([sys.executable, "-m", "check_wheel_contents", str(wheel)])
    print(f"archives: {wheel.name} ({wheel.stat().st_size >> 10} KiB), "
          f"{sdist.name} ({sdist.stat().st_size >> 10} KiB): contents as they must be")


def readme_main_job() -> str:
    """The README's first command line, less its venv and install prefix."""
    line = next(text.strip() for text in (ROOT / "README.md").read_text().splitlines()
                if "edgecnn convert" in text and "venv" in text)
    return line.split("&& mkdir -p out &&", 1)[1].strip()


def install_and_run(wheel: Path, work: Path) -> None:
    env_dir = work / "venv"
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin" / "python"
    run([str(python), "-m", "pip", "install", "-q", "-c", str(ROOT / "constraints.txt"),
         str(wheel)])
    where = subprocess.run([str(python), "-c", "import edgecnn; print(edgecnn.__file__)"],
                           cwd=work, capture_output=True, text=True, check=True).stdout.strip()
    if Path(where).resolve().is_relative_to(ROOT):
        fail(f"the installed edgecnn resolves into the checkout ({where}), not site-packages")
    elsewhere = work / "elsewhere"
    (elsewhere / "out").mkdir(parents=True)
    env = {**os.environ, "PATH": f"{env_dir / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"}
    env.pop("PYTHONPATH", None)
    job = readme_main_job()
    print(f"main job in {elsewhere} (edgecnn from {where}):\n  {job}", flush=True)
    run(["bash", "-c", f"set -euo pipefail; {job}"], cwd=elsewhere, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-run", action="store_true", help="Build and check the archives only.")
    parser.add_argument("--keep", type=Path, help="Leave the archives in this folder.")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edgecnn-dist-") as tmp:
        work = Path(tmp)
        wheel, sdist = build(work / "dist")
        check_archives(wheel, sdist)
        if args.keep:
            args.keep.mkdir(parents=True, exist_ok=True)
            for archive in (wheel, sdist):
                shutil.copy2(archive, args.keep / archive.name)
        if not args.no_run:
            install_and_run(wheel, work)
    print("check_dist: wheel and sdist pass; the installed wheel runs the README's main job")


if __name__ == "__main__":
    main()
