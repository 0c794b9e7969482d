"""A bounded loopback load test: 300 requests from 24 concurrent clients over the base and
three adapters (a third streaming), one adapter unloaded and reloaded midway, 5% of the
clients disconnecting mid-stream. Asserts that no request is lost, that every greedy text
equals the same request run alone through ``Engine.generate``, and that nothing leaks (KV
blocks, running requests); prints requests/s and p50/p99 latency."""
from __future__ import annotations

import asyncio
import json
import statistics
import time

import httpx
import pytest

from frod_rt.server import ServerConfig, ServerThread
from server_toy import engine, make_toy

N_REQUESTS = 300
N_CLIENTS = 24
MODELS = ["toybase", "a0", "a1", "a2"]
SWAPPED = "a2"
WORDS = "the quick brown fox jumps over lazy dog a journey of thousand miles begins".split()


def _jobs():
    prompts = [" ".join(WORDS[(i * 3 + j) % len(WORDS)] for j in range(2 + i % 5))
               for i in range(8)]
    jobs = []
    for i in range(N_REQUESTS):
        jobs.append({"i": i, "prompt": prompts[i % len(prompts)],
                     "model": MODELS[(i // 2) % len(MODELS)], "max_tokens": 4 + 4 * (i % 2),
                     "stream": i % 3 == 0, "disconnect": i % 20 == 7})
    return jobs


async def _one(client, job):
    body = {"model": job["model"], "prompt": job["prompt"], "max_tokens": job["max_tokens"],
            "temperature": 0}
    if job["disconnect"]:                 # open a long stream and drop it after one event
        body.update(stream=True, max_tokens=60, ignore_eos=True)
        async with client.stream("POST", "/v1/completions", json=body) as r:
            async for _ in r.aiter_lines():
                break
        return None
    if not job["stream"]:
        r = await client.post("/v1/completions", json=body)
        return r.status_code, (r.json()["choices"][0]["text"] if r.status_code == 200 else r.text)
    text = ""
    async with client.stream("POST", "/v1/completions", json=dict(body, stream=True)) as r:
        if r.status_code != 200:
            return r.status_code, await r.aread()
        async for line in r.aiter_lines():
            if line.startswith("data: ") and line != "data: [DONE]":
                ev = json.loads(line[6:])
                if "error" in ev:
                    return 503, ev
                text += ev["choices"][0]["text"]
    return 200, text


@pytest.mark.slow
def test_loopback_load(tmp_path):
    toy = make_toy(tmp_path)
    jobs = _jobs()
    ref_eng = engine(toy, device_adapter_capacity=4)
    refs = {}
    for j in jobs:
        key = (j["prompt"], j["model"], j["max_tokens"])
        if not j["disconnect"] and key not in refs:
            ad = None if j["model"] == "toybase" else j["model"]
            refs[key] = ref_eng.generate(j["prompt"], adapter=ad, max_tokens=j["max_tokens"])[0].text
    ref_eng.close()

    eng = engine(toy, device_adapter_capacity=2, max_num_seqs=16, max_waiting=512)
    cfg = ServerConfig(api_key=None, allow_adapter_loading=toy["adapter_root"])
    results: dict[int, tuple] = {}
    latencies: list[float] = []
    retries = {"n": 0}
    with ServerThread(eng, config=cfg) as srv:
        async def main():
            queue: asyncio.Queue = asyncio.Queue()
            for j in jobs:
                queue.put_nowait(j)
            done = {"n": 0}
            swapped = asyncio.Event()

            async def swap(client):
                r = await client.delete(f"/v1/adapters/{SWAPPED}")
                assert r.status_code == 200, r.text
                await asyncio.sleep(0.05)
                r = await client.post("/v1/adapters", json={"name": SWAPPED, "path": SWAPPED})
                assert r.status_code == 201, r.text
                swapped.set()

            async def worker():
                async with httpx.AsyncClient(base_url=srv.url, timeout=120) as client:
                    while not queue.empty():
                        job = queue.get_nowait()
                        t0 = time.perf_counter()
                        for attempt in range(50):
                            res = await _one(client, job)
                            # during the swap the adapter is briefly unknown (404) or its
                            # queued requests are aborted (503): a client retries those
                            if res is not None and res[0] in (404, 503) and \
                                    job["model"] == SWAPPED:
                                retries["n"] += 1
                                await asyncio.sleep(0.05)
                                continue
                            break
                        if res is not None:
                            latencies.append(time.perf_counter() - t0)
                        results[job["i"]] = res
                        done["n"] += 1
                        if done["n"] == N_REQUESTS // 2:
                            await swap(client)

            t0 = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(N_CLIENTS)))
            assert swapped.is_set()
            return time.perf_counter() - t0

        wall = asyncio.run(main())
        deadline = time.monotonic() + 10
        while eng.stats()["running"] or eng.stats()["queue_depth"]:
            assert time.monotonic() < deadline, "requests left running after the clients left"
            time.sleep(0.05)
        stats = eng.stats()
        loop = srv.app.state.server.loop
        in_flight = loop.in_flight()
        aborts = loop.aborts_total
        names = eng.adapters()
    eng.close()

    served = [j for j in jobs if not j["disconnect"]]
    lost = [j["i"] for j in served if j["i"] not in results or results[j["i"]][0] != 200]
    wrong = [j["i"] for j in served if j["i"] not in lost and
             results[j["i"]][1] != refs[(j["prompt"], j["model"], j["max_tokens"])]]
    lat = sorted(latencies)
    p50 = statistics.median(lat)
    p99 = lat[min(len(lat) - 1, int(round(0.99 * (len(lat) - 1))))]
    print(f"\nloopback load: {len(jobs)} requests ({len(served)} answered, "
          f"{len(jobs) - len(served)} disconnects), {N_CLIENTS} clients, wall {wall:.2f} s, "
          f"{len(jobs) / wall:.1f} requests/s, latency p50 {p50 * 1000:.0f} ms, "
          f"p99 {p99 * 1000:.0f} ms, {retries['n']} retries during the swap, "
          f"{aborts} aborts")
    assert lost == [], f"lost requests: {lost[:10]}"
    assert wrong == [], f"wrong texts: {wrong[:10]}"
    assert aborts >= 1 and in_flight == 0
    assert stats["kv_blocks_used"] == 0 and stats["running"] == 0
    assert sorted(names) == ["a0", "a1", "a2"]
