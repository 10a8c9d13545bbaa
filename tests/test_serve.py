"""``proteus serve``: the real HTTP server (uvicorn in a subprocess) over tiny saved models.

One tiny image model (synthetic images, tiny random ViT, SimpleCIL) and one tiny text model
(synthetic sentences, a tiny random BERT with a character vocabulary saved in a temporary
folder) are trained once for the module. Two servers run for the whole module: the image model
with a token and small limits, the text model with the defaults (so it must bind 127.0.0.1).
"""

from __future__ import annotations

import base64
import contextlib
import inspect
import io
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import httpx  # noqa: E402  (installed by make test: these tests never skip)

from PIL import Image  # noqa: E402
from rich.console import Console  # noqa: E402

import proteus  # noqa: E402
from proteus.config import validate  # noqa: E402
from proteus.data.base import DataError  # noqa: E402
from proteus.model import load_model  # noqa: E402
from proteus.serve import add_parser, create_app, serve  # noqa: E402

from conftest import (TINY_IMAGE_SIZE, tiny_bert, tiny_config_dict,  # noqa: E402
                      tiny_text_config_dict)

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
IMG_MAX_BATCH = 8
IMG_MAX_BYTES = 64 * 1024
SRC = str(Path(__file__).resolve().parents[1] / "src")


# -- models --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("serve")
    quiet = Console(file=io.StringIO())
    img = tiny_config_dict(root / "runs", name="img", checkpoint=False)
    proteus.run(validate(img), console=quiet)
    bert = tiny_bert(root / "tiny-bert")
    txt = tiny_text_config_dict(root / "runs", bert)
    proteus.run(validate(txt), console=quiet)
    return {"image": root / "runs" / "img" / "model", "text": root / "runs" / "txt" / "model",
            "root": root}


@pytest.fixture(scope="module")
def image_model(model_dirs):
    return load_model(model_dirs["image"], device="cpu")


@pytest.fixture(scope="module")
def text_model(model_dirs):
    return load_model(model_dirs["text"], device="cpu")


