"""Every reference in the repository's text files names a file that exists and, for a numbered section
of a Markdown file (the section sign followed by a number), a section that exists.

Two forms are checked: a file path followed by a section sign and numbers (one number, a dotted
number, a range or a comma list), and the word "see" followed by a file path. A section sign with no
file path before it refers to the sections of the Markdown file it is written in, and is an error
anywhere else. Paths are relative to the repository root or to the referring file's directory.
"""

import os
import re
import subprocess
import sys

import pytest

# The source tree, where git lists the tracked files: under Bazel this file is a symlink in a
# runfiles tree that holds only the test's declared inputs, so the path is taken from its target.
REPO = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))

SECTION_SIGN = "\u00a7"
_TEXT_SUFFIXES = (".py", ".md", ".sh", ".txt", ".bzl", ".ini", ".cfg", ".toml", ".yaml", ".yml")
_TEXT_NAMES = ("BUILD", "WORKSPACE", "run")
_SKIPPED_DIRECTORIES = {".git", ".venv", "demo_output", "__pycache__"}

# A path to a file of the kinds that live in the repository (generated files such as
# build_summary.json are not references to check).
_PATH = r"(?P<path>(?:[\w.-]+/)*[\w-][\w.-]*\.(?:md|py|sh|bzl)\b|(?:[\w.-]+/)+BUILD\b)"
_NUMBERS = r"(?P<sections>\d+(?:\.\d+)*(?:\s*[-\u2013,]\s*\d+(?:\.\d+)*)*)"
_FILE_SECTION = re.compile(_PATH + r"`?,?\s*" + SECTION_SIGN + r"\s*" + _NUMBERS)
_OWN_SECTION = re.compile(SECTION_SIGN + r"\s*" + _NUMBERS)
_SEE_FILE = re.compile(r"\b[Ss]ee\s+(?:also\s+)?`?" + _PATH)
_HEADING = re.compile(r"^#{1,6}\s+(\d+(?:\.\d+)*)\.?\s", re.MULTILINE)


def tracked_text_files(root):
    """Paths (relative to `root`) of the text files git tracks there, or of all text files when
    `root` is not a git checkout."""
    try:
        listed = subprocess.run(["git", "-C", root, "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard"], capture_output=True,
                                check=True, timeout=60).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):
        listed = []
        for directory, subdirectories, files in os.walk(root):
            subdirectories[:] = [d for d in subdirectories if d not in _SKIPPED_DIRECTORIES]
            listed.extend(os.path.relpath(os.path.join(directory, name), root) for name in files)
    return sorted(path for path in listed
                  if path and (path.endswith(_TEXT_SUFFIXES) or os.path.basename(path) in _TEXT_NAMES)
                  and os.path.isfile(os.path.join(root, path)))


def _expand(sections):
    """'5-6' -> ['5', '6'], '3.1, 3.2' -> ['3.1', '3.2'], '7' -> ['7']."""
    numbers = []
    for part in re.split(r"\s*,\s*", sections):
        ends = re.split(r"\s*[-\u2013]\s*", part)
        if len(ends) == 2 and ends[0].isdigit() and ends[1].isdigit():
            numbers.extend(str(n) for n in range(int(ends[0]), int(ends[1]) + 1))
        else:
            numbers.extend(ends)
    return numbers


class _Sections:
    """Numbered headings of Markdown files, read once."""

    def __init__(self, root):
        self._root = root
        self._cache = {}

    def of(self, relative_path):
        if relative_path not in self._cache:
            with open(os.path.join(self._root, relative_path), encoding="utf-8") as handle:
                self._cache[relative_path] = set(_HEADING.findall(handle.read()))
        return self._cache[relative_path]


def _resolve(root, referring_file, path):
    """The referenced file relative to `root`, or None when it exists neither there nor beside the
    referring file."""
    for candidate in (path, os.path.join(os.path.dirname(referring_file), path)):
        candidate = os.path.normpath(candidate)
        if os.path.isfile(os.path.join(root, candidate)):
            return candidate
    return None


