"""deploy/prometheus/tenure-alerts.yml: promtool accepts the rules, they fire on the series
they are about (promtool test rules), and they name only metrics a real broker exports."""

from __future__ import annotations

import json
import re
import subprocess
import urllib.request
from pathlib import Path

import pytest

from tests.deploy.conftest import DEPLOY, Broker, need

RULES = DEPLOY / "prometheus" / "tenure-alerts.yml"
METRICS_TOKEN = "tnr_met_" + "alerts-test-token-0123456789"

# Each case: the series (promtool's expanding notation, one sample a minute), when to
# look, the alert, and the labels it must fire with (none: it must not fire).
CASES = {
    "pool exhausted for 15 minutes": (
        {
            'tenure_pool_seats_available{job="tenure-broker",instance="b1",estate="est_1",pool="pol_1"}': "0x30",
            'tenure_pool_seats_in_use{job="tenure-broker",instance="b1",estate="est_1",pool="pol_1"}': "5x30",
            'tenure_pool_seats_available{job="tenure-broker",instance="b1",estate="est_1",pool="pol_2"}': "0x30",
            'tenure_pool_seats_in_use{job="tenure-broker",instance="b1",estate="est_1",pool="pol_2"}': "0x30",
        },
        "20m",
        "TenurePoolExhausted",
        [{"estate": "est_1", "pool": "pol_1", "instance": "b1", "job": "tenure-broker", "severity": "warning"}],
    ),
    "a typo or two is no attack": (
        {'tenure_codes_refused_total{job="tenure-broker",instance="b1"}': "0+1x30"},  # one a minute
        "20m",
        "TenureCodeGuessing",
        [],
    ),
    "guessing codes": (
        {'tenure_codes_refused_total{job="tenure-broker",instance="b1"}': "0+5x30"},
        "20m",
        "TenureCodeGuessing",
        [{"instance": "b1", "severity": "warning"}],
    ),
    "a failed commit pages at once": (
        {'tenure_store_failed_commits_total{job="tenure-broker",instance="b1"}': "0 0 0 1 1 1"},
        "4m",
        "TenureStoreFailing",
        [{"instance": "b1", "job": "tenure-broker", "severity": "page"}],
    ),
    "webhook endpoints failing for half an hour": (
        {
            'tenure_webhook_endpoints_failing{job="tenure-broker",instance="b1"}': "0 0 1x40",
            'tenure_webhook_endpoints_failing{job="tenure-broker",instance="b2"}': "0 0 1x40",
        },
        "40m",
        "TenureWebhooksFailing",
        [{"job": "tenure-broker", "severity": "warning"}],
    ),
    "a webhook endpoint failing briefly is no alert": (
        {'tenure_webhook_endpoints_failing{job="tenure-broker",instance="b1"}': "0 1x10 0x30"},
        "40m",
        "TenureWebhooksFailing",
        [],
    ),
    "broker down": (
        {'up{job="tenure-broker",instance="b1"}': "1 1 0 0 0 0 0"},
        "5m",
        "TenureBrokerDown",
        [{"instance": "b1", "job": "tenure-broker", "severity": "page"}],
    ),
}


def test_promtool_check_rules() -> None:
    result = subprocess.run(
        [need("promtool"), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("case", sorted(CASES))
def test_promtool_test_rules(case: str, tmp_path: Path) -> None:
    series, at, alert, fired = CASES[case]
    # JSON is YAML: promtool reads this file as its test specification.
    spec = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [{"series": s, "values": v} for s, v in series.items()],
                "alert_rule_test": [
                    {
                        "eval_time": at,
                        "alertname": alert,
                        "exp_alerts": [
                            {"exp_labels": labels, "exp_annotations": {"summary": summary(alert, labels)}}
                            for labels in fired
                        ],
                    }
                ],
            }
        ],
    }
    test = tmp_path / "test.yml"
    test.write_text(json.dumps(spec))
    result = subprocess.run([need("promtool"), "test", "rules", str(test)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def summary(alert: str, labels: dict[str, str]) -> str:
    """The rule's summary annotation with ``labels`` put in, as Prometheus renders it."""
    text = RULES.read_text()
    block = text[text.index(f"alert: {alert}\n") :]
    template = re.search(r'summary: "(.*)"', block)
    assert template
    return re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels.get(m.group(1), ""), template.group(1))


def test_rules_name_only_metrics_the_broker_exports(tmp_path: Path) -> None:
    served = Broker(tmp_path / "data", env={"TENURE_METRICS_TOKEN": METRICS_TOKEN})
    try:
        request = urllib.request.Request(f"{served.url}/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        with urllib.request.urlopen(request, timeout=5) as answer:
            scrape = answer.read().decode()
    finally:
        served.stop()
    families = set(re.findall(r"^# TYPE (\S+) (\w+)$", scrape, re.M))
    names = {name for name, _ in families}
    histograms = {name for name, kind in families if kind == "histogram"}
    names |= {f"{h}_{suffix}" for h in histograms for suffix in ("bucket", "sum", "count")}
    exprs = re.findall(r"expr: (.*)", RULES.read_text())
    used = {m for e in exprs for m in re.findall(r"\b((?:tenure|process)_[a-z_]+)\b", e)}
    assert used, exprs
    assert used <= names, used - names
