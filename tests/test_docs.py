"""The documentation's references resolve inside the repository: every relative link of the README, docs/ and the
results records names a file that exists, and every "reference §N" in the code and docs names a section or item of
docs/reference.md."""
import glob
import os
import re

from conftest import ROOT_DIR

LINK = re.compile(r'\[[^\]]*\]\(([^)\s]+)\)')
CITATION = re.compile(r'reference (§[0-9][0-9.]*(?:\s*(?:,|and)\s*§?[0-9][0-9.]*)*)')


def markdown_files():
    return [os.path.join(ROOT_DIR, 'README.md')] + sorted(
        glob.glob(os.path.join(ROOT_DIR, 'docs', '*.md')) + glob.glob(os.path.join(ROOT_DIR, 'results', '**', '*.md'),
                                                                   recursive=True))


def source_files():
    return sorted(glob.glob(os.path.join(ROOT_DIR, '*.py')) + glob.glob(os.path.join(ROOT_DIR, 'config', '*.py')) +
                  glob.glob(os.path.join(ROOT_DIR, 'tests', '*.py'))) + markdown_files()


def reference_sections():
    """The numbers docs/reference.md gives its sections ('## 1. ...', '### 1.3 ...') and items ('- **7.8** ...')."""
    text = open(os.path.join(ROOT_DIR, 'docs', 'reference.md')).read()
    return set(re.findall(r'^#{2,3} ([0-9]+(?:\.[0-9]+)?)\.?\s', text, re.M) +
               re.findall(r'^\s*(?:[-*] |[0-9]+\. )?\*\*([0-9]+\.[0-9]+)[ *]', text, re.M))


def test_relative_links_resolve():
    broken = []
    for path in markdown_files():
        for target in LINK.findall(open(path).read()):
            if re.match(r'[a-z]+:', target) or target.startswith('#'):
                continue  # a web address, or a heading of the same page
            if not os.path.exists(os.path.join(os.path.dirname(path), target.split('#')[0])):
                broken.append(f"{os.path.relpath(path, ROOT_DIR)}: {target}")
    assert broken == []


def test_every_reference_citation_resolves():
    sections = reference_sections()
    assert {'1.3', '4', '5.1', '7.8'} <= sections  # the checker itself reads the headings and the numbered items
    unresolved = []
    for path in source_files():
        for group in CITATION.findall(open(path).read()):
            for number in re.findall(r'[0-9]+(?:\.[0-9]+)?', group):
                if number not in sections:
                    unresolved.append(f"{os.path.relpath(path, ROOT_DIR)}: reference §{number}")
    assert unresolved == []


def test_nothing_points_outside_the_repository():
    outside = re.compile(r'\.\./shared|shared/[a-z-]+\.md|\bissue \d+\b|evaluation notes', re.I)  # not ours
    found = [f"{os.path.relpath(p, ROOT_DIR)}: {m.group(0)}" for p in source_files() if not p.endswith('test_docs.py')
             for m in outside.finditer(open(p).read())]
    assert found == []
