"""``proteus serve MODEL_DIR``: a saved model behind a small HTTP API (FastAPI + uvicorn).

    GET  /health    {"status": "ok"}                        (never needs the token)
    GET  /info      the model's ``info()``
    POST /predict   {"texts": [...]}                        text models
                    {"images": ["<base64>", ...]}           image models
                    multipart/form-data, field ``files``    image models (repeat the field)
        -> {"predictions": [{"class", "class_id", "task", "score"}, ...]} in input order

Errors are JSON ``{"error": "..."}``: 400 for bad input (the message names the field, index or
file), 401 for a missing or wrong token, 413 for too many items or too large a body.

Concurrent requests are batched: one asyncio worker collects what is pending for up to
``batch_wait_ms`` (or until ``max_batch`` items are queued), runs one ``model.predict`` over the
lot in a worker thread and hands each request its own rows. A batch the model refuses
(``DataError``) is retried request by request, so one bad request does not fail its neighbours.

Uploaded images are decoded here (Pillow) from the request's bytes into uint8 RGB arrays; no
filesystem path named in a request is ever opened. An image already at the backbone's input
size is taken as it is; any other is resized (short side to ``size * 256/224``) and
centre-cropped to ``size x size``, as ``model.predict`` treats an image file, so every image of
a batch has the same shape.

The server binds 127.0.0.1 unless told otherwise; set a token (``--token`` or the environment
variable ``PROTEUS_TOKEN``) before binding any other address.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import collections
import contextlib
import hmac
import io
import json
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .data.base import DataError

if TYPE_CHECKING:  # pragma: no cover
    from fastapi import FastAPI

    from .model import ProteusModel

log = logging.getLogger("proteus.serve")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
DEFAULT_MAX_BATCH = 64
DEFAULT_MAX_REQUEST_BYTES = 8 * 1024 * 1024
DEFAULT_IMAGE_SIZE = 224
#: decoded images larger than this many pixels are refused (a small PNG can inflate hugely)
MAX_IMAGE_PIXELS = 40_000_000


class RequestError(Exception):
    """A request the server refuses: an HTTP status and a readable message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


# -- decoding ----------------------------------------------------------------------------------
def image_size(model: "ProteusModel") -> int:
    """The square input size of the model's image backbone (its ImagePreprocessor), else 224."""
    from .backbones.base import ImagePreprocessor

    backbone = model.backbone
    candidates = [getattr(backbone, "transform", None), getattr(backbone, "preprocessor", None)]
    candidates += list(vars(backbone).values())
    for c in candidates:
        if isinstance(c, ImagePreprocessor):
            return int(c.size)
    for c in candidates:  # duck-typed preprocessors
        size = getattr(c, "size", None)
        if isinstance(size, int) and size > 0:
            return size
    return DEFAULT_IMAGE_SIZE


def decode_image(data: bytes, size: int, name: str) -> np.ndarray:
    """Image file bytes -> uint8 RGB ``size x size x 3``; ``RequestError(400)`` naming ``name``."""
    from PIL import Image

    if not data:
        raise RequestError(400, f"{name}: empty image")
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if w * h > MAX_IMAGE_PIXELS:
                raise RequestError(400, f"{name}: image of {w}x{h} pixels is too large "
                                        f"(at most {MAX_IMAGE_PIXELS} pixels)")
            rgb = im.convert("RGB")
            if rgb.size != (size, size):
                short = round(size * 256 / 224)
                if h <= w:
                    nh, nw = short, max(short, round(w * short / h))
                else:
                    nh, nw = max(short, round(h * short / w)), short
                rgb = rgb.resize((nw, nh), Image.Resampling.BILINEAR)
                top, left = (nh - size) // 2, (nw - size) // 2
                rgb = rgb.crop((left, top, left + size, top + size))
            arr = np.asarray(rgb, dtype=np.uint8)
    except RequestError:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for corrupt files
        raise RequestError(400, f"{name}: cannot decode image: {type(exc).__name__}: {exc}"
                           ) from None
    if arr.shape != (size, size, 3):  # pragma: no cover - defensive
        raise RequestError(400, f"{name}: decoded to an unexpected shape {arr.shape}")
    return arr


def decode_base64(text: Any, name: str) -> bytes:
    """A base64 string (optionally a ``data:...;base64,`` URL) -> bytes; never a path."""
    if not isinstance(text, str):
        raise RequestError(400, f"{name}: expected a base64 string, got {type(text).__name__}")
    if text.startswith("data:") and "," in text:
        text = text.split(",", 1)[1]
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise RequestError(400, f"{name}: not valid base64 image data (images are sent as "
                                "base64-encoded file bytes; paths are never read)") from None


