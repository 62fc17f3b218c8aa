# Test the documentation: generated parameter tables are current, the README stays a front
# page with the two fresh-machine commands, relative links resolve, no machine paths.
import re
from pathlib import Path

from av_td3_ros.tools import param_docs

REPO = Path(__file__).resolve().parents[1]
PAGES = [REPO / 'README.md', REPO / 'CONTRIBUTING.md', *sorted((REPO / 'docs').rglob('*.md'))]
# [text](target) and ![alt](target); the target ends at whitespace or ')'.
LINK = re.compile(r'!?\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)')


def test_parameter_tables_are_generated_from_the_current_schemas():
    assert param_docs.stale(REPO) == [], \
        'run: python -m av_td3_ros.tools.param_docs --write'


def test_every_node_table_has_a_page_with_markers():
    for node, (_, _, page) in param_docs.TABLES.items():
        text = (REPO / page).read_text()
        assert f'<!-- params:{node} begin -->' in text and f'<!-- params:{node} end -->' in text


def test_readme_is_a_front_page_with_the_fresh_machine_commands():
    lines = (REPO / 'README.md').read_text().splitlines()
    assert len(lines) <= 250
    first_screen = '\n'.join(lines[:40])
    assert 'bash scripts/demo.sh' in first_screen
    assert 'bash scripts/test.sh' in first_screen


def test_relative_links_point_to_existing_files():
    broken = []
    for page in PAGES:
        # Links inside code blocks are examples, not links.
        text = re.sub(r'```.*?```', '', page.read_text(), flags=re.S)
        for target in LINK.findall(text):
            if re.match(r'[a-z][a-z0-9+.-]*:', target) or target.startswith('#'):
                continue  # a URL or an anchor on the same page
            path = target.split('#', 1)[0]
            if not (page.parent / path).exists():
                broken.append(f'{page.relative_to(REPO)}: {target}')
    assert broken == []


def test_every_docs_page_is_linked_from_the_readme():
    readme = (REPO / 'README.md').read_text()
    linked = {(REPO / target.split('#', 1)[0]).resolve() for target in LINK.findall(readme)}
    missing = [str(page.relative_to(REPO)) for page in (REPO / 'docs').rglob('*.md')
               if page.resolve() not in linked]
    assert missing == []


def test_no_doc_names_a_machine_path():
    for page in PAGES:
        assert '/work/' not in page.read_text(), page
