"""The credits' knobs outside the layer: `rowcall up`'s catalog, run cost and daily budget flags,
the client's resume budget and submit keys, cost in progress lines, and the emulator's
per-technique stats and charges."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from rowcall_client.api import RowcallApi
from rowcall_client.cli import main
from rowcall_client.progress import cost_summary, describe
from rowcall_local.cli import build_parser, stack_options
from rowcall_local.provider_emulator import ProviderEmulator, ProviderFaults
from rowcall_local.technique_catalog import Technique, TechniqueField

API_KEY = "key-credit-options"
SECRET = "whsec_Y3JlZGl0LW9wdGlvbnM="
PORTRAIT = {
    "technique_id": "portrait",
    "name": "Portrait",
    "inputs": [{"id": "prompt", "name": "Prompt", "type": "text"}],
    "outputs": [{"id": "output_0", "name": "Image", "type": "imageUrl"}],
    "run_cost": 0.25,
}


def test_up_reads_the_catalog_the_run_cost_and_the_daily_budget(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    catalog = tmp_path / "techniques.json"
    catalog.write_text(json.dumps([PORTRAIT]))
    monkeypatch.setenv("ROWCALL_PROVIDER_RUN_COST", "0.02")
    args = ["up", "--provider-techniques", str(catalog), "--daily-budget-usd", "12.5"]
    options = stack_options(build_parser().parse_args(args))
    assert options.provider_faults is not None
    assert options.provider_faults.techniques == (Technique.model_validate(PORTRAIT),)
    assert options.provider_faults.run_cost_usd == 0.02
    assert options.parameters == {"DailyBudgetUsd": "12.5"}
    assert stack_options(build_parser().parse_args(["up"])).parameters == {}


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--provider-run-cost", "-1"),
        ("--daily-budget-usd", "lots"),
        ("--provider-techniques", "/no/such.json"),
    ],
)
def test_up_refuses_a_bad_cost_flag(flag: str, value: str) -> None:
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", flag, value])


def test_a_catalog_that_is_not_definitions_is_refused(tmp_path: Path) -> None:
    catalog = tmp_path / "bad.json"
    catalog.write_text(json.dumps([PORTRAIT | {"run_cost": "cheap"}]))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["up", "--provider-techniques", str(catalog)])


def test_the_client_sends_the_budget_and_every_new_key() -> None:
    sent: list[tuple[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        sent.append((request.url.path, json.loads(request.content or b"null")))
        return httpx.Response(202, json={})

    api = RowcallApi(httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(answer)))
    api.resume("b_1", 7.5)
    api.resume("b_2")
    api.create_upload(
        "a.csv", 10, max_cost_usd=3, reuse="off", save_outputs="on", max_failed_percent=25, provider="flora"
    )
    assert sent[0] == ("/batches/b_1/resume", {"max_cost_usd": 7.5})
    assert sent[1] == ("/batches/b_2/resume", {})
    assert sent[2][1] == {
        "filename": "a.csv",
        "size_bytes": 10,
        "max_cost_usd": 3,
        "reuse": "off",
        "save_outputs": "on",
        "max_failed_percent": 25,
        "provider": "flora",
    }


def test_submit_refuses_a_switch_that_is_neither_on_nor_off(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    csv = tmp_path / "a.csv"
    csv.write_text("a\n1\n")
    assert main(["--state-dir", str(tmp_path), "submit", str(csv), "--reuse", "maybe"]) != 0
    assert "--reuse: 'maybe' is neither on nor off" in capsys.readouterr().err


def test_progress_shows_cost_when_the_batch_has_any() -> None:
    batch = {
        "status": "running",
        "completed_count": 3,
        "failed_count": 1,
        "total_count": 10,
        "charged_cost_usd": 0.75,
        "estimated_cost_usd": 2.5,
        "max_cost_usd": 5.0,
    }
    assert describe(batch, None, None).endswith(", $0.75 charged of est. $2.5 (budget $5)")
    assert cost_summary({"charged_cost_usd": None, "estimated_cost_usd": None, "max_cost_usd": None}) == ""


def test_the_emulator_counts_each_techniques_runs_and_charges() -> None:
    faults = ProviderFaults(
        delay_ms=(0, 0),
        techniques=(
            Technique(
                technique_id="pricey",
                name="Pricey",
                inputs=[TechniqueField(id="prompt", name="Prompt", type="text")],
                outputs=[TechniqueField(id="output_0", name="Image", type="imageUrl")],
                run_cost=0.123457,
            ),
        ),
        run_cost_usd=0.01,
    )
    auth = {"Authorization": f"Bearer {API_KEY}"}
    with (
        ProviderEmulator(API_KEY, faults, webhook_secret=SECRET) as emulator,
        httpx.Client(headers=auth) as http,
    ):
        for technique, runs in (("pricey", 3), ("open-one", 2)):
            for n in range(runs):
                body = {"inputs": [{"id": "prompt", "type": "text", "value": f"p{n}"}], "mode": "async"}
                assert http.post(f"{emulator.url}/techniques/{technique}/runs", json=body).status_code == 201
        refused = http.post(f"{emulator.url}/techniques/pricey/runs", json={"inputs": [], "mode": "async"})
        assert refused.status_code == 400 and refused.json()["error"]["fields"] == {"prompt": "is required"}
        assert http.get(f"{emulator.url}/techniques/missing-x").status_code == 404
        assert httpx.get(f"{emulator.url}/techniques/pricey").status_code == 401  # no key

        def settled() -> dict[str, Any]:
            for _ in range(200):
                stats = http.get(f"{emulator.url}/_stats").json()
                if stats["charged_cost_usd"] >= 3 * 0.123457 + 2 * 0.01 - 1e-9:
                    return dict(stats)
                time.sleep(0.02)
            raise AssertionError("runs did not finish")

        stats = settled()
        pricey = http.get(f"{emulator.url}/_stats", params={"technique_id": "pricey"}).json()
    assert stats["charged_cost_usd"] == pytest.approx(0.390371, abs=1e-12)
    # A request without the key is answered 401 before it is counted, as a create is.
    assert stats["technique_gets"] == 1 and stats["creates"] == 6
    assert pricey == {
        "technique_id": "pricey",
        "creates": 4,
        "duplicate_creates": 0,
        "gets": 0,
        "polls": 0,
        "technique_gets": 0,
        "completed": 3,
        "failed": 0,
        "charged_cost_usd": 0.370371,
    }
