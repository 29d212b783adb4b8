"""The openai backend: the real SDK against a fake Chat Completions server, OpenAI and local-server modes."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import git
from fakes.contexts import make_context
from fakes.llm_servers import FakeOpenAI, Reply, edit_args
from fakes.session import BEST_PARAMS, run_cli, run_toy_session

from autoresearch.agents import Agent, get_agent
from autoresearch.agents._base import Edit
from autoresearch.agents.openai import OpenAIAgent
from autoresearch.errors import AgentCancelled, AgentUnavailable, ConfigError, ProposalError

KEY = "sk-proj-test-0123456789abcdef"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeOpenAI]:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with FakeOpenAI(key=KEY) as fake:
        yield fake


def agent_for(server: FakeOpenAI, **options: object) -> OpenAIAgent:
    """An agent that talks to the fake as if it were api.openai.com."""
    settings: dict[str, object] = {
        "max_retries": 2,
        "timeout": 5.0,
        "backoff": 0.0,
        "compatible": False,
    }
    settings.update(options)
    return OpenAIAgent("gpt-5.4", base_url=server.url, **settings)  # type: ignore[arg-type]


def test_tool_call_becomes_a_proposal_with_usage_and_cost(server: FakeOpenAI) -> None:
    server.queue(
        FakeOpenAI.tool(edit_args(), prompt_tokens=5000, cached_tokens=4000, completion_tokens=300)
    )
    proposal = agent_for(server).propose(make_context())
    assert proposal.description == "set X to 3.0"
    assert proposal.edits == (Edit("params.py", "X = 1.0", "X = 3.0"),)
    usage = proposal.usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (5000, 4000, 300)
    # gpt-5.4: $2.50 input, $0.25 cached input, $15 output per Mtok
    assert usage.cost_usd == pytest.approx((1000 * 2.5 + 4000 * 0.25 + 300 * 15.0) / 1e6)
    assert proposal.meta["finish_reason"] == "tool_calls" and KEY not in repr(proposal)


def test_request_shape_for_openai(server: FakeOpenAI) -> None:
    server.queue(FakeOpenAI.tool(edit_args()))
    agent_for(server).propose(make_context())
    (request,) = server.requests
    body = request.body
    assert request.headers["authorization"] == f"Bearer {KEY}"
    system, user = body["messages"]
    assert system["role"] == "system" and "Minimise the score" in system["content"]
    assert user["content"].index("X = 1.0") < user["content"].index(
        "| 3 | keep |"
    )  # code before history
    assert body["tools"][0]["function"]["name"] == "propose_change"
    assert body["tool_choice"] == "required" and body["parallel_tool_calls"] is False
    assert body["max_completion_tokens"] == 16_000 and "max_tokens" not in body
    assert body["prompt_cache_key"].startswith("autoresearch-")


def test_local_server_needs_no_key_and_gets_plain_options(
    server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OPENAI_API_KEY")
    server.key = None
    server.queue(FakeOpenAI.tool(edit_args(), model="qwen3-coder"))
    agent = OpenAIAgent(
        "qwen3-coder",
        base_url=server.url,
        max_retries=0,
        timeout=5.0,
        prices={"qwen3-coder": {"input": 0, "output": 0}},
    )
    proposal = agent.propose(make_context())
    body = server.requests[0].body
    assert body["tool_choice"] == "auto" and body["max_tokens"] == 16_000
    assert (
        "max_completion_tokens" not in body
        and "parallel_tool_calls" not in body
        and "prompt_cache_key" not in body
    )
    assert proposal.usage.cost_usd == 0.0


def test_base_url_from_the_environment(server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_BASE_URL", server.url)
    server.queue(FakeOpenAI.tool(edit_args()))
    assert OpenAIAgent("gpt-5.4", max_retries=0).propose(make_context()).edits
    assert len(server.requests) == 1


def test_local_model_writing_json_text_instead_of_a_tool_call(server: FakeOpenAI) -> None:
    server.queue(FakeOpenAI.text("Sure.\n```json\n" + json.dumps(edit_args()) + "\n```"))
    proposal = agent_for(server, compatible=True).propose(make_context())
    assert proposal.edits == (Edit("params.py", "X = 1.0", "X = 3.0"),)


def test_malformed_tool_arguments_are_invalid_with_tokens_recorded(server: FakeOpenAI) -> None:
    server.queue(
        FakeOpenAI.tool('{"description": "x", "edits": [{"path": "params.py", ', prompt_tokens=700)
    )
    with pytest.raises(ProposalError, match="arguments are not valid JSON") as info:
        agent_for(server).propose(make_context())
    assert info.value.usage is not None and info.value.usage.input_tokens == 700


def test_reply_cut_off_and_refusal(server: FakeOpenAI) -> None:
    cut = FakeOpenAI.tool('{"description": "x"', finish_reason="length")
    refusal = FakeOpenAI.completion(
        {"role": "assistant", "content": None, "refusal": "no"}, finish_reason="stop"
    )
    server.queue(cut, refusal)
    agent = agent_for(server)
    with pytest.raises(ProposalError, match="cut off at max_tokens"):
        agent.propose(make_context())
    with pytest.raises(ProposalError, match="refused"):
        agent.propose(make_context())


def test_429_with_retry_after_is_retried_by_the_sdk(server: FakeOpenAI) -> None:
    server.queue(
        FakeOpenAI.error(429, "rate_limit_exceeded", "slow down", {"retry-after": "0.3"}),
        FakeOpenAI.tool(edit_args()),
    )
    start = time.monotonic()
    assert agent_for(server).propose(make_context()).edits
    assert time.monotonic() - start >= 0.3
    assert [r.retry_count for r in server.requests] == [0, 1]


def test_500_and_hung_response_are_retried(server: FakeOpenAI) -> None:
    server.queue(
        FakeOpenAI.error(500, "server_error", headers={"retry-after-ms": "10"}),
        Reply(hang=30),
        FakeOpenAI.tool(edit_args()),
    )
    start = time.monotonic()
    assert agent_for(server, timeout=0.5).propose(make_context()).edits
    assert len(server.requests) == 3 and time.monotonic() - start < 5


def test_cancel_ends_the_wait_before_another_try(server: FakeOpenAI) -> None:
    """A signal during a ten-minute wait to try a failing server again: the session's stop
    does not wait it out."""
    import threading

    server.default = lambda body: FakeOpenAI.error(503, "overloaded", headers={"retry-after-ms": "1"})
    agent = agent_for(server, max_retries=0, max_failures=5, backoff=600.0)
    raised: list[BaseException] = []

    def propose() -> None:
        try:
            agent.propose(make_context())
        except BaseException as exc:
            raised.append(exc)

    worker = threading.Thread(target=propose)
    worker.start()
    deadline = time.monotonic() + 30
    while not server.requests and time.monotonic() < deadline:
        time.sleep(0.01)
    agent.cancel()
    worker.join(timeout=60)
    assert not worker.is_alive()
    assert len(raised) == 1 and isinstance(raised[0], AgentCancelled), raised
    assert len(server.requests) == 1


def test_failures_in_a_row_make_the_agent_unavailable(server: FakeOpenAI) -> None:
    server.default = lambda body: FakeOpenAI.error(
        502, "bad_gateway", headers={"retry-after-ms": "1"}
    )
    with pytest.raises(AgentUnavailable, match="failed 2 times in a row"):
        agent_for(server, max_retries=1, max_failures=2).propose(make_context())
    assert len(server.requests) == 4


def test_bad_key_stops_at_once_without_leaking_it(server: FakeOpenAI) -> None:
    with pytest.raises(AgentUnavailable, match="AuthenticationError") as info:
        agent_for(server, api_key="sk-wrong-key-00000000").propose(make_context())
    assert len(server.requests) == 1 and "sk-wrong-key-00000000" not in str(info.value)


def test_unknown_model_has_unknown_cost_and_one_warning(
    server: FakeOpenAI, caplog: pytest.LogCaptureFixture
) -> None:
    server.queue(FakeOpenAI.tool(edit_args()), FakeOpenAI.tool(edit_args()))
    agent = OpenAIAgent("llama-imaginary", base_url=server.url, max_retries=0)
    with caplog.at_level(logging.WARNING, logger="autoresearch.cost"):
        costs = [agent.propose(make_context()).usage.cost_usd for _ in range(2)]
    assert costs == [None, None]
    assert len([r for r in caplog.records if "llama-imaginary" in r.getMessage()]) == 1


def test_missing_key_without_base_url_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIAgent("gpt-5.4")


def test_get_agent_builds_it(server: FakeOpenAI) -> None:
    agent = get_agent("openai", model="gpt-5.5", base_url=server.url)
    assert (
        isinstance(agent, OpenAIAgent)
        and isinstance(agent, Agent)
        and agent.name == "openai"
        and agent.model == "gpt-5.5"
    )


# --- a whole session -------------------------------------------------------------------------


def test_full_session_on_the_toy_task(server: FakeOpenAI, toy_repo: Path) -> None:
    server.queue(
        FakeOpenAI.tool(edit_args(), prompt_tokens=2000, completion_tokens=150),  # 13 -> 9: keep
        FakeOpenAI.error(
            500, "server_error", headers={"retry-after-ms": "5"}
        ),  # retried by the SDK
        FakeOpenAI.tool(
            '{"description": "broken", "edits": [{"path": ', prompt_tokens=2100
        ),  # malformed JSON
        FakeOpenAI.tool(
            edit_args("zero the score", "print(f", "score = 0\nprint(f", path="score.py")
        ),
        FakeOpenAI.tool(
            edit_args("set Y to -1", "Y = 2.0", "Y = -1.0"), cached_tokens=800
        ),  # 9 -> 0: keep
        FakeOpenAI.tool(edit_args("set X to 4", "X = 3.0\n", "X = 4.0\n")),  # 0 -> 1: discard
    )
    engine, rows = run_toy_session(toy_repo, agent_for(server), max_experiments=5)
    assert [(r.id, r.verdict) for r in rows] == [
        (0, "baseline"), (1, "keep"), (2, "invalid"), (3, "invalid"), (4, "keep"), (5, "discard"),
    ]  # fmt: skip
    by_id = {r.id: r for r in rows}
    assert "not valid JSON" in by_id[2].reason and "protected" in by_id[3].reason
    assert git(toy_repo, "show", "autoresearch/t:params.py") == BEST_PARAMS.strip()
    firsts = [r.body for r in server.requests if r.retry_count == 0]
    assert "not valid JSON" in firsts[3]["messages"][1]["content"]  # shown to the model next time
    assert [by_id[i].usage.input_tokens for i in range(1, 6)] == [2000, 2100, 1000, 1000, 1000]
    assert by_id[4].usage.cached_tokens == 800
    expected = [(2000 * 2.5 + 150 * 15) / 1e6, (2100 * 2.5 + 100 * 15) / 1e6, (1000 * 2.5 + 100 * 15) / 1e6,
                (200 * 2.5 + 800 * 0.25 + 100 * 15) / 1e6, (1000 * 2.5 + 100 * 15) / 1e6]  # fmt: skip
    assert [by_id[i].cost_usd for i in range(1, 6)] == pytest.approx(expected)
    assert engine.spent() == pytest.approx(sum(expected))


def test_cli_session_against_a_local_server(server: FakeOpenAI, toy_repo: Path) -> None:
    server.key = None  # a local server takes no key
    server.queue(
        FakeOpenAI.text("```json\n" + json.dumps(edit_args()) + "\n```"),
        FakeOpenAI.tool(edit_args("set Y to -1", "Y = 2.0", "Y = -1.0")),
    )
    env = {"OPENAI_API_KEY": ""}
    args = [
        "run",
        "--tag",
        "t",
        "--agent",
        "openai",
        "--model",
        "qwen3-coder",
        "--base-url",
        server.url,
    ]
    run = run_cli(toy_repo, *args, "--max-experiments", "2", env=env)
    assert run.returncode == 0, run.stderr
    assert "no price known for model 'qwen3-coder'" in run.stderr  # one warning, cost unknown
    assert run.stderr.count("no price known") == 1
    assert git(toy_repo, "show", "autoresearch/t:params.py") == BEST_PARAMS.strip()
    assert all(r.body["tool_choice"] == "auto" and "max_tokens" in r.body for r in server.requests)


def test_lenient_with_servers_that_leave_fields_out(server: FakeOpenAI) -> None:
    reply = FakeOpenAI.tool(edit_args())
    call = reply.body["choices"][0]["message"]["tool_calls"][0]
    del call["type"], call["id"]
    del reply.body["usage"]
    server.queue(reply)
    proposal = agent_for(
        server, compatible=True, prices={"gpt-5.4": {"input": 0, "output": 0}}
    ).propose(make_context())
    assert proposal.edits == (Edit("params.py", "X = 1.0", "X = 3.0"),)
    assert (proposal.usage.input_tokens, proposal.usage.output_tokens) == (0, 0)


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        {"prompt_tokens": "900", "completion_tokens": 100},
        {"prompt_tokens": 900, "completion_tokens": None},
        {"prompt_tokens": 900.5, "completion_tokens": 100},
        {"prompt_tokens": 900, "completion_tokens": 100, "prompt_tokens_details": {"cached_tokens": "x"}},
        ["not", "a", "block"],
    ],
)
def test_a_malformed_usage_block_is_unknown_usage_not_an_error(
    server: FakeOpenAI, usage: object
) -> None:
    reply = FakeOpenAI.tool(edit_args())
    if usage == {}:
        del reply.body["usage"]
    else:
        reply.body["usage"] = usage
    server.queue(reply)
    proposal = agent_for(server).propose(make_context())
    assert proposal.edits == (Edit("params.py", "X = 1.0", "X = 3.0"),)
    assert proposal.usage.cost_usd is None  # unknown: neither free nor a crash
    assert (proposal.usage.input_tokens, proposal.usage.output_tokens) == (0, 0)


def test_null_cache_details_count_zero(server: FakeOpenAI) -> None:
    reply = FakeOpenAI.tool(edit_args(), prompt_tokens=1000, completion_tokens=100)
    reply.body["usage"]["prompt_tokens_details"] = None
    server.queue(reply)
    usage = agent_for(server).propose(make_context()).usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (1000, 0, 100)
    assert usage.cost_usd is not None and usage.cost_usd > 0


def closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_address_that_never_answered_stops_at_once(server: FakeOpenAI) -> None:
    """A wrong --base-url: nothing listens there. Without an answer ever, a connection error is
    not waited out (it was: 60, 120, 240, 480 s); once a server has answered, it is."""
    url = f"http://127.0.0.1:{closed_port()}/v1"
    agent = OpenAIAgent("gpt-5.4", base_url=url, max_retries=0, timeout=5.0, backoff=600.0, compatible=False)
    started = time.monotonic()
    with pytest.raises(AgentUnavailable, match="no server has answered yet: check the address, --base-url"):
        agent.propose(make_context())
    assert time.monotonic() - started < 60
    answered = agent_for(server, max_retries=0, max_failures=2, backoff=0.0)
    server.queue(FakeOpenAI.tool(edit_args()))
    assert answered.propose(make_context()).edits
    server.close()  # the server is gone after it answered: a blip, tried again
    with pytest.raises(AgentUnavailable, match="failed 2 times in a row") as info:
        answered.propose(make_context())
    assert "no server has answered yet" not in str(info.value)


@pytest.mark.parametrize("name", ["anthropic", "openai"])
def test_without_the_llm_extra_the_agent_says_what_to_install(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    from autoresearch.agents import get_agent

    for module in [m for m in sys.modules if m == name or m.startswith((f"{name}.", f"autoresearch.agents.{name}"))]:
        monkeypatch.delitem(sys.modules, module)
    monkeypatch.setitem(sys.modules, name, None)  # as if it were not installed
    with pytest.raises(ConfigError, match=rf"the {name} agent needs its SDK .*pip install 'autoresearch\[llm\]'"):
        get_agent(name)
