"""A straightforward Python realtime server: the baseline mmrt is measured against.

It serves the same bundle over the same protocol subset the load test uses, the way a
first version in Python would be written: `websockets` for the socket, one asyncio task
per session, and at each `response.create` the whole turn (audio encode, image encode,
prefill, greedy decode one token at a time) run by `onnxruntime` in a worker thread.
No batching across sessions, no incremental ingest.

Subset: session.update (rate, token cap), input_audio_buffer.append/commit, binary
PCM16 audio and PNG video frames (commit flag honoured), mmrt.input_video.frame (PNG),
response.create; answers session.created/updated, input_audio_buffer.committed,
response.created, response.output_text.delta, response.done, error.

    .venv/bin/python loadtest/baseline/server.py --listen 127.0.0.1:0 \
        --bundle models/bundles/tiny

prints "baseline listening on HOST:PORT" like `mmrt` does.
"""

import argparse
import asyncio
import base64
import json
import struct
import sys
import uuid
import zlib
from pathlib import Path

import numpy as np
import websockets

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "models" / "train"))
from mmtrain import runtime  # noqa: E402

HEADER = struct.Struct("<BBBBIQHHI")
AUDIO_PCM16, VIDEO_PNG = 1, 17
MODEL_LOCK = asyncio.Lock()


def new_id(prefix):
    return f"{prefix}_{uuid.uuid4().hex[:20]}"


def session_json(sid, rate, max_tokens):
    return {
        "type": "realtime", "object": "realtime.session", "id": sid, "model": "baseline",
        "output_modalities": ["text"], "instructions": "",
        "audio": {"input": {"format": {"type": "audio/pcm", "rate": rate},
                            "turn_detection": None}},
        "max_output_tokens": max_tokens, "temperature": 0.0,
        "mmrt": {"protocol_version": "1.0",
                 "fill_policy": {"image": "last_known", "audio": "null"}, "max_age_ms": 2000,
                 "video": {"sample_fps": 2.0, "max_frames": 8},
                 "limits": {"max_event_bytes": 4194304, "max_audio_buffer_ms": 60000,
                            "max_image_bytes": 8388608, "max_image_dimension": 4096,
                            "max_items": 256, "max_output_tokens": 1024, "max_frames": 64,
                            "idle_timeout_ms": 300000}},
    }


def decode_png(data: bytes) -> np.ndarray:
    """8-bit RGB or RGBA, non-interlaced PNG -> uint8 [H, W, 3] (stdlib only)."""
    pos, idat, w = 8, b"", 0
    while pos < len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        kind, body = data[pos + 4:pos + 8], data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", body)
            if depth != 8 or ctype not in (2, 6) or interlace:
                raise ValueError("only 8-bit RGB/RGBA non-interlaced PNG")
            bpp = 3 if ctype == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    raw = zlib.decompress(idat)
    stride = w * bpp
    out = np.zeros((h, stride), np.int32)
    prev = np.zeros(stride, np.int32)
    for y in range(h):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        cur = line.copy()
        if f == 1:
            for x in range(bpp, stride):
                cur[x] = (cur[x] + cur[x - bpp]) & 255
        elif f == 2:
            cur = (cur + prev) & 255
        elif f == 3:
            for x in range(stride):
                left = cur[x - bpp] if x >= bpp else 0
                cur[x] = (cur[x] + ((left + prev[x]) >> 1)) & 255
        elif f == 4:
            for x in range(stride):
                a = cur[x - bpp] if x >= bpp else 0
                b, c = prev[x], prev[x - bpp] if x >= bpp else 0
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (cur[x] + pred) & 255
        out[y], prev = cur, cur
    return out.reshape(h, w, bpp)[:, :, :3].astype(np.uint8)


