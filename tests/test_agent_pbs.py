"""PBS Pro / OpenPBS support, on outputs written in PBS's documented formats
(no PBS server runs here; see tests/fixtures/pbs/README.md) and through the
agent with a fake qsub/qstat."""

from __future__ import annotations

from pathlib import Path

import pytest

from hpcsera_agent import pbs
from tests.test_agent_recovery import (  # noqa: F401 - fixtures
    CALL,
    FakeClient,
    fake_batch,
    function,
    make_agent,
)

FIXTURES = Path(__file__).parent / "fixtures" / "pbs"


def test_qsub_output_with_a_site_notice_yields_the_id():
    assert pbs.parse_qsub((FIXTURES / "qsub_notice.txt").read_text()) == "2001.pbs01"
    assert pbs.parse_qsub("qsub: Unknown queue\n") is None
    assert pbs.parse_qsub("2002[].pbs01\n") == "2002[].pbs01"


@pytest.mark.parametrize(
    "job_id, kind, exit_code, words",
    [
        ("2001.pbs01", "succeeded", 0, ""),
        ("2002.pbs01", "failed", 3, "exited with code 3"),
        ("2003.pbs01", "failed", 143, "signal 15"),
        ("2004.pbs01", "failed", None, "walltime"),
        ("2005.pbs01", "failed", None, "could not run"),
        ("2006.pbs01", "failed", None, "before it ran"),
        ("2007.pbs01", "active", None, ""),
        ("2008.pbs01", "active", None, ""),
        ("2009.pbs01", "active", None, ""),
        ("2010.pbs01", "unknown", None, "unknown state M"),
    ],
)
def test_qstat_json_states_map_to_outcomes(job_id, kind, exit_code, words):
    jobs = pbs.parse_qstat_json((FIXTURES / "qstat_jobs.json").read_text())
    name, state = jobs[job_id]
    assert state.kind == kind and state.exit_code == exit_code
    assert words in state.reason()


def test_the_text_format_gives_the_same_states():
    text = pbs.parse_qstat_text((FIXTURES / "qstat_jobs.txt").read_text())
    json_ = pbs.parse_qstat_json((FIXTURES / "qstat_jobs.json").read_text())
    assert set(text) == {"2001.pbs01", "2002.pbs01", "2004.pbs01", "2007.pbs01"}
    for job_id, (name, state) in text.items():
        assert (name, state) == json_[job_id]


def test_invalid_json_from_qstat_falls_back_to_the_text_format(tmp_path):
    qstat = tmp_path / "qstat"
    qstat.write_text(
        "#!/bin/sh\n"
        'case "$*" in *json*) cat ' + str(FIXTURES / "qstat_bad.json") + " ;;\n"
        "*) cat " + str(FIXTURES / "qstat_jobs.txt") + " ;; esac\n"
    )
    qstat.chmod(0o755)
    agent = make_agent(tmp_path, FakeClient(), pbs={"qstat": str(qstat)})
    states = pbs.query(
        {"2001.pbs01": "hpcsera-ok", "2002.pbs01": "someone-else"}, agent.config
    )
    assert states["2001.pbs01"].succeeded
    assert "2002.pbs01" not in states, "a job of another name is not ours"


def test_a_pbs_call_is_submitted_with_qsub_followed_and_reported(
    tmp_path,
    fake_batch,  # noqa: F811
):
    function(tmp_path, "pbsjob", "#!/bin/sh\necho from-pbs\n")
    fake_batch.write({"jobs": {}})
    client = FakeClient(
        [
            dict(
                id=CALL,
                job_id="j",
                function="pbsjob",
                mode="sync",
                time_limit_seconds=90,
            )
        ]
    )
    agent = make_agent(tmp_path, client, pbs={"queue": "short"})

    agent.claim_step(0)
    agent._pool.shutdown(wait=True)

    qsub = [c for c in fake_batch.read()["calls"] if c[0] == "qsub"]
    assert len(qsub) == 1
    argv = qsub[0]
    assert argv[argv.index("-N") + 1] == f"hpcsera-{CALL}"
    assert argv[argv.index("-l") + 1] == "walltime=00:02:00"
    assert argv[argv.index("-q") + 1] == "short"
    assert argv[argv.index("--") + 1].endswith("functions/pbsjob")
    job_id = agent.journal.get(CALL)["batch_job_id"]
    assert job_id == "101.pbs01"
    (tmp_path / "state" / "calls" / CALL / "stdout").write_text("from-pbs\n")
    fake_batch.set_job(job_id, state="F", pbs={"Exit_status": 0})

    assert agent.poll_batch_step() == 1
    report = client.final(CALL)
    assert report["state"] == "succeeded" and report["stdout"] == "from-pbs\n"


def test_qselect_finds_the_newest_job_of_a_name_and_qdel_cancels(tmp_path):
    commands = tmp_path / "cmds"
    qselect = tmp_path / "qselect"
    qselect.write_text(f"#!/bin/sh\ncat {FIXTURES / 'qselect.txt'}\n")
    qdel = tmp_path / "qdel"
    qdel.write_text(f'#!/bin/sh\necho "$@" >> {commands}\n')
    for script in (qselect, qdel):
        script.chmod(0o755)
    agent = make_agent(
        tmp_path, FakeClient(), pbs={"qselect": str(qselect), "qdel": str(qdel)}
    )

    assert pbs.find("hpcsera-x", agent.config) == "2017.pbs01"
    pbs.cancel("2017.pbs01", agent.config)
    assert commands.read_text() == "2017.pbs01\n"