# -- servers -------------------------------------------------------------------------------------
def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model_dir: Path, port: int, log: Path, cwd: Path, **kwargs) -> subprocess.Popen:
    args = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    code = ("import torch; torch.set_num_threads(1)\n"
            "from proteus.serve import serve\n"
            f"serve({str(model_dir)!r}, port={port}, log_level='warning'"
            + (f", {args}" if args else "") + ")\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("PROTEUS_TOKEN", None)
    return subprocess.Popen([sys.executable, "-c", code], env=env, cwd=cwd,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT)


def _wait_healthy(proc: subprocess.Popen, url: str, log: Path, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}:\n{log.read_text()}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/health", timeout=1.0).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not come up in {timeout} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def servers(model_dirs, request):
    root = model_dirs["root"]
    procs = {}

    def stop():
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    request.addfinalizer(stop)
    ports = {"image": _free_port(), "text": _free_port()}
    # the image server runs in ``root``: a relative path sent to it exists in its working dir
    procs["image"] = _start(model_dirs["image"], ports["image"], root / "image.log", root,
                            token=TOKEN, max_batch=IMG_MAX_BATCH,
                            max_request_bytes=IMG_MAX_BYTES)
    procs["text"] = _start(model_dirs["text"], ports["text"], root / "text.log",  # defaults
                           root)
    urls = {k: f"http://127.0.0.1:{p}" for k, p in ports.items()}
    for kind in procs:
        _wait_healthy(procs[kind], urls[kind], root / f"{kind}.log")
    return {"urls": urls, "ports": ports, "procs": procs}


@pytest.fixture(scope="module")
def img_url(servers):
    return servers["urls"]["image"]


@pytest.fixture(scope="module")
def txt_url(servers):
    return servers["urls"]["text"]


# -- inputs --------------------------------------------------------------------------------------
def _images(n: int, seed: int = 0) -> np.ndarray:
    from proteus.data.readers.synthetic import SyntheticOptions, read_synthetic

    data = read_synthetic(SyntheticOptions(num_classes=6, samples_per_class=4,
                                           image_size=TINY_IMAGE_SIZE, noise=0.1, seed=1))
    rng = np.random.default_rng(seed)
    return np.asarray(data.items)[rng.choice(len(data.items), size=n, replace=False)]


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _b64(arr: np.ndarray) -> str:
    return base64.b64encode(_png(arr)).decode()


def _ids(response) -> list[int]:
    assert response.status_code == 200, response.text
    return [p["class_id"] for p in response.json()["predictions"]]


# -- tests: the real server ----------------------------------------------------------------------
def test_default_host_is_loopback_and_text_server_listens_only_there(servers):
    assert inspect.signature(serve).parameters["host"].default == "127.0.0.1"
    import argparse

    sub = argparse.ArgumentParser().add_subparsers()
    p = add_parser(sub)
    args = p.parse_args(["some/model"])
    assert args.host == "127.0.0.1" and args.port == 8000 and args.device == "auto"
    assert callable(args.func)
    # the text server was started with serve()'s defaults: its listening socket is on 127.0.0.1
    tcp = Path("/proc/net/tcp")
    if not tcp.exists():
        pytest.skip("no /proc/net/tcp here")
    port = servers["ports"]["text"]
    listening = [line.split()[1] for line in tcp.read_text().splitlines()[1:]
                 if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]
    assert listening == [f"0100007F:{port:04X}"]
    tcp6 = Path("/proc/net/tcp6")
    if tcp6.exists():
        assert not [line for line in tcp6.read_text().splitlines()[1:]
                    if line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port]


def test_health_and_token(img_url, image_model):
    assert httpx.get(img_url + "/health").json() == {"status": "ok"}
    body = {"images": [_b64(_images(1)[0])]}
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
        assert httpx.get(img_url + "/info", headers=headers).status_code == 401
        r = httpx.post(img_url + "/predict", json=body, headers=headers)
        assert r.status_code == 401 and "token" in r.json()["error"]
    info = httpx.get(img_url + "/info", headers=AUTH)
    assert info.status_code == 200
    got = info.json()
    assert got["classes"] == image_model.info()["classes"] == 6
    assert got["modality"] == "image" and got["class_names"] == image_model.class_names
    assert httpx.post(img_url + "/predict", json=body, headers=AUTH).status_code == 200


def test_base64_predictions_match_the_model(img_url, image_model):
    arr = _images(IMG_MAX_BATCH)
    want = image_model.predict(arr)
    r = httpx.post(img_url + "/predict", json={"images": [_b64(a) for a in arr]}, headers=AUTH)
    assert _ids(r) == want["class_ids"].tolist()
    preds = r.json()["predictions"]
    assert [p["class"] for p in preds] == want["class_names"]
    tasks = want["task_ids"]
    assert [p["task"] for p in preds] == ([None] * len(arr) if tasks is None else tasks.tolist())
    np.testing.assert_allclose([p["score"] for p in preds], want["scores"], rtol=1e-4, atol=1e-5)


def test_multipart_predictions_match_the_model(img_url, image_model):
    arr = _images(5, seed=1)
    want = image_model.predict(arr).get("class_ids").tolist()
    files = [("files", (f"img{i}.png", _png(a), "image/png")) for i, a in enumerate(arr)]
    assert _ids(httpx.post(img_url + "/predict", files=files, headers=AUTH)) == want
    # a non-square, larger image is resized and centre-cropped, not refused
    big = np.asarray(Image.fromarray(arr[0]).resize((40, 24)))
    r = httpx.post(img_url + "/predict", files=[("files", ("big.png", _png(big)))],
                   headers=AUTH)
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1


def test_concurrent_requests_all_get_their_own_answers(img_url, image_model):
    arr = _images(16, seed=2)
    want = image_model.predict(arr)["class_ids"].tolist()
    slices = [(i * 2, i * 2 + 1 + i % 2) for i in range(8)]
    results: dict[int, list[int]] = {}
    start = threading.Barrier(8)

    def call(k: int, lo: int, hi: int) -> None:
        start.wait()
        with httpx.Client(timeout=30) as client:
            results[k] = _ids(client.post(img_url + "/predict", headers=AUTH,
                                          json={"images": [_b64(a) for a in arr[lo:hi]]}))

    threads = [threading.Thread(target=call, args=(k, lo, hi)) for k, (lo, hi) in
               enumerate(slices)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert {k: results.get(k) for k in range(8)} == {k: want[lo:hi] for k, (lo, hi)
                                                     in enumerate(slices)}


def test_limits(img_url, txt_url):
    one = _b64(_images(1)[0])
    r = httpx.post(img_url + "/predict", json={"images": [one] * (IMG_MAX_BATCH + 1)},
                   headers=AUTH)
    assert r.status_code == 413 and str(IMG_MAX_BATCH) in r.json()["error"]
    files = [("files", (f"f{i}.png", base64.b64decode(one))) for i in range(IMG_MAX_BATCH + 1)]
    r = httpx.post(img_url + "/predict", files=files, headers=AUTH)
    assert r.status_code == 413 and str(IMG_MAX_BATCH) in r.json()["error"]
    r = httpx.post(img_url + "/predict", json={"texts": ["x" * (IMG_MAX_BYTES + 10)]},
                   headers=AUTH)
    assert r.status_code == 413 and "limit" in r.json()["error"]

    def chunks():  # no Content-Length: the size actually read is checked
        for _ in range(IMG_MAX_BYTES // 4096 + 4):
            yield b" " * 4096

    r = httpx.post(img_url + "/predict", content=chunks(), headers={**AUTH,
                   "Content-Type": "application/json"})
    assert r.status_code == 413 and "limit" in r.json()["error"]
    r = httpx.post(img_url + "/predict", json={"images": []}, headers=AUTH)
    assert r.status_code == 400 and "empty" in r.json()["error"]
    r = httpx.post(txt_url + "/predict", json={"texts": []})
    assert r.status_code == 400 and "empty" in r.json()["error"]
    assert _ids(httpx.post(img_url + "/predict", json={"images": [one]}, headers=AUTH))


def test_corrupt_images_are_400_naming_them_and_the_server_keeps_serving(img_url, image_model):
    good = _images(2, seed=3)
    png = _png(good[0])
    r = httpx.post(img_url + "/predict", headers=AUTH,
                   json={"images": [_b64(good[0]), base64.b64encode(png[:40]).decode()]})
    assert r.status_code == 400 and "images[1]" in r.json()["error"]
    r = httpx.post(img_url + "/predict", headers=AUTH, json={"images": ["not base64!!"]})
    assert r.status_code == 400 and "images[0]" in r.json()["error"]
    files = [("files", ("ok.png", png)), ("files", ("broken.jpg", b"\xff\xd8\xff garbage"))]
    r = httpx.post(img_url + "/predict", files=files, headers=AUTH)
    assert r.status_code == 400 and "broken.jpg" in r.json()["error"]
    r = httpx.post(img_url + "/predict", headers=AUTH, content=b"{not json")
    assert r.status_code == 400
    want = image_model.predict(good)["class_ids"].tolist()
    assert _ids(httpx.post(img_url + "/predict", headers=AUTH,
                           json={"images": [_b64(a) for a in good]})) == want


def test_wrong_field_for_the_modality_is_400(img_url, txt_url):
    r = httpx.post(img_url + "/predict", json={"texts": ["hello"]}, headers=AUTH)
    assert r.status_code == 400 and '"images"' in r.json()["error"]
    one = _b64(_images(1)[0])
    r = httpx.post(txt_url + "/predict", json={"images": [one]})
    assert r.status_code == 400 and '"texts"' in r.json()["error"]
    r = httpx.post(txt_url + "/predict", files=[("files", ("a.png", base64.b64decode(one)))])
    assert r.status_code == 400 and '"texts"' in r.json()["error"]
    r = httpx.post(txt_url + "/predict", json={"texts": ["ok", 3]})
    assert r.status_code == 400 and "texts[1]" in r.json()["error"]


def test_a_path_in_images_is_never_read(img_url, model_dirs):
    root = model_dirs["root"]  # the image server's working directory
    path = root / "real.png"
    path.write_bytes(_png(_images(1)[0]))
    # also a relative path made only of base64 letters: it decodes, to bytes that are no image
    plain = root / "abcd" / "efgh"
    plain.parent.mkdir()
    plain.write_bytes(_png(_images(1)[0]))
    for name in (str(path), "real.png", "abcd/efgh"):
        r = httpx.post(img_url + "/predict", json={"images": [name]}, headers=AUTH)
        assert r.status_code == 400 and "images[0]" in r.json()["error"], name


def test_text_server_matches_the_model(txt_url, text_model):
    texts = ["kaba the of ripo", "some words here", "zuzu mela", "a b c d e f"]
    want = text_model.predict(texts)
    r = httpx.post(txt_url + "/predict", json={"texts": texts})  # no token on this server
    assert _ids(r) == want["class_ids"].tolist()
    assert httpx.get(txt_url + "/info").json()["modality"] == "text"


# -- tests: batching inside the app ----------------------------------------------------------------
class _Counting:
    """Wraps ``model.predict``: records each call's inputs; texts containing POISON fail."""

    def __init__(self, model):
        self.model, self.calls, self.real = model, [], model.predict

    def __call__(self, items):
        self.calls.append(list(items))
        if any("POISON" in t for t in items):
            raise DataError("input: poisoned text")
        return self.real(items)


def _concurrently(client, bodies: list[dict]) -> list:
    out = [None] * len(bodies)
    barrier = threading.Barrier(len(bodies))

    def call(i):
        barrier.wait()
        out[i] = client.post("/predict", json=bodies[i])

    threads = [threading.Thread(target=call, args=(i,)) for i in range(len(bodies))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return out


def test_concurrent_requests_share_one_predict_call(text_model, monkeypatch):
    from fastapi.testclient import TestClient

    a, b = ["kaba ripo", "zuzu"], ["mela the"]
    want_a, want_b = (text_model.predict(x)["class_ids"].tolist() for x in (a, b))
    counting = _Counting(text_model)
    monkeypatch.setattr(text_model, "predict", counting)
    app = create_app(text_model, max_batch=4, batch_wait_ms=400)
    with TestClient(app) as client:
        ra, rb = _concurrently(client, [{"texts": a}, {"texts": b}])
        assert [len(c) for c in counting.calls] == [3]  # one predict call for both requests
        assert _ids(ra) == want_a and _ids(rb) == want_b

        # a batch over max_batch items is split between calls, requests kept whole
        counting.calls.clear()
        rs = _concurrently(client, [{"texts": ["kaba", "ripo", "zuzu"]}] * 3)
        assert all(r.status_code == 200 for r in rs)
        assert all(len(c) <= 4 for c in counting.calls) and sum(map(len, counting.calls)) == 9

        # one bad request in a batch: retried alone, 400 for it, answers for its neighbours
        counting.calls.clear()
        good, bad = {"texts": ["kaba ripo"]}, {"texts": ["POISON here"]}
        rs = _concurrently(client, [good, bad, good])
        assert [r.status_code for r in rs] == [200, 400, 200]
        assert "poisoned" in rs[1].json()["error"]
        assert len(counting.calls[0]) == 3 and len(counting.calls) == 4  # batch, then 3 alone
        assert _ids(client.post("/predict", json=good)) == _ids(rs[0])


def test_create_app_refuses_bad_limits(text_model):
    for kwargs in ({"max_batch": 0}, {"max_request_bytes": 0}, {"batch_wait_ms": -1},
                   {"token": ""}):
        with pytest.raises(ValueError):
            create_app(text_model, **kwargs)


def test_cli_command_reads_the_token_from_the_environment(monkeypatch):
    import argparse

    import proteus.serve as serve_module

    calls = []
    monkeypatch.setattr(serve_module, "serve", lambda *a, **kw: calls.append((a, kw)))
    sub = argparse.ArgumentParser().add_subparsers()
    parser = add_parser(sub)
    console = Console(file=io.StringIO())
    monkeypatch.setenv("PROTEUS_TOKEN", "from-env")
    args = parser.parse_args(["m", "--max-batch", "5", "--max-request-mb", "0.5"])
    assert args.func(args, console) == 0
    (a, kw), = calls
    assert a == ("m",) and kw["token"] == "from-env" and kw["host"] == "127.0.0.1"
    assert kw["max_batch"] == 5 and kw["max_request_bytes"] == 512 * 1024
    assert kw["device"] == "auto" and kw["port"] == 8000
    args = parser.parse_args(["m", "--token", "given"])
    assert args.func(args, console) == 0 and calls[-1][1]["token"] == "given"
    monkeypatch.delenv("PROTEUS_TOKEN")
    args = parser.parse_args(["m"])
    assert args.func(args, console) == 0 and calls[-1][1]["token"] is None
    args = parser.parse_args(["m", "--max-batch", "0"])
    assert args.func(args, console) == 2 and len(calls) == 3