# -- batching ----------------------------------------------------------------------------------
@dataclass
class _Pending:
    items: Any  # list[str] or uint8 array (n, S, S, 3)
    key: tuple
    future: asyncio.Future = field(repr=False)

    def __len__(self) -> int:
        return len(self.items)


class Batcher:
    """One asyncio worker that groups pending requests into ``model.predict`` calls."""

    def __init__(self, predict: Callable[[Any], dict], max_batch: int, wait_s: float):
        self.predict = predict
        self.max_batch = max_batch
        self.wait_s = wait_s
        self.executor: ThreadPoolExecutor | None = None  # one thread: predict calls in turn
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task | None = None
        self._pending: collections.deque[_Pending] = collections.deque()
        self._wakeup: asyncio.Event | None = None

    def _ensure_worker(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop or self._task is None or self._task.done():
            if self._task is not None and self._loop is not loop:
                self._pending.clear()  # futures of a loop that is gone
            self._loop = loop
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._work(), name="proteus-batcher")

    async def submit(self, items: Any, key: tuple) -> list[dict[str, Any]]:
        self._ensure_worker()
        future = asyncio.get_running_loop().create_future()
        self._pending.append(_Pending(items, key, future))
        self._wakeup.set()
        return await future

    async def close(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        for p in self._pending:
            if not p.future.done():
                p.future.set_exception(RequestError(503, "the server is shutting down"))
        self._pending.clear()
        if self.executor is not None:
            self.executor.shutdown(wait=False, cancel_futures=True)
            self.executor = None

    def _queued(self) -> int:
        return sum(len(p) for p in self._pending)

    async def _work(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            deadline = loop.time() + self.wait_s
            while self._queued() < self.max_batch:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._wakeup.clear()
                try:
                    await asyncio.wait_for(self._wakeup.wait(), remaining)
                except asyncio.TimeoutError:
                    break
            batch, n = [], 0
            while self._pending and (not batch or n + len(self._pending[0]) <= self.max_batch):
                p = self._pending.popleft()
                if p.future.done():  # the client went away
                    continue
                batch.append(p)
                n += len(p)
            groups: dict[tuple, list[_Pending]] = {}
            for p in batch:
                groups.setdefault(p.key, []).append(p)
            for group in groups.values():
                try:
                    await self._run_group(group)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - the worker must survive anything
                    log.exception("batch failed")
                    for p in group:
                        _fail(p, exc)

    async def _call(self, items: Any) -> dict:
        if self.executor is None:
            self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="proteus-predict")
        return await asyncio.get_running_loop().run_in_executor(self.executor, self.predict, items)

    async def _run_group(self, group: list[_Pending]) -> None:
        if len(group) == 1:
            try:
                out = await self._call(group[0].items)
            except Exception as exc:  # noqa: BLE001
                _fail(group[0], exc)
                return
            _deliver(group[0], out, 0)
            return
        items = (np.concatenate([p.items for p in group]) if isinstance(group[0].items, np.ndarray)
                 else [x for p in group for x in p.items])
        try:
            out = await self._call(items)
        except DataError:
            # one bad request must not fail its neighbours: run each alone
            for p in group:
                try:
                    single = await self._call(p.items)
                except Exception as exc:  # noqa: BLE001
                    _fail(p, exc)
                else:
                    _deliver(p, single, 0)
            return
        start = 0
        for p in group:
            _deliver(p, out, start)
            start += len(p)


def _fail(p: _Pending, exc: BaseException) -> None:
    if not p.future.done():
        p.future.set_exception(exc)


def _deliver(p: _Pending, out: dict, start: int) -> None:
    if p.future.done():
        return
    try:
        rows = _rows(out, start, len(p))
    except Exception as exc:  # noqa: BLE001
        p.future.set_exception(exc)
    else:
        p.future.set_result(rows)


def _rows(out: dict, start: int, n: int) -> list[dict[str, Any]]:
    ids, names = out["class_ids"], out["class_names"]
    tasks, scores = out.get("task_ids"), out.get("scores")
    if len(ids) < start + n:
        raise RuntimeError(f"the model returned {len(ids)} predictions, expected "
                           f"at least {start + n}")
    rows = []
    for i in range(start, start + n):
        score = None if scores is None else float(scores[i])
        rows.append({"class": str(names[i]), "class_id": int(ids[i]),
                     "task": None if tasks is None else int(tasks[i]),
                     "score": score if score is None or math.isfinite(score) else None})
    return rows


# -- the app -----------------------------------------------------------------------------------
def json_safe(value: Any) -> Any:
    """numpy scalars/arrays, paths, tuples and sets -> plain JSON values (NaN/inf -> None)."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [json_safe(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_safe(value.tolist())
    if isinstance(value, np.generic):
        return json_safe(value.item())
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (str, int, bool)) or value is None:
        return value
    if isinstance(value, Path):
        return str(value)
    return str(value)


async def _read_body(request: Any, limit: int) -> bytes:
    length = request.headers.get("content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise RequestError(400, "invalid Content-Length header") from None
        if declared > limit:
            raise RequestError(413, f"request body of {declared} bytes is over the limit of "
                                    f"{limit} bytes")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise RequestError(413, f"request body is over the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def create_app(model: "ProteusModel", *, token: str | None = None,
               max_batch: int = DEFAULT_MAX_BATCH,
               max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
               batch_wait_ms: float = 5.0) -> "FastAPI":
    """The HTTP app over ``model``; see the module docstring for the endpoints."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool
    from starlette.datastructures import UploadFile
    from starlette.formparsers import MultiPartException, MultiPartParser

    if max_batch < 1:
        raise ValueError(f"max_batch must be at least 1, got {max_batch}")
    if max_request_bytes < 1:
        raise ValueError(f"max_request_bytes must be positive, got {max_request_bytes}")
    if batch_wait_ms < 0:
        raise ValueError(f"batch_wait_ms must not be negative, got {batch_wait_ms}")
    if token is not None and not token:
        raise ValueError("token must not be empty (pass None for no token)")

    modality = model.modality
    size = image_size(model) if modality == "image" else None
    field_name = "images" if modality == "image" else "texts"
    batcher = Batcher(model.predict, max_batch, batch_wait_ms / 1000.0)
    expected_auth = f"Bearer {token}".encode() if token else None

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        await batcher.close()

    app = FastAPI(title="proteus", lifespan=lifespan, docs_url=None, redoc_url=None,
                  openapi_url=None)
    app.state.batcher = batcher
    app.state.model = model

    def error(status: int, message: str) -> JSONResponse:
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    def authorised(request: Request) -> bool:
        if expected_auth is None:
            return True
        given = request.headers.get("authorization", "").encode("utf-8", "surrogateescape")
        return hmac.compare_digest(given, expected_auth)

    def wrong_field() -> RequestError:
        if modality == "image":
            return RequestError(400, 'this is an image model: send JSON {"images": '
                                     '["<base64>", ...]} or multipart uploads in field "files"')
        return RequestError(400, f'this is a {modality} model: send JSON {{"texts": [...]}}')

    def check_count(n: int, what: str) -> None:
        if n == 0:
            raise RequestError(400, f"{what}: empty list; send at least one item")
        if n > max_batch:
            raise RequestError(413, f"{what}: {n} items is over the limit of {max_batch} per "
                                    "request; split the request")

    async def parse_multipart(request: Request, body: bytes) -> list[tuple[str, bytes]]:
        if modality != "image":
            raise wrong_field()

        async def replay():
            yield body

        parser = MultiPartParser(request.headers, replay(), max_files=max_batch,
                                 max_fields=16)
        try:
            form = await parser.parse()
        except MultiPartException as exc:
            if exc.message.startswith("Too many files"):
                raise RequestError(413, f"files: more than {max_batch} files in one request; "
                                        "split the request") from None
            raise RequestError(400, f"invalid multipart body: {exc.message}") from None
        try:
            other = sorted({k for k, _ in form.multi_items() if k != "files"})
            values = form.getlist("files")
            if not values:
                if other:
                    raise RequestError(400, f"multipart field(s) {', '.join(other)} not "
                                            'understood; upload images in field "files"')
                raise RequestError(400, 'files: no uploads; send images in field "files"')
            check_count(len(values), "files")
            out = []
            for i, v in enumerate(values):
                if not isinstance(v, UploadFile):
                    raise RequestError(400, f"files[{i}]: a text field, not a file upload")
                label = f"files[{i}] ({v.filename!r})" if v.filename else f"files[{i}]"
                out.append((label, await v.read()))
            return out
        finally:
            await form.close()

    def parse_json(body: bytes) -> tuple[str, list]:
        try:
            payload = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise RequestError(400, f"body is not valid JSON ({exc}); send JSON "
                                    f'{{"{field_name}": [...]}}'
                                    + (' or multipart "files"' if modality == "image" else "")
                               ) from None
        if not isinstance(payload, dict):
            raise RequestError(400, f'body must be a JSON object like {{"{field_name}": [...]}}')
        if field_name not in payload:
            raise wrong_field()
        unknown = sorted(set(payload) - {field_name})
        if unknown:
            raise RequestError(400, f"unexpected field(s) {', '.join(unknown)}; this "
                                    f'{modality} model takes only "{field_name}"')
        values = payload[field_name]
        if not isinstance(values, list):
            raise RequestError(400, f"{field_name}: expected a list, got "
                                    f"{type(values).__name__}")
        check_count(len(values), field_name)
        return field_name, values

    def decode_all(named: list[tuple[str, bytes]]) -> np.ndarray:
        return np.stack([decode_image(data, size, name) for name, data in named])

    async def predict_endpoint(request: Request):
        if not authorised(request):
            return error(401, "missing or wrong token: send header 'Authorization: Bearer "
                              "<token>'")
        try:
            body = await _read_body(request, max_request_bytes)
            ctype = request.headers.get("content-type", "").lower()
            if ctype.startswith("multipart/form-data"):
                named = await parse_multipart(request, body)
                items: Any = await run_in_threadpool(decode_all, named)
            else:
                name, values = parse_json(body)
                if modality == "image":
                    named = [(f"images[{i}]", decode_base64(v, f"images[{i}]"))
                             for i, v in enumerate(values)]
                    items = await run_in_threadpool(decode_all, named)
                else:
                    bad = [i for i, v in enumerate(values) if not isinstance(v, str)]
                    if bad:
                        raise RequestError(400, f"texts[{bad[0]}]: expected a string, got "
                                                f"{type(values[bad[0]]).__name__}")
                    items = list(values)
            key = ("image", items.shape[1:]) if isinstance(items, np.ndarray) else ("text",)
            rows = await batcher.submit(items, key)
        except RequestError as exc:
            return error(exc.status, exc.message)
        except DataError as exc:
            return error(400, str(exc))
        except Exception as exc:  # noqa: BLE001 - a JSON 500, never a traceback page
            log.exception("predict failed")
            return error(500, f"internal error: {type(exc).__name__}: {exc}")
        return JSONResponse({"predictions": rows})

    async def health_endpoint(request: Request):
        return JSONResponse({"status": "ok"})

    async def info_endpoint(request: Request):
        if not authorised(request):
            return error(401, "missing or wrong token: send header 'Authorization: Bearer "
                              "<token>'")
        return JSONResponse(json_safe(model.info()))

    # plain Starlette routes: the endpoints take the raw request (no FastAPI body parsing)
    app.add_route("/health", health_endpoint, methods=["GET"])
    app.add_route("/info", info_endpoint, methods=["GET"])
    app.add_route("/predict", predict_endpoint, methods=["POST"])
    return app


# -- running -----------------------------------------------------------------------------------
def serve(model_dir: str | Path, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          token: str | None = None, max_batch: int = DEFAULT_MAX_BATCH,
          max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES, device: str = "cpu",
          batch_wait_ms: float = 5.0, log_level: str = "info") -> None:
    """Load the model in ``model_dir`` and serve it with uvicorn until interrupted."""
    import uvicorn

    from .model import load_model

    model = load_model(model_dir, device=device)
    app = create_app(model, token=token, max_batch=max_batch,
                     max_request_bytes=max_request_bytes, batch_wait_ms=batch_wait_ms)
    if not token and host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s without a token: anyone who can reach it may use the model",
                    host)
    uvicorn.run(app, host=host, port=port, log_level=log_level, server_header=False)


