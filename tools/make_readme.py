"""Write README.md from nbs/index.ipynb (quarto, and so `nbdev_readme`, is unavailable here).

Markdown cells are copied; code cells are shown as python blocks with their text outputs, except cells whose
first line is `#| hide`; cells marked `#| echo: false` show only their output. `--check` exits 1 when README.md is out of date instead of writing it.
"""
import sys, json
from pathlib import Path

root = Path(__file__).resolve().parent.parent

def render(nb_path=root/'nbs'/'index.ipynb') -> str:
    nb = json.loads(Path(nb_path).read_text())
    out = []
    for c in nb['cells']:
        src = ''.join(c['source']).strip('\n')
        if not src or src.startswith('#| hide'): continue
        if c['cell_type'] == 'markdown': out.append(src)
        elif c['cell_type'] == 'code':
            if '#| echo: false' not in src.splitlines():
                out.append('```python\n' + '\n'.join(l for l in src.splitlines() if not l.startswith('#|')) + '\n```')
            for o in c.get('outputs', []):
                txt = ''.join(o.get('text', '') or o.get('data', {}).get('text/markdown', '')
                              or o.get('data', {}).get('text/plain', ''))
                if txt.strip(): out.append(txt.strip('\n') if 'text/markdown' in o.get('data', {}) else
                                           '```\n' + txt.strip('\n') + '\n```')
    text = '\n\n'.join(out).replace('](../figures/', '](figures/')      # notebook paths → repo-root paths
    return '<!-- generated from nbs/index.ipynb by tools/make_readme.py: edit the notebook -->\n\n' + text + '\n'

if __name__ == '__main__':
    text, readme = render(), root/'README.md'
    if '--check' in sys.argv:
        if not readme.exists() or readme.read_text() != text:
            sys.exit('README.md is out of date with nbs/index.ipynb: run python tools/make_readme.py')
    else: readme.write_text(text)
