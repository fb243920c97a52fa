"""The README and docs/ stay navigable: links resolve, and the commands they name exist.

Checked for README.md and every docs/*.md:
- every relative link and image target resolves to a file or directory in the tree, and an
  ``#anchor`` (on the same page or on another Markdown page) names one of its headings, with
  the code host's heading slugs;
- every ``flowctl SUB [SUB2] --flag`` command line in a shell block or an inline code span
  names a subcommand that ``flowctl --help`` lists and flags that ``flowctl SUB --help`` prints
  (``flowctl sidecar --help`` and ``python -m sidecar --help`` print the sidecar's own help).
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from flowctl.cli import main

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~)(.*)$")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)
_SHELL_LANGS = {"", "sh", "shell", "bash", "console"}
_FLAG = re.compile(r"^(--[a-z][a-z0-9-]*|-[a-zA-Z])(?:=.*)?$")


def _split_fences(text: str) -> tuple[str, list[tuple[str, list[str]]]]:
    """The text outside fenced blocks (fences blanked, lines kept) and each block's language and lines."""
    prose: list[str] = []
    blocks: list[tuple[str, list[str]]] = []
    current: list[str] | None = None
    fence = ""
    for line in text.split("\n"):
        m = _FENCE.match(line.strip())
        if current is None and m:
            fence, current = m.group(1), []
            blocks.append((m.group(2).strip().lower(), current))
            prose.append("")
        elif current is not None and line.strip().startswith(fence):
            current = None
            prose.append("")
        elif current is not None:
            current.append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def slug(heading: str) -> str:
    """The anchor a code host (GitHub's rules) gives a heading: lower case, punctuation dropped, spaces to '-'."""
    text = re.sub(r"`|\*\*|\*|_(?=\w)|(?<=\w)_", "", heading.strip()).lower()
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading anchor of a Markdown page (duplicates get -1, -2, ... as on the code host)."""
    prose, _ = _split_fences(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out: set[str] = set()
    for line in prose.split("\n"):
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> Iterator[str]:
    """Link and image targets outside code (fenced blocks and inline code spans)."""
    prose, _ = _split_fences(page.read_text(encoding="utf-8"))
    prose = _CODE_SPAN.sub(lambda m: " " * len(m.group(0)), prose)
    for m in _LINK.finditer(prose):
        yield m.group(1)


def broken_links(page: Path, root: Path = ROOT) -> list[str]:
    """The relative targets of `page` that resolve to nothing under `root` (or to a missing heading)."""
    bad: list[str] = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto: ...
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page
        if not dest.exists():
            bad.append(f"{target}: no such file")
            continue
        if root not in dest.parents and dest != root:
            bad.append(f"{target}: outside the repository")
            continue
        if anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            bad.append(f"{target}: no heading with anchor #{anchor} in {dest.relative_to(root)}")
    return bad


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_and_images_resolve(page: Path) -> None:
    assert broken_links(page) == []


def test_the_readme_links_into_every_docs_page() -> None:
    targets = {t.partition("#")[0] for t in links(ROOT / "README.md")}
    for page in (ROOT / "docs").glob("*.md"):
        assert f"docs/{page.name}" in targets, f"README.md has no link to docs/{page.name}"


def test_broken_links_are_reported(tmp_path: Path) -> None:
    """The checker itself: a missing file, a missing anchor and a link in code (ignored)."""
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other page\n\n## Step: 1.0 -> 0.5\n")
    page.write_text(
        "# Title\n\n[ok](other.md#step-10---05) [self](#title) [gone](missing.md)\n"
        "![img](pic.png) [bad anchor](other.md#nope) `[code](ignored.md)`\n"
        "```\n[fenced](ignored-too.md)\n```\n[web](https://example.com/x)\n"
    )
    bad = broken_links(page, root=tmp_path)
    assert [b.split(":")[0] for b in bad] == ["missing.md", "pic.png", "other.md#nope"]


# --- commands ---------------------------------------------------------------------------------


def _help(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """What ``flowctl ARGV --help`` prints (in process; argparse exits 0 after printing)."""
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out, f"flowctl {' '.join(argv)} --help printed nothing"
    return out


def _subcommands(help_text: str) -> set[str]:
    """Subcommand names listed under an argparse help's positional-arguments section."""
    names: set[str] = set()
    for line in help_text.split("\n"):
        m = re.match(r"^    ([a-z][a-z0-9-]*)(?:\s{2,}|$)", line)
        if m:
            names.add(m.group(1))
    return names


def _command_lines(text: str) -> Iterator[str]:
    """Shell command lines: every line of a shell fenced block, and every inline code span."""
    prose, blocks = _split_fences(text)
    for lang, lines in blocks:
        if lang in _SHELL_LANGS:
            yield from re.sub(r"\\\n", " ", "\n".join(lines)).split("\n")
    for m in _CODE_SPAN.finditer(prose):
        yield " ".join(m.group(2).split())


