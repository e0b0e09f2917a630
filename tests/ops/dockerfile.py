"""The Dockerfile read as instructions per stage, for the container and Kubernetes checks."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from dockerfile_parse import DockerfileParser

DOCKERFILE = Path(__file__).resolve().parents[2] / "Dockerfile"
Instruction = dict[str, Any]


def stages() -> list[list[Instruction]]:
    """Instructions (comments left out), one list per stage; ARGs before the first FROM are
    in stage 0 with it."""
    out: list[list[Instruction]] = [[]]
    for ins in DockerfileParser(str(DOCKERFILE)).structure:
        if ins["instruction"] == "FROM" and any(i["instruction"] == "FROM" for i in out[-1]):
            out.append([])
        if ins["instruction"] != "COMMENT":
            out[-1].append(ins)
    return out


def final(instruction: str) -> list[str]:
    """The values of ``instruction`` in the final (runtime) stage."""
    return [i["value"] for i in stages()[-1] if i["instruction"] == instruction]


def env(stage: list[Instruction]) -> dict[str, str]:
    """The ``ENV`` settings of a stage (values as written, ``${...}`` not expanded)."""
    out: dict[str, str] = {}
    for ins in stage:
        if ins["instruction"] == "ENV":
            for word in shlex.split(ins["value"]):
                key, _, value = word.partition("=")
                out[key] = value
    return out


def arg_defaults() -> dict[str, str]:
    """Every ``ARG name=default`` of every stage."""
    out = {}
    for stage in stages():
        for ins in stage:
            if ins["instruction"] == "ARG" and "=" in ins["value"]:
                key, _, value = ins["value"].partition("=")
                out[key.strip()] = value.strip()
    return out
