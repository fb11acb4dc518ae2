#!/usr/bin/env python3
"""A fake batch system for agent unit tests: sbatch, sacct, squeue, scancel,
qsub, qstat, qselect and qdel as one script, chosen by the name it is called
by. Jobs live in the JSON file named by $FAKE_BATCH_DB; every invocation is
appended to its "calls" list so tests can count submissions. Behaviour knobs in
the same file: "fail" (a list of command names that exit 1)."""

import json
import os
import sys

DB = os.environ["FAKE_BATCH_DB"]


def load():
    try:
        with open(DB) as handle:
            return json.load(handle)
    except FileNotFoundError:
        return {"jobs": {}, "calls": [], "fail": [], "next": 100}


def option(args, name):
    for i, arg in enumerate(args):
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
        if arg == name and i + 1 < len(args):
            return args[i + 1]
    return None


def main():
    command = os.path.basename(sys.argv[0])
    args = sys.argv[1:]
    db = load()
    db["calls"].append([command, *args])
    out = ""
    if command in db["fail"]:
        save(db)
        print(f"{command}: error: fake failure", file=sys.stderr)
        return 1
    if command in ("sbatch", "qsub"):
        db["next"] += 1
        job_id = str(db["next"]) if command == "sbatch" else f"{db['next']}.pbs01"
        name = option(args, "--job-name") or option(args, "-N")
        db["jobs"][job_id] = {"name": name, "state": "PENDING", "exit": "0:0"}
        out = job_id + "\n"
    elif command == "sacct":
        ids = (option(args, "-j") or "").split(",")
        name = option(args, "--name")
        for job_id, job in db["jobs"].items():
            if job_id in ids or job["name"] == name:
                out += f"{job_id}|{job['name']}|{job['state']}|{job['exit']}\n"
    elif command == "squeue":
        ids = (option(args, "-j") or "").split(",")
        name = option(args, "--name")
        for job_id, job in db["jobs"].items():
            if job_id in ids or job["name"] == name:
                out += f"{job_id}|{job['name']}|{job['state']}\n"
    elif command == "qselect":
        name = option(args, "-N")
        out = "".join(f"{i}\n" for i, j in db["jobs"].items() if j["name"] == name)
    elif command == "qstat":
        ids = [a for a in args if a[0].isdigit()]
        jobs = {
            i: {"Job_Name": j["name"], "job_state": j["state"], **j.get("pbs", {})}
            for i, j in db["jobs"].items()
            if i in ids
        }
        out = json.dumps({"Jobs": jobs})
    elif command in ("scancel", "qdel"):
        db["jobs"][args[0]]["state"] = "CANCELLED" if command == "scancel" else "F"
    save(db)
    sys.stdout.write(out)
    return 0


def save(db):
    with open(DB + ".tmp", "w") as handle:
        json.dump(db, handle)
    os.replace(DB + ".tmp", DB)


sys.exit(main())
