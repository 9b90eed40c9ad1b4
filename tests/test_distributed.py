"""Beyond one process, against the model in one process: the layer cut, pipeline stages in this process, and on
a two-node Ray cluster on this machine stages as actors (greedy tokens, logits, batched decode, a stage killed
and rebuilt, tensors shipped to a node that does not see the file, the CLI flags) and replicas on Ray Serve
(the openai client, prefix-aware routing)."""
from __future__ import annotations

import itertools
import socket

import numpy as np
import pytest

from conftest import F32_CACHE
from pyggml.backends.registry import create
from pyggml.model.runtime.engine import Engine
from pyggml.model.model import Model
from pyggml.model.runtime.sampling import SamplingParams
from pyggml.model.runtime.stages import balance, stage_tensor_names, step_bytes

from synthetic_llama import TinyLlama, make_weights, reference_logits, write_gguf

TOL = 1e-5  # stages against one process, F32 products on both sides
PROMPT = [1, 5, 9, 3, 7, 2, 11]
SHARED = list(range(3, 21))  # 18 tokens: more than a block (16), so two prompts share it and copy on write
PROMPTS = [PROMPT, SHARED + [4, 8], SHARED + [9], [2, 4, 6]]


def best_max(costs: list[int], n: int) -> int:
    """The smallest largest stage total over every contiguous cut (brute force)."""
    return min(max(sum(costs[a:b]) for a, b in zip((0,) + cut, cut + (len(costs),)))
               for cut in itertools.combinations(range(1, len(costs)), n - 1))


@pytest.mark.parametrize("seed", range(6))
def test_balance_cuts_contiguous_ranges_near_the_best(seed):
    rng = np.random.default_rng(seed)
    costs = rng.integers(1, 100, int(rng.integers(3, 9))).tolist()
    for n in range(1, len(costs) + 1):
        ranges = balance(costs, n)
        assert [i for r in ranges for i in r] == list(range(len(costs))) and all(ranges)
        assert max(sum(costs[i] for i in r) for r in ranges) <= best_max(costs, n) + max(costs)
    assert balance([5] * 8, 4) == [range(0, 2), range(2, 4), range(4, 6), range(6, 8)]
    with pytest.raises(Exception, match="stages must be between 1 and the model's"):
        balance(costs, len(costs) + 1)


def test_head_and_embedding_go_to_the_end_stages(tmp_path):
    cfg = TinyLlama(n_layer=4)
    model = Model(write_gguf(tmp_path / "t.gguf", cfg, make_weights(cfg)), backend=create("numpy"), **F32_CACHE)
    names, info = list(model.gguf.tensors), model.gguf.tensors
    first, last = stage_tensor_names(names, range(0, 2), 4), stage_tensor_names(names, range(2, 4), 4)
    assert "token_embd.weight" in first and "output_norm.weight" not in first
    assert {"token_embd.weight", "output_norm.weight"} <= set(last)  # the head is tied to the embedding
    assert not {n for n in first if n.startswith("blk.")} & set(last)
    blk0 = sum(info[n].nbytes for n in names if n.startswith("blk.0."))
    assert step_bytes(info, 4)[0] == blk0
    assert step_bytes(info, 4)[3] == blk0 + info["output_norm.weight"].nbytes + info["token_embd.weight"].nbytes


