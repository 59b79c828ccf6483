"""Episodes: one turn's inputs (which modalities, which request, which frame, which
clip) and the answer it must get. Shared by training, evaluation and the samples."""

import random
from dataclasses import dataclass
from typing import Optional

from . import corpus

# Modality subsets, in the order the evaluation table lists them.
SUBSETS = {
    "all three": ("text", "image", "audio"),
    "audio+text": ("text", "audio"),
    "image+text": ("text", "image"),
    "text only": ("text",),
    "audio+image": ("image", "audio"),
    "audio only": ("audio",),
    "image only": ("image",),
    "nothing": (),
}
TRAIN_SUBSET_WEIGHTS = {"all three": 1.0, "audio+text": 1.0, "image+text": 1.0,
                        "text only": 1.0, "audio+image": 1.6, "audio only": 1.6,
                        "image only": 0.8, "nothing": 0.15}

REQUESTS = corpus.all_requests()
REQUEST_GROUPS = {
    "see": [i for i, r in enumerate(REQUESTS) if r.kind == "see"],
    "it": [i for i, r in enumerate(REQUESTS) if r.kind != "see" and r.a is None],
    "pair": [i for i, r in enumerate(REQUESTS) if r.a is not None],
    "equal": [i for i, r in enumerate(REQUESTS) if r.a is not None and r.a == r.b],
}
# "it" requests and equal pairs are few among all requests but need as much practice.
GROUP_WEIGHTS = {"see": 0.2, "it": 0.42, "pair": 0.3, "equal": 0.08}


@dataclass
class Episode:
    modalities: tuple
    request: Optional[int]  # index into REQUESTS, None when neither text nor audio
    typed: Optional[str]  # typed text when "text" is present
    image: Optional[int]  # index into the image bank when "image" is present
    digit: Optional[int]  # digit in that image (None: no digit or no image)
    clip: Optional[int]  # index into the clip bank when "audio" is present
    answer: str


def sample_request(rng: random.Random) -> int:
    group = rng.choices(list(GROUP_WEIGHTS), weights=list(GROUP_WEIGHTS.values()))[0]
    return rng.choice(REQUEST_GROUPS[group])


def make_episode(rng: random.Random, subset: str, image_labels, clips_by_request,
                 request: Optional[int] = None) -> Episode:
    mods = SUBSETS[subset]
    req = None
    if "text" in mods or "audio" in mods:
        req = sample_request(rng) if request is None else request
    image = digit = None
    if "image" in mods:
        image = rng.randrange(len(image_labels))
        label = int(image_labels[image])
        digit = None if label == 10 else label
    clip = rng.choice(clips_by_request[req]) if "audio" in mods else None
    typed = corpus.typed_form(REQUESTS[req].text, rng) if "text" in mods else None
    ans = corpus.answer_for_inputs(REQUESTS[req] if req is not None else None,
                                   "image" in mods, digit)
    return Episode(mods, req, typed, image, digit, clip, ans)
