"""LM engines served on a real Triton (python backend, decoupled) and streamed over real gRPC.

One module-scoped server serves two versions of one tiny trained llama: `lm` (the bundle as built: greedy output
reproduces a training sentence, then EOS) and `long` (the same weights with an EOS id the model never emits, so every
generation runs to max_tokens: long streams to overlap and to cancel). Served greedy output equals the in-process
`generate` over the same bundle; pieces stream in order; two streams share the engine; a cancelled stream frees its
sequence; bad requests are INVALID_ARGUMENT and the server keeps serving; `engineforge generate --json` end to end.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from engineforge.errors import InferenceRequestError, ModelNotReadyError, ServerError, ServerUnavailableError
from engineforge.lm.bundle import open_lm_bundle
from engineforge.lm.engine import SamplingParams
from engineforge.lm.generation import generate
from engineforge.serve.client import EngineforgeClient
from engineforge.serve.lm_client import collect, stream_generate
from engineforge.serve.lm_publish import publish_lm_bundle
from engineforge.serve.lm_requests import encode_prompt
from engineforge.serve.server import TritonServer, find_triton
from tests.helpers.lm_bundle import make_lm_bundle
from tests.helpers.tiny_lm import LM_PROMPTS, LM_TEXTS, make_tiny_lm

pytestmark = pytest.mark.triton

NEVER_EMITTED = 1_000_000  # an id outside the vocabulary: the model can never emit it
LONG = 240  # tokens of a long stream (the tiny model has 256 positions)
PROMPT_LIMIT = 24  # max_prompt_tokens `lm` is published with


class Served:
    def __init__(self, server: TritonServer, bundles: dict[str, Path], log: Path) -> None:
        self.server, self.bundles, self.log = server, bundles, log
        self._local: dict[str, tuple] = {}

    def client(self, **options: object) -> EngineforgeClient:
        return EngineforgeClient(self.server.grpc_url, **options)  # type: ignore[arg-type]

    def local(self, model: str, prompt: str, max_tokens: int) -> tuple[str, list[int], str]:
        """(text, token ids, finish reason) of the in-process generation over the model's bundle."""
        if model not in self._local:
            _, engine, tokenizer = open_lm_bundle(self.bundles[model], threads=1)
            self._local[model] = (engine, tokenizer)
        engine, tokenizer = self._local[model]
        pieces = list(generate(engine, tokenizer, encode_prompt(tokenizer, prompt), SamplingParams(max_tokens)))
        return "".join(p.text for p in pieces), [t for p in pieces for t in p.token_ids], pieces[-1].finish_reason


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    try:
        find_triton()
    except ServerError as exc:
        pytest.skip(str(exc))
    root = tmp_path_factory.mktemp("lm_serving")
    hf_dir = make_tiny_lm(root / "tiny-llama", "llama")
    bundles = {"lm": make_lm_bundle(root / "lm", hf_dir),
               "long": make_lm_bundle(root / "long", hf_dir, eos_token_ids=[NEVER_EMITTED]),
               "ort": make_lm_bundle(root / "ort", hf_dir, runtime="onnxruntime"),
               "ov": make_lm_bundle(root / "ov", hf_dir, runtime="openvino-genai")}
    repo = root / "repo"
    publish_lm_bundle(bundles["lm"], repo, "lm", max_prompt_tokens=PROMPT_LIMIT)
    publish_lm_bundle(bundles["ort"], repo, "ort")
    publish_lm_bundle(bundles["ov"], repo, "ov")
    publish_lm_bundle(bundles["long"], repo, "long", max_sequences=4)
    log = root / "tritonserver.log"
    with TritonServer(repo, log_file=log, startup_timeout_s=180) as server:
        yield Served(server, bundles, log)


@pytest.fixture
def client(served: Served) -> Iterator[EngineforgeClient]:
    with served.client(timeout_s=20, retry_s=2) as engineforge:
        yield engineforge