def find_broken_references(root, files):
    """['file:line: what is wrong'] for every reference in `files` (relative to `root`) that names a
    file or a section that does not exist."""
    sections = _Sections(root)
    broken = []
    for referring in files:
        with open(os.path.join(root, referring), encoding="utf-8", errors="replace") as handle:
            lines = handle.read().splitlines()
        is_markdown = referring.endswith(".md")
        for number, line in enumerate(lines, start=1):
            where = f"{referring}:{number}"
            covered = []
            for match in _FILE_SECTION.finditer(line):
                covered.append(match.span())
                target = _resolve(root, referring, match.group("path"))
                if target is None:
                    broken.append(f"{where}: {match.group('path')} does not exist")
                elif not target.endswith(".md"):
                    broken.append(f"{where}: {match.group('path')} has no numbered sections")
                else:
                    broken.extend(f"{where}: {target} has no section {SECTION_SIGN}{section}"
                                  for section in _expand(match.group("sections"))
                                  if section not in sections.of(target))
            for match in _OWN_SECTION.finditer(line):
                if any(start <= match.start() < end for start, end in covered):
                    continue
                if not is_markdown:
                    broken.append(f"{where}: {SECTION_SIGN}{match.group('sections')} names no file")
                    continue
                broken.extend(f"{where}: no section {SECTION_SIGN}{section} in this file"
                              for section in _expand(match.group("sections"))
                              if section not in sections.of(referring))
            if line.count(SECTION_SIGN) > len(_OWN_SECTION.findall(line)):
                broken.append(f"{where}: a section sign without a section number")
            for match in _SEE_FILE.finditer(line):
                if _resolve(root, referring, match.group("path")) is None:
                    broken.append(f"{where}: {match.group('path')} does not exist")
    return broken


def test_every_reference_in_the_repository_exists():
    files = tracked_text_files(REPO)
    assert "docs/DESIGN.md" in files and "official/xception/model_fn.py" in files
    assert find_broken_references(REPO, files) == []


def _write(root, path, text):
    full = os.path.join(root, path)
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w", encoding="utf-8") as handle:
        handle.write(text)


def test_broken_references_are_reported_and_good_ones_are_not(tmp_path):
    sign = SECTION_SIGN
    root = str(tmp_path)
    _write(root, "docs/GUIDE.md", "# Guide\n\n## 1. One\n\n### 1.2 Detail\n\n## 2. Two\n\n"
                                  f"Back to {sign}1 and {sign}3.\n")
    _write(root, "pkg/helper.py", "")
    see = "See"
    _write(root, "pkg/module.py", "\n".join([
        f"# docs/GUIDE.md {sign}1, docs/GUIDE.md {sign}1.2 and docs/GUIDE.md {sign}1-2 exist.",
        f"# {see} helper.py (beside this file) and {see.lower()} pkg/helper.py (from the root).",
        f"# docs/GUIDE.md {sign}4 is not a section.",
        f"# GUIDE.md {sign}1 is not beside this file.",
        f"# docs/GUIDE.md {sign}2-3: the range runs past the end.",
        f"# {see.lower()} docs/missing.py for nothing.",
        f"# GUIDE {sign}2 names no file.",
        f"# pkg/helper.py {sign}1 has no sections.",
    ]) + "\n")
    assert find_broken_references(root, tracked_text_files(root)) == [
        f"docs/GUIDE.md:9: no section {sign}3 in this file",
        f"pkg/module.py:3: docs/GUIDE.md has no section {sign}4",
        "pkg/module.py:4: GUIDE.md does not exist",
        f"pkg/module.py:5: docs/GUIDE.md has no section {sign}3",
        "pkg/module.py:6: docs/missing.py does not exist",
        f"pkg/module.py:7: {sign}2 names no file",
        "pkg/module.py:8: pkg/helper.py has no numbered sections",
    ]


@pytest.mark.parametrize("reference, broken", [
    ("DESIGN.md " + SECTION_SIGN + "5-6", 1),    # the form this repository used to have
    ("DESIGN " + SECTION_SIGN + "2", 1),
    ("docs/DESIGN.md " + SECTION_SIGN + "99", 1),
    ("docs/DESIGN.md " + SECTION_SIGN + "8", 0),
])
def test_references_from_a_source_file_to_the_design_document(reference, broken, tmp_path):
    root = str(tmp_path)
    with open(os.path.join(REPO, "docs", "DESIGN.md"), encoding="utf-8") as handle:
        _write(root, "docs/DESIGN.md", handle.read())
    _write(root, "official/xception/model_fn.py", f'"""Pitfalls ({reference})."""\n')
    assert len(find_broken_references(root, tracked_text_files(root))) == broken


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
