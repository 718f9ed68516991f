"""Just enough Dockerfile and .dockerignore reading to check the image without a Docker engine."""

from __future__ import annotations

import json
import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Instruction:
    keyword: str
    args: str
    stage: int  # index of the FROM it belongs to

    def exec_form(self) -> list[str] | None:
        """The JSON (exec) form of the arguments, or None for the shell form."""
        text = self.args.strip()
        if not text.startswith("["):
            return None
        value = json.loads(text)
        assert isinstance(value, list)
        return [str(v) for v in value]


def parse(path: Path) -> list[Instruction]:
    """Instructions in order: comments dropped, backslash continuations joined."""
    out: list[Instruction] = []
    stage = -1
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        keyword, _, args = full.partition(" ")
        keyword = keyword.upper()
        if keyword == "FROM":
            stage += 1
        out.append(Instruction(keyword, args.strip(), stage))
    return out


def healthcheck_command(instr: Instruction) -> list[str]:
    """The CMD of a HEALTHCHECK, after its --options."""
    _, _, cmd = instr.args.partition("CMD ")
    return json.loads(cmd) if cmd.strip().startswith("[") else ["/bin/sh", "-c", cmd]


def copy_sources(instr: Instruction) -> tuple[list[str], str]:
    """``COPY [--from=x] src... dest`` → (sources, dest); sources of a --from copy are not in the context."""
    parts = [p for p in shlex.split(instr.args) if not p.startswith("--")]
    return parts[:-1], parts[-1]


def _pattern(p: str) -> re.Pattern[str]:
    # Docker's .dockerignore: Go filepath.Match plus "**" for any number of directories.
    out = ""
    i = 0
    while i < len(p):
        if p.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif p.startswith("**", i):
            out += ".*"
            i += 2
        elif p[i] == "*":
            out += "[^/]*"
            i += 1
        elif p[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(p[i])
            i += 1
    return re.compile(out + "$")


def context_files(root: Path, dockerignore: Path) -> list[str]:
    """The files ``docker build`` sends from ``root`` (paths relative to it), honouring ``.dockerignore``."""
    rules = []
    for raw in dockerignore.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        rules.append((negate, _pattern(line.lstrip("!").strip("/"))))
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in (".git", ".venv")]
        for name in filenames:
            rel = str(Path(dirpath, name).relative_to(root))
            parents = [str(Path(*Path(rel).parts[: i + 1])) for i in range(len(Path(rel).parts))]
            excluded = False
            for negate, rx in rules:
                # A pattern that matches a parent directory covers everything below it.
                if any(rx.match(p) for p in parents):
                    excluded = not negate
            if not excluded:
                files.append(rel)
    return sorted(files)