def test_served_greedy_equals_in_process(served: Served, client: EngineforgeClient) -> None:
    for prompt in LM_PROMPTS[:4]:
        result = collect(prompt, client.generate(prompt, model="lm", max_tokens=60))
        text, ids, reason = served.local("lm", prompt, 60)
        assert (result.text, result.token_ids, result.finish_reason) == (text, ids, reason), prompt
        assert prompt + result.text in LM_TEXTS and reason == "eos"  # the tiny model says its training sentence


@pytest.mark.parametrize("model", ["ort", "ov"])
def test_concurrent_streams_on_the_continuous_batching_runtime_each_equal_in_process(served: Served,
                                                                                    model: str) -> None:
    """The `onnxruntime` and `openvino-genai` runtimes decode the overlapping requests together (rows of different
    lengths in one call); each still gets exactly its in-process answer."""
    prompts = LM_PROMPTS[:4]
    results: dict[str, object] = {}

    def ask(prompt: str) -> None:
        with served.client(timeout_s=30) as own:
            results[prompt] = collect(prompt, own.generate(prompt, model=model, max_tokens=60))

    threads = [threading.Thread(target=ask, args=(prompt,)) for prompt in prompts]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for prompt in prompts:
        result = results[prompt]
        assert (result.text, result.token_ids, result.finish_reason) == served.local(model, prompt, 60), prompt
        assert result.text == served.local("lm", prompt, 60)[0]  # and the torch engine's answer


def test_token_id_prompt_equals_text_prompt(served: Served, client: EngineforgeClient) -> None:
    _, tokenizer = open_lm_bundle(served.bundles["lm"], threads=1)[1:]
    by_text = collect("you can cancel", client.generate("you can cancel", model="lm"))
    ids = encode_prompt(tokenizer, "you can cancel")
    by_ids = collect("", client.generate(ids, model="lm"))
    assert by_ids.token_ids == by_text.token_ids and by_ids.text == by_text.text and by_ids.prompt_tokens == len(ids)


def test_pieces_stream_in_order_and_the_last_one_finishes(client: EngineforgeClient) -> None:
    pieces = list(client.generate("delivery to most", model="long", max_tokens=50))
    assert len(pieces) >= 10  # streamed: a response per decoded token, not one at the end
    assert all(p.finish_reason is None for p in pieces[:-1])
    last = pieces[-1]
    assert last.finish_reason == "length" and last.completion_tokens == 50 and last.prompt_tokens > 0
    assert sum(len(p.token_ids) for p in pieces) == 50
    arrivals = [p.since_start_s for p in pieces]
    assert arrivals == sorted(arrivals) and arrivals[-1] > arrivals[0]
    assert "".join(p.text for p in pieces) == collect("", iter(pieces)).text


def test_stop_string_and_seeded_sampling(client: EngineforgeClient) -> None:
    stopped = collect("refunds are", client.generate("refunds are", model="lm", stop=["five"]))
    assert stopped.text == " processed within " and stopped.finish_reason == "stop"
    sampled = [collect("x", client.generate("our support team", model="lm", temperature=1.5, top_k=20, seed=7,
                                            max_tokens=20)) for _ in range(2)]
    assert sampled[0].token_ids == sampled[1].token_ids and sampled[0].completion_tokens >= 1


def test_overlapping_streams_share_the_engine(served: Served, client: EngineforgeClient) -> None:
    first: list = []
    first_started = threading.Event()

    def run_first() -> None:
        for piece in served.client(timeout_s=20).generate("refunds are", model="long", max_tokens=LONG):
            first.append((time.perf_counter(), piece))
            if len(first) == 3:
                first_started.set()

    thread = threading.Thread(target=run_first)
    thread.start()
    assert first_started.wait(30), "the first stream sent no pieces"
    second = list(client.generate("we are sorry", model="long", max_tokens=30))
    thread.join(60)
    assert first[-1][1].finish_reason == "length" and second[-1].finish_reason == "length"
    first_done = first[-1][0]
    assert second[0].time_s < first_done, "the second stream waited for the first to finish"
    for prompt, pieces, tokens in (("refunds are", [p for _, p in first], LONG), ("we are sorry", second, 30)):
        text, ids, _ = served.local("long", prompt, tokens)
        assert [t for p in pieces for t in p.token_ids] == ids and "".join(p.text for p in pieces) == text


