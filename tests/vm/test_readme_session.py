"""README.md's example session, command by command, on the VM tier's VMs.

The session is the ```console block after "An example session" in README.md: each line
starting with ``# `` is a command, the lines below it are its output. ``lab1`` is the
tier's ``t-plain`` and ``sb1`` its ``t-sb`` (in commands and in output). Every command
must match one rule of ``RULES``; a command no rule knows fails the test, so a command
added to the README is either proven here or given a rule saying who proves it:

- run as written: ``kmodlab ssh`` (through ``.venv/bin/kmodlab`` on the tier's lab; its
  stdout must be the README's output);
- done by the tier's fixtures, which this test requests: ``image build`` (``images``),
  ``vm up`` (``guests``; checked: the same profile, Secure Boot and, with it, the
  project key enrolled),
  ``ansible-playbook lab.yml`` (``test_zzzz_lab.py``: molecule default converges a fresh
  lab-profile VM, as lab1 is, with lab.yml and the lab inventory; checked here: lab1 is
  the only VM the session runs at that point);
- ``vm down``: ``test_zz_down.py``, last in the tier; it must end the session.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from vmhelpers import PLAIN, ROOT, SB, VENV, Guest, kmodlab

from kmodlab import keys
from kmodlab.lab import image

README = ROOT / "README.md"
NAMES = {"lab1": PLAIN, "sb1": SB}


@dataclass
class Step:
    """One command of the session: its README line, words and the output shown below."""

    line: int
    command: str
    output: list[str] = field(default_factory=list)

    @property
    def words(self) -> list[str]:
        return shlex.split(self.command)

    def __str__(self) -> str:
        return f"README.md:{self.line}: `{self.command}`"


def session(text: str) -> list[Step]:
    match = re.search(r"^An example session.*?^```console\n(.*?)^```$", text, re.S | re.M)
    assert match, "README.md has no ```console block after 'An example session'"
    first = text[: match.start(1)].count("\n") + 1
    steps: list[Step] = []
    for n, line in enumerate(match.group(1).splitlines(), start=first):
        if line.startswith("# "):
            steps.append(Step(n, line[2:].strip()))
        else:
            assert steps, f"README.md:{n}: output before the session's first command"
            steps[-1].output.append(line)
    return steps


def rename(text: str) -> str:
    """The README's VM names as the tier's."""
    return re.sub(r"\b(lab1|sb1)\b", lambda m: NAMES[m.group(1)], text)


@dataclass
class Ctx:
    guests: dict[str, Guest]
    workdir: Path  # the session's working directory
    project_key: keys.KeyPair  # the tier's key store's project key
    done: list[Step] = field(default_factory=list)  # the steps before this one

    def guest(self, name: str) -> Guest:
        assert name in NAMES, f"the tier has no VM for the README's {name!r}"
        return self.guests[NAMES[name]]


def activate(step: Step, ctx: Ctx) -> None:
    """kmodlab() runs .venv/bin/kmodlab, what the activated virtualenv puts on PATH."""
    assert (ROOT / ".venv/bin/activate").is_file()
    assert (VENV / "kmodlab").is_file() and (VENV / "ansible-playbook").is_file()


def image_build(step: Step, ctx: Ctx) -> None:
    """The ``images`` fixture builds (or finds current) both profiles' images, as root."""


