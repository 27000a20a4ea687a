"""Give every notebook in nbs/ the standard python3 kernelspec (papermill needs a language) and drop jupytext's
authoring metadata. Idempotent; run before nbdev_clean."""
import json
from pathlib import Path

KS = {'display_name': 'python3', 'language': 'python', 'name': 'python3'}   # as nbdev_clean writes it
for f in sorted((Path(__file__).resolve().parent.parent/'nbs').glob('*.ipynb')):
    nb = json.loads(f.read_text())
    meta = {k: v for k, v in nb.get('metadata', {}).items() if k != 'jupytext'}
    meta['kernelspec'] = KS
    if meta != nb.get('metadata'):
        nb['metadata'] = meta
        f.write_text(json.dumps(nb, indent=1, ensure_ascii=False) + '\n')