def _cancel_lines(log: Path) -> list[tuple[int, int]]:
    found = re.findall(r"cancelled by its client after (\d+) generated tokens; sequence freed, (\d+) active",
                       log.read_text(errors="replace"))
    return [(int(a), int(b)) for a, b in found]


def test_a_cancelled_stream_frees_its_sequence(served: Served, client: EngineforgeClient) -> None:
    before = len(_cancel_lines(served.log))
    stream = client.generate("to reset your", model="long", max_tokens=LONG)
    got = [next(stream) for _ in range(3)]
    stream.close()  # the client stops iterating: the stream is cancelled
    assert all(p.finish_reason is None for p in got)
    deadline = time.monotonic() + 15
    while len(_cancel_lines(served.log)) == before and time.monotonic() < deadline:
        time.sleep(0.1)
    lines = _cancel_lines(served.log)[before:]
    assert lines, "the server never noticed the cancellation"
    generated, active = lines[-1]
    assert generated < LONG and active == 0  # the engine stopped decoding it; nothing left running
    after = collect("x", client.generate("to reset your", model="long", max_tokens=5))
    assert after.finish_reason == "length" and after.completion_tokens == 5


def _raw_stream_error(url: str, model: str, inputs: dict[str, np.ndarray]) -> Exception | None:
    """The error a plain tritonclient stream gets (checks the status code, not just engineforge's wording)."""
    return _raw_stream(url, model, inputs)[1]


BAD = [
    ({"MAX_TOKENS": np.array([-3], np.int32)}, "max_tokens=-3"),
    ({"TEMPERATURE": np.array([-1.0], np.float32)}, "temperature"),
    ({"MAX_TOKENS": np.array([2.5], np.float32)}, "MAX_TOKENS"),  # wrong dtype: Triton itself refuses it
    ({"TEXT": np.array([" ".join(["refunds"] * 40).encode()], dtype=object)}, "max_prompt_tokens 24"),
    ({"TEXT": None, "INPUT_IDS": np.array([1, 100_000], np.int64)}, "vocabulary"),
    ({"MAX_TOKENS": np.array([256], np.int32)}, "may generate"),
]


@pytest.mark.parametrize("inputs, words", BAD, ids=["negative-max-tokens", "negative-temperature", "wrong-dtype",
                                                    "prompt-over-limit", "ids-outside-vocab", "max-tokens-over"])
def test_bad_requests_are_invalid_argument_and_the_server_keeps_serving(served: Served, client: EngineforgeClient,
                                                                        inputs: dict, words: str) -> None:
    request = {"TEXT": np.array([b"refunds are"], dtype=object)} | inputs
    request = {name: array for name, array in request.items() if array is not None}
    error = _raw_stream_error(served.server.grpc_url, "lm", request)
    # Triton's gRPC stream sends an error's message without its code (ModelStreamInferResponse.error_message)
    assert error is not None and error.status() in (None, "StatusCode.INVALID_ARGUMENT"), error
    assert words in error.message(), error.message()
    with pytest.raises(InferenceRequestError, match=re.escape(words)):
        list(stream_generate(client, "lm", request))
    assert collect("x", client.generate("refunds are", model="lm")).finish_reason == "eos"