def flowctl_invocations(text: str) -> Iterator[tuple[list[str], list[str], str]]:
    """(subcommand path, flags, the command as written) for each flowctl / python -m sidecar call."""
    for line in _command_lines(text):
        line = re.sub(r"(^|\s)#.*$", "", line)  # a shell comment
        for segment in re.split(r"&&|\|\||[;|&]", line):
            try:
                words = shlex.split(segment)
            except ValueError:
                words = segment.split()
            while words and (words[0] in {"$", "sudo"} or re.match(r"^[A-Z_][A-Z0-9_]*=", words[0])):
                words = words[1:]
            if not words:
                continue
            if words[0] == "flowctl" or words[0].endswith("/flowctl"):
                rest = words[1:]
            elif words[:3] in (["python", "-m", "sidecar"], ["python3", "-m", "sidecar"]) or (
                len(words) >= 3 and words[0].endswith("/python") and words[1:3] == ["-m", "sidecar"]
            ):
                rest = ["sidecar", *words[3:]]
            else:
                continue
            if not rest or not re.match(r"^[a-z][a-z0-9-]*$", rest[0]):
                continue
            path = [rest[0]]
            args = rest[1:]
            if path[0] == "demo" and args and re.match(r"^[a-z][a-z0-9-]*$", args[0]):
                path.append(args[0])
                args = args[1:]
            if "--" in args:  # flowctl run ... -- CMD: the rest belongs to the command
                args = args[: args.index("--")]
            flags = []
            for a in args:
                m = _FLAG.match(a.strip("[]"))
                if m:
                    flags.append(m.group(1))
            yield path, flags, segment.strip()


def test_the_readme_names_flowctl_commands() -> None:
    """Guards the parser below: the README's quick starts must be found."""
    named = {" ".join(path) for path, _, _ in flowctl_invocations((ROOT / "README.md").read_text(encoding="utf-8"))}
    assert {"inspect", "run", "sidecar", "demo cpu"} <= named


def unknown_commands(text: str, help_of: Callable[[list[str]], str]) -> list[str]:
    """Each flowctl call in `text` whose subcommand or flag its --help (``help_of(path)``) does not name."""
    helps: dict[str, str] = {}

    def cached(path: list[str]) -> str:
        return helps.setdefault(" ".join(path), help_of(path))

    top = _subcommands(cached([]))
    wrong: list[str] = []
    for path, flags, written in flowctl_invocations(text):
        if path[0] not in top:
            wrong.append(f"{written!r}: flowctl has no subcommand {path[0]!r}")
            continue
        if len(path) > 1 and path[1] not in _subcommands(cached(path[:1])):
            wrong.append(f"{written!r}: flowctl {path[0]} has no subcommand {path[1]!r}")
            continue
        known = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-zA-Z])(?![\w-])", cached(path)))
        wrong += [f"{written!r}: flowctl {' '.join(path)} --help has no {f}" for f in flags if f not in known]
    return wrong


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_named_subcommands_and_flags_exist(page: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert {"inspect", "run", "demo", "sidecar"} <= _subcommands(_help([], capsys))
    assert unknown_commands(page.read_text(encoding="utf-8"), lambda path: _help(path, capsys)) == []


def test_a_made_up_flag_is_reported() -> None:
    """The checker itself: flags, subcommands, `run --` and `python -m sidecar` are parsed as meant."""
    text = (
        "```sh\nflowctl inspect --json --no-such-flag   # a comment --ignored\n"
        "sudo flowctl run --cpus 0.5 -- python3 -c 'x' --child-flag\n```\n"
        "`flowctl demo cpu [--plot FILE.png]` and `python -m sidecar --listen=:1` and `flowctl.aiohttp`\n"
        "```python\nfrom flowctl import Limiter\n```\n"
    )
    assert list(flowctl_invocations(text)) == [
        (["inspect"], ["--json", "--no-such-flag"], "flowctl inspect --json --no-such-flag"),
        (["run"], ["--cpus"], "sudo flowctl run --cpus 0.5 -- python3 -c 'x' --child-flag"),
        (["demo", "cpu"], ["--plot"], "flowctl demo cpu [--plot FILE.png]"),
        (["sidecar"], ["--listen"], "python -m sidecar --listen=:1"),
    ]


def test_unknown_subcommands_and_flags_are_reported(capsys: pytest.CaptureFixture[str]) -> None:
    text = (
        "```sh\nflowctl inspect --json --no-such-flag\nflowctl demo gpu\nflowctl frobnicate\n"
        "flowctl sidecar --upstream http://x --watch process:app --no-such-option\n```\n"
    )
    assert unknown_commands(text, lambda path: _help(path, capsys)) == [
        "'flowctl inspect --json --no-such-flag': flowctl inspect --help has no --no-such-flag",
        "'flowctl demo gpu': flowctl demo has no subcommand 'gpu'",
        "'flowctl frobnicate': flowctl has no subcommand 'frobnicate'",
        "'flowctl sidecar --upstream http://x --watch process:app --no-such-option': "
        "flowctl sidecar --help has no --no-such-option",
    ]
