"""The anthropic backend: the real SDK against a fake Messages server (tools, caching, usage, retries)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import TOY_PARAMS, git
from fakes.contexts import make_context
from fakes.llm_servers import FakeAnthropic, Reply, edit_args
from fakes.session import BEST_PARAMS, run_cli, run_toy_session

from autoresearch.agents import Agent, get_agent
from autoresearch.agents._base import Edit
from autoresearch.agents.anthropic import AnthropicAgent
from autoresearch.errors import AgentUnavailable, ConfigError, ProposalError

KEY = "sk-ant-test-0123456789abcdef"


@pytest.fixture
def server(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeAnthropic]:
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with FakeAnthropic(key=KEY) as fake:
        yield fake


def agent_for(server: FakeAnthropic, **options: object) -> AnthropicAgent:
    settings: dict[str, object] = {"max_retries": 2, "timeout": 5.0, "backoff": 0.0}
    settings.update(options)
    return AnthropicAgent("claude-sonnet-5-5", base_url=server.url, **settings)  # type: ignore[arg-type]


def test_tool_call_becomes_a_proposal_with_usage_and_cost(server: FakeAnthropic) -> None:
    server.queue(
        FakeAnthropic.tool(
            edit_args(), input_tokens=200, cache_read=3000, cache_write=1000, output_tokens=400
        )
    )
    proposal = agent_for(server).propose(make_context())
    assert proposal.description == "set X to 3.0"
    assert proposal.rationale == "the score is smallest at X = 3"
    assert proposal.edits == (Edit("params.py", "X = 1.0", "X = 3.0"),)
    usage = proposal.usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (4200, 3000, 400)
    # claude-sonnet-5-5: $2 input, $0.10 cache read, $2.50 cache write, $10 output per Mtok
    expected = (200 * 2.0 + 3000 * 0.10 + 1000 * 2.5 + 400 * 10.0) / 1e6
    assert usage.cost_usd == pytest.approx(expected)
    assert (
        proposal.meta["model"] == "claude-sonnet-5-5" and proposal.meta["stop_reason"] == "tool_use"
    )
    assert KEY not in repr(proposal)


def test_request_caches_the_stable_prefix_and_offers_the_tool(server: FakeAnthropic) -> None:
    server.queue(FakeAnthropic.tool(edit_args()))
    agent_for(server).propose(make_context())
    (request,) = server.requests
    body = request.body
    assert (
        KEY in (request.headers.get("x-api-key"), request.headers.get("authorization", "")[7:])
        and "anthropic-version" in request.headers
    )
    assert body["model"] == "claude-sonnet-5-5" and body["max_tokens"] == 16_000
    (system,) = body["system"]
    assert (
        system["cache_control"] == {"type": "ephemeral"} and "Minimise the score" in system["text"]
    )
    code, variable = body["messages"][0]["content"]
    assert code["cache_control"] == {"type": "ephemeral"} and "X = 1.0" in code["text"]
    assert "cache_control" not in variable and "| 3 | keep |" in variable["text"]
    (tool,) = body["tools"]
    assert tool["name"] == "propose_change" and tool["input_schema"]["required"] == [
        "description",
        "rationale",
        "edits",
    ]
    assert body["tool_choice"] == {"type": "auto"}
    assert "temperature" not in body


def test_forced_tool_choice_and_extra_options(server: FakeAnthropic) -> None:
    server.queue(FakeAnthropic.tool(edit_args()))
    agent_for(
        server,
        tool_choice="tool",
        temperature=0.5,
        max_tokens=2000,
        extra_body={"metadata": {"user_id": "u"}},
    ).propose(make_context())
    body = server.requests[0].body
    assert body["tool_choice"] == {"type": "tool", "name": "propose_change"}
    assert (
        body["temperature"] == 0.5
        and body["max_tokens"] == 2000
        and body["metadata"] == {"user_id": "u"}
    )


def test_system_prompt_identical_across_calls_for_caching(server: FakeAnthropic) -> None:
    server.queue(FakeAnthropic.tool(edit_args()), FakeAnthropic.tool(edit_args()))
    agent = agent_for(server)
    agent.propose(make_context())
    agent.propose(make_context(last_rejection="edit to score.py: protected", experiment_id=6))
    first, second = (r.body for r in server.requests)
    assert first["system"] == second["system"] and first["tools"] == second["tools"]
    assert first["messages"][0]["content"][0] == second["messages"][0]["content"][0]
    assert "edit to score.py: protected" in second["messages"][0]["content"][1]["text"]


def test_malformed_tool_arguments_are_invalid_with_tokens_recorded(server: FakeAnthropic) -> None:
    server.queue(
        FakeAnthropic.tool(
            {"description": "oops", "edits": "not a list"}, input_tokens=500, output_tokens=50
        )
    )
    with pytest.raises(ProposalError, match="'edits' must be a non-empty list") as info:
        agent_for(server).propose(make_context())
    assert info.value.usage is not None
    assert info.value.usage.input_tokens == 500 and info.value.usage.output_tokens == 50
    assert info.value.usage.cost_usd == pytest.approx((500 * 2.0 + 50 * 10.0) / 1e6)


def test_reply_without_tool_call(server: FakeAnthropic) -> None:
    server.queue(FakeAnthropic.text("I would rather not change anything."))
    with pytest.raises(ProposalError, match="did not call propose_change"):
        agent_for(server).propose(make_context())


def test_reply_cut_off_at_max_tokens(server: FakeAnthropic) -> None:
    reply = FakeAnthropic.tool({"description": "half"}, stop_reason="max_tokens")
    server.queue(reply)
    with pytest.raises(ProposalError, match="cut off at max_tokens"):
        agent_for(server).propose(make_context())


def test_edit_to_a_protected_file_is_passed_on_for_the_workspace_to_reject(
    server: FakeAnthropic,
) -> None:
    server.queue(FakeAnthropic.tool(edit_args(path="score.py", search="print", replace="pass #")))
    proposal = agent_for(server).propose(make_context())
    assert proposal.edits[0].path == "score.py"  # the allowlist lives in the workspace


def test_429_with_retry_after_is_retried_by_the_sdk(server: FakeAnthropic) -> None:
    server.queue(
        FakeAnthropic.error(429, "rate_limit_error", "slow down", {"retry-after": "0.3"}),
        FakeAnthropic.tool(edit_args()),
    )
    start = time.monotonic()
    proposal = agent_for(server).propose(make_context())
    assert proposal.description == "set X to 3.0"
    assert time.monotonic() - start >= 0.3  # the SDK waited as told
    assert [r.retry_count for r in server.requests] == [0, 1]


def test_500_is_retried(server: FakeAnthropic) -> None:
    server.queue(
        FakeAnthropic.error(500, "api_error", headers={"retry-after-ms": "10"}),
        FakeAnthropic.error(529, "overloaded_error", headers={"retry-after-ms": "10"}),
        FakeAnthropic.tool(edit_args()),
    )
    assert agent_for(server).propose(make_context()).edits
    assert len(server.requests) == 3


def test_hung_response_times_out_and_is_retried(server: FakeAnthropic) -> None:
    server.queue(Reply(hang=30), FakeAnthropic.tool(edit_args()))
    start = time.monotonic()
    proposal = agent_for(server, timeout=0.5).propose(make_context())
    assert proposal.edits and time.monotonic() - start < 5
    assert len(server.requests) == 2


def test_failures_in_a_row_make_the_agent_unavailable(server: FakeAnthropic) -> None:
    failing = lambda body: FakeAnthropic.error(500, "api_error", headers={"retry-after-ms": "1"})  # noqa: E731
    server.default = failing
    with pytest.raises(
        AgentUnavailable, match="failed 3 times in a row; last error: InternalServerError"
    ):
        agent_for(server, max_retries=1, max_failures=3).propose(make_context())
    assert len(server.requests) == 3 * 2  # each call: one try and one SDK retry


def test_agent_level_retry_recovers_after_sdk_retries_run_out(server: FakeAnthropic) -> None:
    server.queue(
        FakeAnthropic.error(503, "api_error", headers={"retry-after-ms": "1"}),
        FakeAnthropic.error(503, "api_error", headers={"retry-after-ms": "1"}),
        FakeAnthropic.tool(edit_args()),
    )
    assert agent_for(server, max_retries=0, max_failures=3).propose(make_context()).edits


def test_bad_key_stops_at_once_without_leaking_it(
    server: FakeAnthropic, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-wrong-key-000000")
    with pytest.raises(AgentUnavailable, match="AuthenticationError") as info:
        agent_for(server).propose(make_context())
    assert len(server.requests) == 1
    assert "sk-ant-wrong-key-000000" not in str(info.value)


def test_unknown_model_has_unknown_cost_and_one_warning(
    server: FakeAnthropic, caplog: pytest.LogCaptureFixture
) -> None:
    server.queue(FakeAnthropic.tool(edit_args()), FakeAnthropic.tool(edit_args()))
    agent = AnthropicAgent("claude-imaginary-9", base_url=server.url, max_retries=0, timeout=5.0)
    with caplog.at_level(logging.WARNING, logger="autoresearch.cost"):
        first, second = agent.propose(make_context()), agent.propose(make_context())
    assert first.usage.cost_usd is None and second.usage.cost_usd is None
    assert first.usage.input_tokens == 1000
    warnings = [r for r in caplog.records if "claude-imaginary-9" in r.getMessage()]
    assert len(warnings) == 1 and "[cost.models" in warnings[0].getMessage()


def test_price_overrides_from_the_toml(server: FakeAnthropic) -> None:
    server.queue(FakeAnthropic.tool(edit_args(), input_tokens=1_000_000, output_tokens=0))
    agent = agent_for(server, prices={"claude-sonnet-5-5": {"input": 7.0}})
    assert agent.propose(make_context()).usage.cost_usd == pytest.approx(7.0)


def test_get_agent_builds_it_from_options(server: FakeAnthropic) -> None:
    agent = get_agent("anthropic", model="claude-opus-5-5", base_url=server.url, max_retries=0)
    assert isinstance(agent, AnthropicAgent) and isinstance(agent, Agent)
    assert agent.name == "anthropic" and agent.model == "claude-opus-5-5"


def test_missing_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch, tmp_path: object) -> None:
    for name in ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ANTHROPIC_CONFIG_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        AnthropicAgent("claude-sonnet-5-5")


def test_bad_settings_are_config_errors(server: FakeAnthropic) -> None:
    with pytest.raises(ConfigError, match="max_tokens"):
        agent_for(server, max_tokens=100_000)
    with pytest.raises(ConfigError, match="tool_choice"):
        agent_for(server, tool_choice="maybe")


# --- a whole session -------------------------------------------------------------------------


def test_full_session_on_the_toy_task(server: FakeAnthropic, toy_repo: Path) -> None:
    server.queue(
        FakeAnthropic.tool(edit_args(), input_tokens=1500, output_tokens=120),  # 13 -> 9: keep
        FakeAnthropic.error(
            429, "rate_limit_error", headers={"retry-after": "0.05"}
        ),  # retried by the SDK
        FakeAnthropic.tool(
            edit_args("zero the score", "print(f", "score = 0\nprint(f", path="score.py")
        ),
        FakeAnthropic.tool(
            {"description": "half an answer", "edits": "params.py"}, input_tokens=1600
        ),
        FakeAnthropic.tool(
            edit_args("set Y to -1", "Y = 2.0", "Y = -1.0"), cache_read=1200, input_tokens=400
        ),  # 9 -> 0
        FakeAnthropic.tool(
            edit_args("set Y to 5", "Y = -1.0\n", "Y = 5.0\n"), output_tokens=80
        ),  # 0 -> 36: discard
    )
    engine, rows = run_toy_session(toy_repo, agent_for(server), max_experiments=5)
    assert [(r.id, r.verdict) for r in rows] == [
        (0, "baseline"), (1, "keep"), (2, "invalid"), (3, "invalid"), (4, "keep"), (5, "discard"),
    ]  # fmt: skip
    by_id = {r.id: r for r in rows}
    assert by_id[1].metric == 9.0 and by_id[4].metric == 0.0 and by_id[5].metric == 36.0
    assert "protected" in by_id[2].reason and "'edits' must be a non-empty list" in by_id[3].reason
    assert (toy_repo / "params.py").read_text() == TOY_PARAMS  # the user's checkout is untouched
    assert git(toy_repo, "show", "autoresearch/t:params.py") == BEST_PARAMS.strip()
    # The agent was told why its previous proposal was rejected.
    bodies = [r.body for r in server.requests if r.retry_count == 0 and isinstance(r.body, dict)]
    assert "protected" in bodies[3]["messages"][0]["content"][-1]["text"]
    assert "'edits' must be" in bodies[4]["messages"][0]["content"][-1]["text"]
    # Tokens and cost are recorded per proposal (invalid ones too) and add up.
    assert [by_id[i].usage.input_tokens for i in range(1, 6)] == [1500, 1000, 1600, 1600, 1000]
    assert by_id[4].usage.cached_tokens == 1200 and by_id[5].usage.output_tokens == 80
    expected = [(1500 * 2 + 120 * 10) / 1e6, (1000 * 2 + 100 * 10) / 1e6, (1600 * 2 + 100 * 10) / 1e6,
                (400 * 2 + 1200 * 0.1 + 100 * 10) / 1e6, (1000 * 2 + 80 * 10) / 1e6]  # fmt: skip
    assert [by_id[i].cost_usd for i in range(1, 6)] == pytest.approx(expected)
    assert engine.spent() == pytest.approx(sum(expected))


def test_session_stops_when_the_backend_keeps_failing(
    server: FakeAnthropic, toy_repo: Path
) -> None:
    server.queue(FakeAnthropic.tool(edit_args()))
    server.default = lambda body: FakeAnthropic.error(
        500, "api_error", headers={"retry-after-ms": "1"}
    )
    engine, rows = run_toy_session(
        toy_repo, agent_for(server, max_retries=1, max_failures=2), max_experiments=5
    )
    assert [r.verdict for r in rows] == ["baseline", "keep"]
    summary = engine.summary()
    assert "the agent failed" in summary.stop_reason and "2 times in a row" in summary.stop_reason


def test_cli_session_with_the_base_url_from_the_environment(
    server: FakeAnthropic, toy_repo: Path
) -> None:
    server.queue(
        FakeAnthropic.tool(edit_args()),
        FakeAnthropic.tool(edit_args("set Y to -1", "Y = 2.0", "Y = -1.0")),
    )
    env = {"ANTHROPIC_API_KEY": KEY, "ANTHROPIC_BASE_URL": server.url}
    run = run_cli(
        toy_repo,
        "run",
        "--tag",
        "t",
        "--agent",
        "anthropic",
        "--model",
        "claude-sonnet-5-5",
        "--max-experiments",
        "2",
        env=env,
    )
    assert run.returncode == 0, run.stderr
    assert git(toy_repo, "show", "autoresearch/t:params.py") == BEST_PARAMS.strip()
    status = run_cli(toy_repo, "status", "--tag", "t", env=env)
    assert (
        status.returncode == 0 and "spend: $0.01" in status.stdout
    )  # 2 x (1000 in + 100 out) = $0.006


@pytest.mark.parametrize(
    "usage",
    [
        None,
        {},
        {"input_tokens": "1200", "output_tokens": 100},
        {"input_tokens": 1200, "output_tokens": None},
        {"input_tokens": -5, "output_tokens": 100},
        {"input_tokens": 1200, "output_tokens": 100, "cache_read_input_tokens": "lots"},
        "not a block",
    ],
)
def test_a_malformed_usage_block_is_unknown_usage_not_an_error(
    server: FakeAnthropic, usage: object
) -> None:
    reply = FakeAnthropic.tool(edit_args())
    if usage == {}:
        del reply.body["usage"]
    else:
        reply.body["usage"] = usage
    server.queue(reply)
    proposal = agent_for(server).propose(make_context())
    assert proposal.edits == (Edit("params.py", "X = 1.0", "X = 3.0"),)
    assert proposal.usage.cost_usd is None  # unknown: neither free nor a crash
    assert (proposal.usage.input_tokens, proposal.usage.output_tokens) == (0, 0)


def test_null_cache_counts_are_zero(server: FakeAnthropic) -> None:
    reply = FakeAnthropic.tool(edit_args(), input_tokens=1000, output_tokens=100)
    reply.body["usage"]["cache_read_input_tokens"] = None
    del reply.body["usage"]["cache_creation_input_tokens"]
    server.queue(reply)
    usage = agent_for(server).propose(make_context()).usage
    assert (usage.input_tokens, usage.cached_tokens, usage.output_tokens) == (1000, 0, 100)
    assert usage.cost_usd is not None and usage.cost_usd > 0