class Session:
    def __init__(self, ws, bundle):
        self.ws, self.bundle = ws, bundle
        self.id = new_id("sess")
        self.rate, self.max_tokens = 24000, 1024
        self.audio = bytearray()
        self.frame = None
        self.last_item = None

    async def send(self, event):
        event["event_id"] = new_id("event")
        await self.ws.send(json.dumps(event))

    async def error(self, code, message):
        await self.send({"type": "error", "error": {
            "type": "invalid_request_error", "code": code, "message": message}})

    async def commit(self):
        item = new_id("item")
        await self.send({"type": "input_audio_buffer.committed",
                         "previous_item_id": self.last_item, "item_id": item})
        self.last_item = item
        self.turn_audio = bytes(self.audio)
        self.audio.clear()

    async def respond(self):
        rid, item = new_id("resp"), new_id("item")
        pcm = np.frombuffer(getattr(self, "turn_audio", b""), "<i2").astype(np.float32) / 32768
        if self.rate != 16000 and len(pcm):
            pcm = np.interp(np.arange(0, len(pcm), self.rate / 16000), np.arange(len(pcm)), pcm)
        frame = self.frame
        resp = {"id": rid, "object": "realtime.response", "status": "in_progress",
                "status_details": None, "output": [], "output_modalities": ["text"],
                "max_output_tokens": self.max_tokens, "usage": None}
        await self.send({"type": "response.created", "response": resp})

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()
        b = self.bundle

        def work():
            # The whole turn, one token at a time, like the reference runner.
            rgb = decode_png(frame) if frame else None
            prefix, mods = b.prefix(None, rgb, pcm if len(pcm) else None, "null")
            n = prefix.shape[0]
            logits, past = b.run_decoder(prefix[None], np.ones((1, n), np.int64),
                                         np.arange(n, dtype=np.int64)[None], mods[None],
                                         b.empty_past())
            all_mods, ids = mods[None], []
            for step in range(self.max_tokens):
                tok = int(np.argmax(logits[0, -1]))
                if tok == b.eos:
                    break
                ids.append(tok)
                loop.call_soon_threadsafe(queue.put_nowait, b.tokenizer.decode([tok]))
                if step + 1 == self.max_tokens:
                    break
                all_mods = np.concatenate([all_mods, np.zeros((1, 1), np.int64)], axis=1)
                logits, past = b.run_decoder(b.embed_ids([tok])[None],
                                             np.ones((1, n + 1), np.int64),
                                             np.array([[n]], np.int64), all_mods, past)
                n += 1
            loop.call_soon_threadsafe(queue.put_nowait, None)
            return n, len(ids)

        async with MODEL_LOCK:  # one ONNX Runtime user at a time, as a simple server does
            task = loop.run_in_executor(None, work)
            text = ""
            while (delta := await queue.get()) is not None:
                text += delta
                await self.send({"type": "response.output_text.delta", "response_id": rid,
                                 "item_id": item, "output_index": 0, "content_index": 0,
                                 "delta": delta})
            total, produced = await task
        resp.update(status="completed", output=[{
            "id": item, "object": "realtime.item", "type": "message", "status": "completed",
            "role": "assistant", "content": [{"type": "output_text", "text": text}]}],
            usage={"input_tokens": total - produced, "output_tokens": produced,
                   "total_tokens": total})
        await self.send({"type": "response.done", "response": resp})

    async def on_binary(self, data):
        magic, version, kind, flags, _seq, _ts, _w, _h, length = HEADER.unpack_from(data)
        payload = data[HEADER.size:]
        if magic != 0x6D or version != 1 or length != len(payload):
            return await self.error("invalid_binary_frame", "bad header")
        if kind == AUDIO_PCM16:
            self.audio += payload
            if flags & 1:
                await self.commit()
        elif kind == VIDEO_PNG:
            self.frame = bytes(payload)
        else:
            await self.error("unsupported", f"frame kind {kind}")

    async def on_text(self, text):
        event = json.loads(text)
        kind = event.get("type")
        if kind == "session.update":
            s = event.get("session", {})
            rate = s.get("audio", {}).get("input", {}).get("format", {}).get("rate")
            self.rate = rate or self.rate
            if isinstance(s.get("max_output_tokens"), int):
                self.max_tokens = s["max_output_tokens"]
            await self.send({"type": "session.updated",
                             "session": session_json(self.id, self.rate, self.max_tokens)})
        elif kind == "input_audio_buffer.append":
            self.audio += base64.b64decode(event["audio"])
        elif kind == "input_audio_buffer.commit":
            await self.commit()
        elif kind == "mmrt.input_video.frame":
            self.frame = base64.b64decode(event["data"])
        elif kind == "response.create":
            await self.respond()
        else:
            await self.error("unknown_event", f"unsupported event {kind}")


async def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", default="127.0.0.1:8081")
    parser.add_argument("--bundle", default=str(ROOT / "models" / "bundles" / "tiny"))
    args = parser.parse_args()
    bundle = runtime.Bundle(args.bundle)
    host, port = args.listen.rsplit(":", 1)

    async def handler(ws):
        session = Session(ws, bundle)
        await session.send({"type": "session.created",
                            "session": session_json(session.id, 24000, 1024)})
        async for message in ws:
            if isinstance(message, bytes):
                await session.on_binary(message)
            else:
                await session.on_text(message)

    async with websockets.serve(handler, host, int(port), max_size=8 << 20) as server:
        addr = server.sockets[0].getsockname()
        print(f"baseline listening on {addr[0]}:{addr[1]}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
