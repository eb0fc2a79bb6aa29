"""edge-embed: an OpenAI-compatible embedding server on onnxruntime, and the tools that build its
bundles.

One import namespace for the whole distribution: `edge_embed.core` (the layer everything stands
on), `edge_embed.service` (the serving runtime), `edge_embed.export` and `edge_embed.quantize`
(the offline tools), `edge_embed.bench`, `edge_embed.corpus`. The core is this folder's own;
the others stay at the top of the repository (`service/`, `export/`, …) and the build maps them
in (pyproject.toml's package-dir), so that nothing generic such as `service` is installed as a
top-level name where another distribution could collide with it.
"""

# The one place the version is written: pyproject.toml reads it from here.
__version__ = "0.1.0"