def _raw_stream(url: str, model: str, inputs: dict[str, np.ndarray]) -> tuple[list[dict], Exception | None]:
    """Every response of one request on a plain tritonclient stream (as a tool built for Triton LLMs sends it):
    ([{output name: array}], the error)."""
    responses: list[dict] = []
    errors: list = []
    done = threading.Event()

    def on_response(result: object, error: Exception | None) -> None:
        if error is not None:
            errors.append(error)
            done.set()
            return
        response = result.get_response()  # type: ignore[attr-defined]
        responses.append({o.name: result.as_numpy(o.name) for o in response.outputs})  # type: ignore[attr-defined]
        if response.parameters.get("triton_final_response") and response.parameters["triton_final_response"].bool_param:
            done.set()

    triton = grpcclient.InferenceServerClient(url)
    types = {"object": "BYTES", "int32": "INT32", "int64": "INT64", "float32": "FP32", "bool": "BOOL"}
    tensors = []
    for name, array in inputs.items():
        tensors.append(grpcclient.InferInput(name, list(array.shape), types[array.dtype.name]))
        tensors[-1].set_data_from_numpy(array)
    triton.start_stream(on_response)
    triton.async_stream_infer(model, tensors, enable_empty_final_response=True)
    done.wait(30)
    triton.stop_stream()
    triton.close()
    return responses, errors[0] if errors else None


def _llm_layout(prompt: str, stream: bool = True, exclude: bool = True, **sampling: object) -> dict[str, np.ndarray]:
    return {"text_input": np.array([prompt.encode()], dtype=object), "stream": np.array([stream]),
            "exclude_input_in_output": np.array([exclude]),
            "sampling_parameters": np.array([json.dumps(sampling).encode()], dtype=object)}


def test_triton_llm_layout_streams_the_same_answer_as_text_output(served: Served) -> None:
    """What GenAI-Perf (vLLM backend layout) sends: text_input + sampling_parameters with max_tokens as a string;
    the pieces come back as text_output and join into exactly the in-process answer."""
    prompt = LM_PROMPTS[0]
    text, ids, _ = served.local("lm", prompt, 60)
    responses, error = _raw_stream(served.server.grpc_url, "lm", _llm_layout(prompt, max_tokens="60"))
    assert error is None
    pieces = [r for r in responses if "text_output" in r]
    assert len(pieces) > 1 and all("TEXT_OUTPUT" not in r for r in responses)
    assert "".join(r["text_output"][0].decode() for r in pieces) == text
    assert [int(t) for r in pieces for t in r["TOKEN_IDS"]] == ids
    # One response with the whole text when not streamed; the prompt first when not excluded (the vLLM backend's
    # default without stream).
    whole, error = _raw_stream(served.server.grpc_url, "lm", _llm_layout(prompt, stream=False, max_tokens=60))
    assert error is None and [r["text_output"][0].decode() for r in whole if "text_output" in r] == [text]
    defaults = {name: array for name, array in _llm_layout(prompt, max_tokens=60).items()
                if name in ("text_input", "sampling_parameters")}
    echoed, _ = _raw_stream(served.server.grpc_url, "lm", defaults)
    assert [r["text_output"][0].decode() for r in echoed if "text_output" in r] == [prompt + text]
    _, error = _raw_stream(served.server.grpc_url, "lm", _llm_layout(prompt, min_tokens=5))
    assert error is not None and "min_tokens" in error.message()  # refused, not ignored


def test_client_errors_are_typed(served: Served, client: EngineforgeClient) -> None:
    with pytest.raises(InferenceRequestError, match="max_tokens=-1"):
        list(client.generate("refunds are", model="lm", max_tokens=-1))
    with pytest.raises(ModelNotReadyError, match="nope"):
        list(served.client(timeout_s=5, retry=False).generate("hi", model="nope"))
    with pytest.raises(InferenceRequestError, match="empty"):
        list(client.generate("", model="lm"))
    with pytest.raises(InferenceRequestError, match="text-generation LM"):
        client.classify("where is my order", model="lm")


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "import sys; from engineforge.cli import main; sys.exit(main())",
                           "generate", *args], capture_output=True, text=True, timeout=120, check=False)


