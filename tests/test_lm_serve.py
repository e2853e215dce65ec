"""`edgekit serve` of a language model: the OpenAI API in a real server process, driven by the
official `openai` client (streaming and not) and by raw HTTP for what a client library would
refuse to send."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from http.client import HTTPConnection

import pytest
from serve_helpers import Server, http, metric, metric_values, poll

from edgekit.serve.lm_engine import LMEngine
from edgekit.serve.lm_worker import StopText

pytest.importorskip("onnxruntime_genai")


@pytest.fixture(scope="module")
def openai():
    """The official client library (imported here, not at collection: it takes a second)."""
    return pytest.importorskip("openai")


def greedy_text(hf_folder, variant, prompt: str, new_tokens: int) -> str:
    """transformers' own greedy continuation of `prompt` (the independent reference), its ids
    turned into text as a stream does (bytes of a character split over tokens wait for the rest)."""
    import onnxruntime_genai as og
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(hf_folder)
    model = AutoModelForCausalLM.from_pretrained(hf_folder).eval()
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, do_sample=False, max_new_tokens=new_tokens)
    stream = og.Tokenizer(og.Model(str(variant))).create_stream()
    eos = {tokenizer.eos_token_id}
    return "".join(stream.decode(int(t)) for t in out[0, ids.shape[1] :] if int(t) not in eos)


# -- the stop-string watcher (no model) ------------------------------------------------------


@pytest.mark.parametrize(
    "pieces, stops, sent, stopped",
    [
        (["Hel", "lo wor", "ld"], (), "Hello world", False),
        (["Hello", " END", " more"], ("END",), "Hello ", True),
        (["ab", "c"], ("bc",), "a", True),  # the stop string spans two pieces
        (["ab", "x"], ("bc",), "abx", False),  # a held-back prefix that did not grow into one
        (["x", "##", "#y"], ("###",), "x", True),
    ],
)
def test_stop_text_holds_back_what_could_become_a_stop(pieces, stops, sent, stopped):
    watcher, out, hit = StopText(stops), "", False
    for piece in pieces:
        text, hit = watcher.feed(piece)
        out += text
        if hit:
            break
    if not hit:
        out += watcher.flush()
    assert (out, hit) == (sent, stopped)


# -- a real server -----------------------------------------------------------------------------


MODEL = "fp32"  # the served folder's name


@pytest.fixture(scope="module")
def lm(tiny_llama_variants):
    folder = tiny_llama_variants["fp32"]
    return folder.parent / "hf", folder


@pytest.fixture(scope="module")
def server(lm, tmp_path_factory):
    _, folder = lm
    key = tmp_path_factory.mktemp("key") / "key"
    key.write_text("sesame\n")
    srv = Server(folder, "--api-key-file", key, "--threads", "2")
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server, openai):
    return openai.OpenAI(base_url=server.url + "/v1", api_key="sesame", max_retries=0)


def raw(server, path: str, body, key: str | None = "sesame"):
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    return http(server.url + path, data, headers)


@pytest.mark.slow
def test_greedy_completion_is_what_transformers_generates(lm, client):
    hf, folder = lm
    prompt = "The return statement"
    answer = client.completions.create(model=MODEL, prompt=prompt, max_tokens=24, temperature=0)
    expected = greedy_text(hf, folder, prompt, 24)
    assert answer.choices[0].text == expected
    tokens = answer.usage.completion_tokens
    assert answer.choices[0].finish_reason == ("length" if tokens == 24 else "stop")
    assert answer.usage.prompt_tokens > 0
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + tokens


@pytest.mark.slow
def test_chat_stream_equals_the_whole_answer(client):
    ask = dict(
        model=MODEL,
        messages=[{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
        max_tokens=30,
        temperature=0.8,
        top_p=0.9,
        seed=7,
    )
    whole = client.chat.completions.create(**ask)
    chunks = list(
        client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True})
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finish = [
        c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason
    ]
    assert finish == [whole.choices[0].finish_reason]
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    # the same seed, the same answer; another seed, (almost surely) another
    again = client.chat.completions.create(**ask)
    assert again.choices[0].message.content == whole.choices[0].message.content


@pytest.mark.slow
def test_the_stream_is_server_sent_events_ending_with_done(server):
    status, headers, body = raw(
        server, "/v1/completions", {"prompt": "if x", "max_tokens": 5, "stream": True}
    )
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    events = [e for e in body.decode().split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    last = json.loads(events[-2].removeprefix("data: "))
    assert last["choices"][0]["finish_reason"] in ("stop", "length")


@pytest.mark.slow
def test_stop_strings_end_the_answer(lm, client):
    hf, _ = lm
    free = client.completions.create(model=MODEL, prompt="class", max_tokens=24, temperature=0)
    text = free.choices[0].text
    stop = text[len(text) // 2 : len(text) // 2 + 2]
    assert stop.strip(), text
    cut = client.completions.create(
        model=MODEL, prompt="class", max_tokens=24, temperature=0, stop=[stop]
    )
    assert cut.choices[0].text == text[: text.find(stop)]
    assert cut.choices[0].finish_reason == "stop"


BAD = [
    ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ({"messages": [{"role": "user", "content": 5}]}, 400, "messages[0].content"),
    ({"messages": []}, 400, "messages"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 0}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9}, 400, "max_tokens"),
    ({"messages": [{"role": "user", "content": "hi"}], "temperature": -1}, 400, "temperature"),
    ({"messages": [{"role": "user", "content": "hi"}], "top_p": 0}, 400, "top_p"),
    ({"messages": [{"role": "user", "content": "hi"}], "n": 3}, 400, "n"),
    ({"messages": [{"role": "user", "content": "hi"}], "stop": [1]}, 400, "stop"),
    ({"messages": [{"role": "user", "content": "hi"}], "model": "gpt-9"}, 404, "model"),
    ({"messages": [{"role": "user", "content": "x " * 2000}]}, 400, "messages"),
]


@pytest.mark.slow
@pytest.mark.parametrize("body, status, param", BAD, ids=[b[2] + str(i) for i, b in enumerate(BAD)])
def test_bad_requests_get_openai_errors(server, body, status, param):
    got, _, answer = raw(server, "/v1/chat/completions", body)
    error = json.loads(answer)["error"]
    assert got == status
    assert error["param"] == param and error["message"] and error["type"]


@pytest.mark.slow
def test_bad_bodies_and_keys(server, client, openai):
    nan = b'{"prompt": "hi", "temperature": NaN}'
    assert raw(server, "/v1/completions", nan)[0] == 400
    assert raw(server, "/v1/completions", b"{not json")[0] == 400
    assert raw(server, "/v1/completions", {"prompt": ["a", "b"]})[0] == 400
    status, _, body = raw(server, "/v1/completions", {"prompt": "hi"}, key="wrong")
    assert status == 401 and json.loads(body)["error"]["type"] == "authentication_error"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.url + "/v1", api_key="no", max_retries=0).models.list()
    with pytest.raises(openai.BadRequestError, match="context length"):
        client.completions.create(model=MODEL, prompt="word " * 1500, max_tokens=4)
    assert [m.id for m in client.models.list().data] == [MODEL]  # still serving


@pytest.mark.slow
def test_a_client_that_goes_away_stops_its_generation(server, client):
    def generated() -> float:
        _, _, text = http(server.url + "/metrics", headers={"Authorization": "Bearer sesame"})
        return metric(
            metric_values(text.decode()), "edgekit_lm_generated_tokens_total", model=MODEL
        )

    before = generated()
    host, port = server.hostport.rsplit(":", 1)
    conn = HTTPConnection(host, int(port), timeout=30)
    body = json.dumps({"prompt": "def", "max_tokens": 250, "temperature": 1.0, "stream": True})
    conn.request(
        "POST",
        "/v1/completions",
        body,
        {"Content-Type": "application/json", "Authorization": "Bearer sesame"},
    )
    response = conn.getresponse()
    response.fp.readline()  # the first event: the generation is running
    conn.sock.close()
    conn.close()
    time.sleep(1.0)
    settled = generated()
    time.sleep(0.5)
    assert generated() == settled, "the generation went on after its client left"
    assert settled - before < 250
    answer = client.completions.create(model=MODEL, prompt="a", max_tokens=3, temperature=0)
    assert answer.usage.completion_tokens <= 3  # still serving


def on_engine(folder, body):
    """body(engine) run on an event loop with the engine the server runs (one thread), closed
    after; what body returns."""

    async def run():
        engine = LMEngine(folder, threads=1)
        try:
            return await body(engine)
        finally:
            engine.close()

    return asyncio.run(run())


@pytest.mark.slow
def test_concurrent_generations_go_side_by_side(lm):
    """A short request sent just after a long one ends first."""
    order = []

    async def drain(tag, job):
        while (event := await job.events.get())[0] in ("accepted", "started", "text"):
            pass
        order.append((tag, event))

    async def both(engine):
        ask = {"prompt": "while", "temperature": 0.7, "seed": 1}
        long = engine.submit({**ask, "max_tokens": 240})
        short = engine.submit({**ask, "max_tokens": 2})
        await asyncio.gather(drain("long", long), drain("short", short))
        return long.completion_tokens

    long_tokens = on_engine(lm[1], both)
    assert long_tokens > 2, "the long generation ended at once: nothing to overtake"
    assert order[0] == ("short", ("done", "length")), order


@pytest.mark.slow
def test_a_worker_that_dies_ends_its_requests_with_an_error(lm):
    """Killed mid-answer: the request running ends with an error, and so does every later one."""

    async def kill_it(engine):
        job = engine.submit({"prompt": "while", "max_tokens": 200, "temperature": 0})
        while (await job.events.get())[0] != "text":
            pass
        engine.proc.kill()
        while (event := await job.events.get())[0] == "text":
            pass
        later = engine.submit({"prompt": "while", "max_tokens": 2})
        return event, await asyncio.wait_for(later.events.get(), 10)

    for kind, message in on_engine(lm[1], kill_it):
        assert kind == "error" and "worker process ended" in message, (kind, message)


@pytest.mark.slow
def test_a_dead_worker_fails_the_health_probe_and_requests(lm):
    import psutil

    _, folder = lm
    srv = Server(folder, "--threads", "1")
    try:
        assert http(srv.url + "/health")[0] == 200
        (worker,) = psutil.Process(srv.proc.pid).children()
        worker.kill()
        status, _, body = poll(lambda: http(srv.url + "/health"), lambda r: r[0] != 200, 10)
        assert status == 503 and b"worker process ended" in body
        ask = {"model": MODEL, "prompt": "for", "max_tokens": 2}
        status, _, body = http(srv.url + "/v1/completions", ask)
        assert status == 500 and "restart the server" in json.loads(body)["error"]["message"]
    finally:
        srv.stop()


@pytest.mark.slow
def test_concurrent_clients_get_their_own_answers(client):
    ask = dict(model=MODEL, prompt="while", max_tokens=40, temperature=0.9)
    alone = {seed: client.completions.create(**ask, seed=seed).choices[0].text for seed in (1, 2)}
    together = {}

    def one(seed):
        together[seed] = client.completions.create(**ask, seed=seed).choices[0].text

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert together == alone


@pytest.mark.slow
def test_metrics_and_sigterm(lm, openai):
    _, folder = lm
    srv = Server(folder, "--threads", "1")
    try:
        plain = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        plain.completions.create(model=MODEL, prompt="import", max_tokens=8, temperature=0)
        _, _, text = http(srv.url + "/metrics")
        values = metric_values(text.decode())
        assert metric(values, "edgekit_lm_generated_tokens_total", model=MODEL) >= 1
        assert metric(values, "edgekit_lm_prompt_tokens_total", model=MODEL) >= 1
        assert metric(values, "edgekit_lm_time_to_first_token_seconds_count", model=MODEL) == 1
        assert metric(values, "edgekit_requests_total", model=MODEL, outcome="success") == 1
        # SIGTERM while a stream is running: the process ends cleanly
        stream = plain.completions.create(model=MODEL, prompt="for", max_tokens=240, stream=True)
        next(iter(stream))
        threading.Timer(0.2, srv.proc.terminate).start()
        try:
            for _ in stream:
                pass
        except openai.APIError:
            pass
        assert srv.proc.wait(timeout=40) == 0
        poll(lambda: srv.proc.poll(), lambda code: code is not None, timeout=5)
    finally:
        srv.stop()


@pytest.mark.slow
def test_an_optimize_folder_serves_its_pick_with_a_live_drift_shadow(tiny_llama_optimized, openai):
    out, _ = tiny_llama_optimized
    report = json.loads((out / "report.json").read_text())
    pick = report["recommendation"]["variant"]
    srv = Server(out, "--shadow", "fp32", "--shadow-rate", "1", "--threads", "1")
    try:
        plain = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        assert [m.id for m in plain.models.list().data] == [pick]
        for seed in range(3):
            plain.completions.create(
                model=pick, prompt="The cat", max_tokens=20, temperature=1.0, seed=seed
            )
        summary = poll(
            lambda: json.loads(http(srv.url + "/edgekit/monitor")[2])[pick]["drift"],
            lambda drift: drift.get("compared", 0) >= 1,
            timeout=30,
        )
        assert summary["shadow"] == "fp32" and summary["compared"] >= 1
        assert summary["kld_mean"] >= 0 and 0 <= summary["same_top1"] <= 1
        assert summary["budget"] == "kld<=0.05"
    finally:
        srv.stop()


@pytest.mark.slow
def test_the_readme_client_snippet_streams_an_answer(lm):
    import re
    import subprocess
    import sys

    from helpers import REPO

    readme = (REPO / "README.md").read_text()
    section = readme[readme.index("### Serve it: the OpenAI API") :]
    snippet = re.search(r"```python\n(.*?)```", section, re.S)[1]
    _, folder = lm
    srv = Server(folder, "--threads", "1")
    try:
        code = snippet.replace("http://127.0.0.1:8000", srv.url)
        done = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip()  # the streamed answer
    finally:
        srv.stop()


@pytest.mark.slow
def test_without_onnxruntime_genai_the_server_says_what_to_install(lm, tmp_path):
    from helpers import import_blocker, run_edgekit

    _, folder = lm
    env = {"PYTHONPATH": import_blocker(tmp_path / "blocked", ("onnxruntime_genai",))}
    done = run_edgekit("serve", folder, "--port", "0", env=env, timeout=120)
    assert done.returncode == 2
    assert "pip install onnxruntime-genai" in done.stderr
    assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_broken_lm_folder_is_a_clear_error(lm, tmp_path):
    import shutil

    from helpers import run_edgekit

    _, folder = lm
    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    done = run_edgekit("serve", broken, "--port", "0", timeout=120)
    assert done.returncode == 2
    assert "Cannot load the language model" in done.stderr
    assert "Traceback" not in done.stderr