def greedy_steps(model: Model, prompt: list[int], n: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens and the logits of each step, the prompt prefilled in one step."""
    model.reset()
    rows, tokens = [model.eval(prompt)[-1]], []
    for _ in range(n):
        tokens.append(int(np.argmax(rows[-1])))
        rows.append(model.eval([tokens[-1]])[-1])
    return tokens, np.stack(rows)


@pytest.fixture(scope="module")
def tiny_path(tmp_path_factory):
    cfg = TinyLlama(n_layer=4)
    return write_gguf(tmp_path_factory.mktemp("stages") / "tiny.gguf", cfg, make_weights(cfg), n_ctx=1024), cfg


@pytest.fixture(scope="module")
def local(tiny_path):
    """The model in one process (the reference of every staged run)."""
    return Model(tiny_path[0], backend=create("numpy"), **F32_CACHE)


def test_stages_in_process_match_one_process(tiny_path, local):
    staged = Model(tiny_path[0], backend=create("numpy"), **F32_CACHE, stages=3)
    costs = step_bytes(staged.gguf.tensors, 4)
    assert max(sum(costs[i] for i in r) for r in staged.pipeline.ranges) == best_max(costs, 3)
    tokens, logits = greedy_steps(staged, PROMPT, 12)
    ref_tokens, ref_logits = greedy_steps(local, PROMPT, 12)
    assert tokens == ref_tokens
    np.testing.assert_allclose(logits, ref_logits, atol=TOL, rtol=0)
    f64 = reference_logits(tiny_path[1], make_weights(tiny_path[1]), np.array(PROMPT + tokens))
    np.testing.assert_allclose(logits, f64[len(PROMPT) - 1:], atol=1e-3, rtol=0)


def test_sliding_window_stages_in_process(tmp_path):
    """gemma2's windowed and full layers in different stages, past the window."""
    cfg = TinyLlama(n_layer=4, arch="gemma2", sliding_window=6, attn_softcap=50.0, final_softcap=30.0)
    path = write_gguf(tmp_path / "g2.gguf", cfg, make_weights(cfg))
    staged, one = (Model(path, backend=create("numpy"), **F32_CACHE, stages=s) for s in (2, 1))
    tokens, logits = greedy_steps(staged, PROMPT, 10)
    ref_tokens, _ = greedy_steps(one, PROMPT, 10)
    assert tokens == ref_tokens
    f64 = reference_logits(cfg, make_weights(cfg), np.array(PROMPT + tokens))
    np.testing.assert_allclose(logits, f64[len(PROMPT) - 1:], atol=1e-3, rtol=0)


def test_stages_refuse_what_they_cannot_do(tiny_path):
    staged = Model(tiny_path[0], backend=create("numpy"), **F32_CACHE, stages=2)
    with pytest.raises(Exception, match="all_logits is not available"):
        staged.eval(PROMPT, all_logits=True)
    with pytest.raises(Exception, match="kv_cache=False is not available"):
        staged.generate(PROMPT, max_tokens=2, kv_cache=False)


# --- on a Ray cluster of two nodes on this machine -------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    """Two Ray nodes of two (logical) CPUs each, room for two pipelines, this process their driver; stopped
    after the module."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False})
    c.add_node(num_cpus=2)
    ray.init(address=c.address, log_to_driver=False)
    yield c
    ray.shutdown()
    c.shutdown()


@pytest.fixture(scope="module")
def on_ray(cluster, tiny_path):
    """The tiny model as two stages on the cluster (NumPy backend: F32 products, nothing to compile)."""
    model = Model(tiny_path[0], backend=create("numpy"), **F32_CACHE, stages=2, ray=cluster.address)
    yield model
    model.close()


def test_two_stages_on_two_nodes_match_one_process(on_ray, local):
    import ray
    nodes = ray.util.placement_group_table(on_ray.pipeline.group)["bundles_to_node_id"]
    assert on_ray.pipeline.strategy == "STRICT_SPREAD" and len(set(nodes.values())) == 2
    assert on_ray.pipeline.calls == "compiled graph"  # not a silent fallback to plain calls
    tokens, logits = greedy_steps(on_ray, PROMPT, 12)
    ref_tokens, ref_logits = greedy_steps(local, PROMPT, 12)
    assert tokens == ref_tokens
    np.testing.assert_allclose(logits, ref_logits, atol=TOL, rtol=0)
    assert on_ray.generate(PROMPT, max_tokens=12, temperature=0).tokens == ref_tokens


def test_batched_decode_over_stages_equals_one_at_a_time(on_ray, local):
    together = on_ray.generate_batch(PROMPTS, max_tokens=10, temperature=0)
    alone = [local.generate(p, max_tokens=10, temperature=0).tokens for p in PROMPTS]
    assert [c.tokens for c in together] == alone
    assert [on_ray.generate(p, max_tokens=10, temperature=0).tokens for p in PROMPTS] == alone


def wait_dead(actor) -> None:
    """Until Ray reports a killed actor gone: ray.kill returns before the process exits, and a compiled graph's
    step, which asks nothing of Ray's control plane, may still reach it."""
    import ray
    while True:
        try:
            ray.get(actor.needs_tensors.remote())
        except ray.exceptions.RayActorError:
            return


def test_a_killed_stage_fails_its_requests_and_is_rebuilt(on_ray, local):
    import ray
    engine = Engine(on_ray, n_parallel=2, n_ctx=64)
    greedy = SamplingParams(temperature=0)
    running = [engine.submit(p, 20, greedy) for p in PROMPTS[:2]]
    for _ in range(3):
        engine.step()
    ray.kill(on_ray.pipeline.workers[1])
    wait_dead(on_ray.pipeline.workers[1])
    engine.step()
    assert [r.finish_reason for r in running] == ["error", "error"]
    assert all("pipeline stage 1 (layers 2-3) died" in r.error for r in running)
    assert engine.cache.n_used == 0
    after = engine.submit(PROMPTS[2], 8, greedy)
    engine.run_until_idle()
    assert after.tokens == local.generate(PROMPTS[2], max_tokens=8, temperature=0).tokens
    # the model's own sequence was written before the rebuild: its next prompt is evaluated again in full
    assert on_ray.generate(PROMPT, max_tokens=6, temperature=0).tokens == \
        local.generate(PROMPT, max_tokens=6, temperature=0).tokens


def test_tensors_shipped_where_a_node_does_not_see_the_file(cluster, tiny_path, local):
    """Also the plain actor calls, the path where a compiled graph does not compile."""
    from pyggml.model.runtime.ray_stages import RayPipeline
    model = Model(tiny_path[0], backend=create("numpy"), **F32_CACHE)
    model.pipeline = RayPipeline(cluster.address, model.gguf, model.hparams, [range(0, 3), range(3, 4)],
                                 model.backend, force_ship=True, compiled=False)
    try:
        model.context = model.make_context(64)
        assert greedy_steps(model, PROMPT, 6)[0] == greedy_steps(local, PROMPT, 6)[0]
    finally:
        model.close()


def test_cli_generate_over_stages(cluster, tiny_path, local, capsys):
    from pyggml.cli import main
    assert main(["generate", str(tiny_path[0]), "abc", "-n", "6", "--temp", "0", "--backend", "numpy",
                 "--ray", cluster.address, "--stages", "2"]) == 0
    expected = local.generate("abc", max_tokens=6, temperature=0).text
    assert capsys.readouterr().out == "abc" + expected + "\n"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_replicas_answer_the_openai_client(cluster, tiny_path, local):
    """Two replicas on Ray Serve behind one ingress: answers as the model gives them, streamed too, and a
    shared prompt prefix always met by the same replica."""
    from openai import OpenAI
    from ray import serve

    from pyggml.server.replicas import PREFIX_CHARS, REPLICA_HEADER, deploy
    port = free_port()
    deploy(str(tiny_path[0]), "tiny", 2, "127.0.0.1", port, {"backend": ["numpy"], "n_ctx": 512, **F32_CACHE})
    try:
        client = OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="none", max_retries=0)
        expected = local.generate("abc", max_tokens=6, temperature=0).text
        raw = client.completions.with_raw_response.create(model="tiny", prompt="abc", max_tokens=6, temperature=0)
        assert raw.parse().choices[0].text == expected
        stream = client.completions.create(model="tiny", prompt="abc", max_tokens=6, temperature=0, stream=True)
        assert "".join(chunk.choices[0].text for chunk in stream) == expected
        prefix = "ab" * (PREFIX_CHARS // 2)
        seen = {client.completions.with_raw_response.create(model="tiny", prompt=prefix + tail, max_tokens=1)
                .headers[REPLICA_HEADER] for tail in ("c", "dd", "eee")}
        assert len(seen) == 1
        short = {client.completions.with_raw_response.create(model="tiny", prompt=p, max_tokens=1)
                 .headers[REPLICA_HEADER] for p in ("a", "b", "c", "d", "e", "f", "g", "h")}
        assert short == {"0", "1"}  # different prompts spread over both
        assert client.models.list().data[0].id == "tiny"
    finally:
        serve.shutdown()
