"""jiio analyze on object storage (moto's S3 server on loopback): the same planted answers."""

from __future__ import annotations

import json

from orchestrator.cli import main

from ._planted import planted


def test_analyze_a_planted_sweep_in_a_bucket(s3_bucket, tmp_path, capsys):
    root = f"{s3_bucket}/jiio"
    planted(root, n=12)
    assert main(["analyze", root, "--name", "s", "--json", "--out", str(tmp_path)]) == 0
    s = json.loads(capsys.readouterr().out)
    assert s["best"][0]["trial_id"] == "best" and s["verdict"]["significant"] is True
    assert (tmp_path / "s-report.html").is_file() and (tmp_path / "s-traces.png").is_file()
    assert (
        main(["analyze", root, "--sql", "SELECT count(*) AS n FROM traces WHERE trial_id = 'best'", "--json"])
        == 0
    )
    assert json.loads(capsys.readouterr().out) == [{"n": 40}]