def vm_up(step: Step, ctx: Ctx) -> None:
    """The ``guests`` fixture booted the VM as the README asks (profile, Secure Boot, MOK)."""
    words = step.words[3:]
    names, profile, secure_boot, keys, project = [], "lab", False, [], True
    while words:
        word = words.pop(0)
        if word == "--profile":
            profile = words.pop(0)
        elif word == "--secure-boot":
            secure_boot = True
        elif word == "--enroll-key":
            keys.append(words.pop(0))
        elif word == "--no-project-key":
            project = False
        elif not word.startswith("-"):
            names.append(word)
        else:
            pytest.fail(f"{step}: this test does not know `vm up {word}`: add it to vm_up()")
    assert names, f"{step}: no VM name (the tier's VMs have names)"
    assert not keys, f"{step}: the tier enrols no certificate besides the project key"
    for name in names:
        vm = ctx.guest(name).vm
        assert vm.profile == profile, f"{step}: the tier's {vm.name} has profile {vm.profile}"
        assert vm.secure_boot == secure_boot, f"{step}: {vm.name} secure_boot={vm.secure_boot}"
        # --secure-boot enrols the project key (the tier's store) unless told not to
        want = [str(ctx.project_key.cert.der_path)] if secure_boot and project else []
        assert vm.enrolled_keys == want, f"{step}: {vm.name} {vm.enrolled_keys}"


def ssh(step: Step, ctx: Ctx) -> None:
    """Run on the tier's VM as written; stdout must be the README's output, line for line."""
    _kmodlab, _ssh, name, *command = step.words
    target = ctx.guest(name)
    proc = kmodlab("ssh", target.vm.name, *command, lab=target.lab, check=False)
    assert proc.returncode == 0, f"{step}: exit {proc.returncode}\n{proc.stdout}{proc.stderr}"
    expected = [rename(line) for line in step.output]
    assert proc.stdout.splitlines() == expected, f"{step}:\n{proc.stdout}{proc.stderr}"


def lab_yml(step: Step, ctx: Ctx) -> None:
    """test_zzzz_lab.py runs it (molecule default: converge, idempotence, verify on a
    fresh lab-profile VM); in the session only lab1 runs at that point."""
    ups = [s for s in ctx.done if s.words[:3] == ["kmodlab", "vm", "up"]]
    running = {w for s in ups for w in s.words[3:] if w in NAMES}
    assert running == {"lab1"}, f"{step}: lab.yml would run on {sorted(running)}, not lab1 alone"


def vm_down(step: Step, ctx: Ctx) -> None:
    """test_zz_down.py runs it, last in the tier: here it must end the session."""
    assert step is STEPS[-1], f"{step}: commands after `vm down` would run on stopped VMs"


Rule = tuple[str, Callable[[Step, Ctx], None]]
RULES: list[Rule] = [
    (r"\. \.venv/bin/activate", activate),
    (r"kmodlab image build --profile (lab|bare)", image_build),
    (r"kmodlab vm up .*", vm_up),
    (r"kmodlab ssh \S+ .+", ssh),
    (r"ansible-playbook lab\.yml", lab_yml),
    (r"kmodlab vm down", vm_down),
]
STEPS = session(README.read_text())


def rule_for(step: Step) -> Callable[[Step, Ctx], None] | None:
    handlers = [h for pattern, h in RULES if re.fullmatch(pattern, step.command)]
    assert len(handlers) <= 1, f"{step}: more than one rule"
    return handlers[0] if handlers else None


def test_every_readme_command_has_a_rule_and_every_rule_a_command() -> None:
    unknown = [str(s) for s in STEPS if rule_for(s) is None]
    assert not unknown, "commands this test does not know how to treat:\n" + "\n".join(unknown)
    used = {rule_for(s) for s in STEPS}
    unused = [pattern for pattern, h in RULES if h not in used]
    assert not unused, f"rules no README command uses (remove them): {unused}"


def test_readme_session_works_as_written(
    guests: dict[str, Guest],
    images: dict[str, image.Image],  # the image build steps
    tmp_path: Path,
    project_key: keys.KeyPair,
) -> None:
    ctx = Ctx(guests=guests, workdir=tmp_path, project_key=project_key)
    try:
        for step in STEPS:
            handler = rule_for(step)
            assert handler is not None, f"{step}: no rule for this command"
            print(f"{step} -> {handler.__name__}")
            handler(step, ctx)
            ctx.done.append(step)
    finally:
        # modprobe dummy of the session: leave the VM as the other tests expect.
        guests[PLAIN].run("sudo modprobe -r dummy", check=False)