def test_generate_command_json_end_to_end(served: Served) -> None:
    done = _cli("--model", "lm", "--url", served.server.grpc_url, "--max-tokens", "60", "--json", "your order has")
    assert done.returncode == 0, done.stderr
    payload = json.loads(done.stdout)
    text, ids, reason = served.local("lm", "your order has", 60)
    assert payload["prompt"] == "your order has" and payload["text"] == text and payload["token_ids"] == ids
    assert payload["finish_reason"] == reason and payload["ttft_ms"] > 0 and payload["tokens_per_s"] > 0
    streamed = _cli("--model", "lm", "--url", served.server.grpc_url, "--stream", "--stop", "tracking",
                    "your order has")
    assert streamed.returncode == 0 and streamed.stdout == " shipped and the \n", streamed.stderr


def test_generate_command_errors_without_traceback(served: Served) -> None:
    from engineforge.serve.triton_env import free_port

    for args, words, error in (
        (("--model", "nope", "--url", served.server.grpc_url, "--timeout", "0"), "nope", ModelNotReadyError),
        (("--model", "lm", "--url", f"127.0.0.1:{free_port()}", "--timeout", "0"), "no Triton server answers",
         ServerUnavailableError),
        (("--model", "lm", "--url", served.server.grpc_url, "--temperature", "-1"), "--temperature", None),
    ):
        done = _cli(*args, "refunds are")
        assert done.returncode != 0 and words in done.stderr and "Traceback" not in done.stderr, (error, done.stderr)


def test_a_drain_lets_accepted_streams_finish(served: Served, tmp_path: Path) -> None:
    """What SIGTERM does to `engineforge serve`: a stream accepted before the drain runs to its end (the gate counts a
    request until its final response), while a new request is refused."""
    with TritonServer(served.server.repo, model_control_mode="explicit", load_models=["long"],
                      log_file=tmp_path / "drain.log", startup_timeout_s=180) as server:
        pieces = []
        stream = EngineforgeClient(server.grpc_url, timeout_s=20).generate("refunds are", model="long",
                                                                         max_tokens=LONG)
        pieces += [next(stream) for _ in range(3)]
        drained: list[tuple[bool, float]] = []
        started = time.perf_counter()
        draining = threading.Thread(target=lambda: drained.append((server.drain(timeout_s=30), time.perf_counter())))
        draining.start()
        pieces += list(stream)
        draining.join(40)
        assert drained and drained[0][0], "the drain gave up"
        assert pieces[-1].finish_reason == "length" and sum(len(p.token_ids) for p in pieces) == LONG
        assert pieces[-1].time_s > started, "the stream ended before the drain began: nothing was tested"
        assert drained[0][1] >= pieces[-1].time_s - 0.01, "the drain ended while the stream was still running"
        with pytest.raises(ServerError):
            list(EngineforgeClient(server.grpc_url, timeout_s=3, retry=False).generate("hi", model="long"))


def test_loadtest_generate_mode_measures_the_served_lm(served: Served, tmp_path: Path) -> None:
    """`engineforge loadtest --mode generate` against the real LM model: every stream counted with the server's own
    token counts, TTFT before the end of each request, streams sharing the engine at concurrency 3."""
    from engineforge.loadtest import cli as loadtest_cli

    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in LM_PROMPTS))
    out = tmp_path / "out"
    rc = loadtest_cli.main(["--model", "long", "--url", served.server.grpc_url, "--mode", "generate",
                            "--concurrency", "1,3", "--duration", "2", "--warmup", "0.5", "--prompts", str(prompts),
                            "--max-tokens", "12", "--out", str(out), "--name", "lm", "--no-plot"])
    assert rc == 0
    report = json.loads((out / "lm.json").read_text())
    for level in report["levels"]:
        g = level["generation"]
        assert g["completed"] >= 2 and g["errors"] == 0 and g["token_count_mismatch"] == 0
        assert g["finish_reasons"] == {"length": g["completed"]}  # `long` never emits EOS: max_tokens ends each
        assert g["output_tokens_total"] == 12 * g["completed"]
        assert 0 < g["ttft_ms"]["p50"] < g["e2e_ms"]["p50"] and g["itl_ms"]["p50"] > 0