def _serve_command(args: Any, console: Any) -> int:
    token = args.token if args.token is not None else os.environ.get("PROTEUS_TOKEN") or None
    if args.max_batch < 1:
        console.print("[bold red]error:[/] --max-batch must be at least 1", highlight=False)
        return 2
    if not args.max_request_mb > 0:
        console.print("[bold red]error:[/] --max-request-mb must be positive", highlight=False)
        return 2
    if not token and args.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[bold yellow]warning:[/] serving on {args.host} without a token "
                      "(set --token or PROTEUS_TOKEN)", highlight=False)
    serve(args.model_dir, host=args.host, port=args.port, token=token,
          max_batch=args.max_batch, max_request_bytes=int(args.max_request_mb * 1024 * 1024),
          device=args.device)
    return 0


def add_parser(subparsers: Any) -> Any:
    """Register ``proteus serve MODEL_DIR`` on an argparse subparsers object."""
    p = subparsers.add_parser("serve", help="serve a saved model over HTTP (/predict, /info, "
                              "/health)")
    p.add_argument("model_dir", help="a saved model directory, e.g. runs/demo/model")
    p.add_argument("--host", default=DEFAULT_HOST,
                   help="address to bind (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="port (default 8000)")
    p.add_argument("--token", default=None,
                   help="require 'Authorization: Bearer TOKEN' on /predict and /info "
                        "(default: the PROTEUS_TOKEN environment variable, if set)")
    p.add_argument("--max-batch", type=int, default=DEFAULT_MAX_BATCH,
                   help="most items per request and per model call (default 64)")
    p.add_argument("--max-request-mb", type=float,
                   default=DEFAULT_MAX_REQUEST_BYTES / (1024 * 1024),
                   help="largest request body in MiB (default 8)")
    p.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 or auto (default)")
    p.set_defaults(func=lambda args, console: _serve_command(args, console))
    return p
