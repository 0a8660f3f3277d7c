# %% [markdown]
# # See the margins
#
# A notebook-style example (cells marked `# %%`: open it in Jupyter with jupytext, or VS Code, or run it as a
# script). WiM reads the bundled harbor report with the embedded SmolLM2 model; the result renders itself in a
# notebook (`_repr_html_`) and writes the same page to an HTML file (`to_html`): the answer on top, the document cut
# into its segments, each margin beside the segment it was written on, kept or dropped.
#
# The settings are the README's `wim ask` example: margins scored (the default segment_pmi), so the page shows each
# margin's score; with a reply-parsing mode (e.g. `classification="inline"`) it shows the verdict instead.

# %%
import sys
from pathlib import Path

from wim_integrations import WiM

HERE = Path(__file__).resolve().parent
document = (HERE / "harbor_report.txt").read_text(encoding="utf-8")
question = "Who is the new keeper of the Corran Point lighthouse?"

wim = WiM.default()
result = wim.run(document, question, segment_tokens=256)

# %% [markdown]
# In a notebook, the last expression of a cell shows the report:

# %%
result  # noqa: B018 (a notebook shows the last expression of a cell)

# %% [markdown]
# The same page as a self-contained file (inline CSS, no script): open it in any browser.

# %%
out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("harbor_report.html")
result.to_html(out)
kept = len(result.relevant_margins)
print(f"Answer: {result.answer}")
print(f"{len(result.margins)} margins ({kept} kept) over {result.n_segments} segments; report written to {out}")
