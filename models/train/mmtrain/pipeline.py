"""The one command: data, training, export, checks, evaluation, samples, references.

    models/train/run.sh            (or, from models/train: python -m mmtrain.pipeline)

Writes models/bundles/tiny/ (bundle, README.md with the evaluation table), samples/
and models/tests/reference/; intermediate files go to models/train/work/.
"""

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time

import numpy as np
import torch

from . import check, corpus, data as D, evaluate, export, readme, samples, tokenizer, train

HERE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ROOT = os.path.dirname(os.path.dirname(HERE))
WORK = f"{HERE}/work"
BUNDLE = f"{ROOT}/models/bundles/tiny"

JOINT_STEPS = 3000
IMAGE_STEPS = 1500
AUDIO_STEPS = 900


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reuse-data", action="store_true",
                    help="keep work/data.npz when it exists instead of regenerating it")
    ap.add_argument("--threads", type=int, default=int(os.environ.get("MMRT_TRAIN_THREADS", 2)),
                    help="torch threads for the image convolutions (default 2); the other "
                         "phases use one thread, which is faster for their small operations")
    ap.add_argument("--steps", type=int, default=JOINT_STEPS)
    ap.add_argument("--eval-per-subset", type=int, default=200)
    ap.add_argument("--pretrain-steps", type=int, nargs=2, default=[IMAGE_STEPS, AUDIO_STEPS],
                    metavar=("IMAGE", "AUDIO"))
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    random.seed(0)
    np.random.seed(0)
    os.makedirs(WORK, exist_ok=True)
    log_file = open(f"{WORK}/pipeline.log", "w")

    def log(msg):
        print(msg, flush=True)
        log_file.write(msg + "\n")
        log_file.flush()

    timing = {}
    t = time.time()
    tok = tokenizer.build()
    data_path = f"{WORK}/data.npz"
    if not (args.reuse_data and os.path.exists(data_path)):
        D.generate(data_path)
    data = D.Data(data_path)
    timing["data_s"] = time.time() - t
    log(f"data ready in {timing['data_s']:.0f}s")

    t = time.time()
    model = train.train(data, tok, steps=args.steps, image_steps=args.pretrain_steps[0],
                        audio_steps=args.pretrain_steps[1], conv_threads=args.threads, log=log)
    timing["train_s"] = time.time() - t
    torch.save(model.state_dict(), f"{WORK}/model.pt")
    log(f"trained in {timing['train_s']:.0f}s")

    t = time.time()
    staging = f"{WORK}/bundle"
    shutil.rmtree(staging, ignore_errors=True)
    export.write_bundle(model, tok, staging,
                        "digits seen, requests heard or typed, short answers")
    check.check_bundle(staging, model)
    for name in os.listdir(staging):
        shutil.copy(f"{staging}/{name}", f"{BUNDLE}/{name}")
    timing["export_s"] = time.time() - t
    log(f"exported and checked in {timing['export_s']:.0f}s")

    t = time.time()
    results, by_source, failures = evaluate.evaluate(BUNDLE, data, args.eval_per_subset, log=log)
    timing["eval_s"] = time.time() - t
    with open(f"{WORK}/eval.json", "w") as f:
        json.dump({"results": results, "image_only_by_source": by_source,
                   "failures": failures[:100], "timing": timing,
                   "threads": args.threads}, f, indent=1)

    t = time.time()
    samples.write_samples(BUNDLE, f"{ROOT}/samples", log=log)
    subprocess.run([sys.executable, f"{HERE}/reference.py"], check=True)
    timing["samples_s"] = time.time() - t

    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    timing["cpu_s"] = sum(u.ru_utime + u.ru_stime for u in usage)
    readme.write(f"{BUNDLE}/README.md", results, by_source, timing, args.threads, tok)
    status = f"{BUNDLE}/STATUS"
    if os.path.exists(status):
        os.remove(status)
    log("timing " + json.dumps({k: round(v) for k, v in timing.items()}))
    with open(f"{WORK}/timing.json", "w") as f:
        json.dump(timing, f, indent=1)
    log(evaluate.markdown_table(results))


if __name__ == "__main__":
    main()
