"""A real fastembed server beside ours: its model folder, its venv and its process.

fastembed's `TextEmbedding` serves the peers' int8 graph (bench/peer.py: onnxruntime
`quantize_dynamic` of our fp32 graph, what fastembed ships for this model) through its
custom-model API from a local folder: the graph, the bundle's own `tokenizer.json` (cut at the
model's limit, as ours) and the `tokenizer_config.json` fastembed requires for the limit and the
pad token. The folder is cached beside the peer bundle and rebuilt when that graph changes. The
server (bench/fastembed_server.py) runs from its own venv (`make install-fastembed`), which pins
fastembed's own `tokenizers`. (Not named fastembed.py: the server script, run by its path, has
this folder first on sys.path, where such a module would shadow the package.)
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from pathlib import Path

from edge_embed.core.bundle import load_manifest
from edge_embed.core.files import sha256

from .server import Server

FASTEMBED_VENV = Path(".venv-fastembed")
FASTEMBED_SUFFIX = "-fastembed"
# The file naming the graph (sha256) the folder was laid out from.
STAMP = "peer-graph.sha256"
SERVER_SCRIPT = Path(__file__).with_name("fastembed_server.py")


def model_folder(peer: Path) -> Path:
    """fastembed's view of the peer bundle `peer`: laid out beside it, cached."""
    manifest = load_manifest(peer)
    graph = peer / manifest.model_file
    digest = sha256(graph)
    out = peer.parent / (peer.name.removesuffix("-peer-int8") + FASTEMBED_SUFFIX)
    stamp = out / STAMP
    if stamp.is_file() and stamp.read_text(encoding="utf-8").strip() == digest:
        return out
    tokenizer = json.loads((peer / manifest.tokenizer_file).read_text(encoding="utf-8"))
    padding = tokenizer.get("padding") or {}
    staged = out.with_name(out.name + ".tmp")
    shutil.rmtree(staged, ignore_errors=True)
    staged.mkdir(parents=True)
    shutil.copyfile(graph, staged / "model.onnx")
    shutil.copyfile(peer / manifest.tokenizer_file, staged / "tokenizer.json")
    config = {"model_max_length": manifest.max_tokens,
              "pad_token": padding.get("pad_token", "[PAD]")}
    (staged / "tokenizer_config.json").write_text(json.dumps(config) + "\n", encoding="utf-8")
    (staged / STAMP).write_text(digest + "\n", encoding="utf-8")
    shutil.rmtree(out, ignore_errors=True)
    staged.rename(out)
    return out


def python(venv: Path = FASTEMBED_VENV) -> Path | None:
    """The fastembed venv's interpreter, or None where that venv is absent."""
    exe = venv / "bin" / "python"
    return exe if exe.exists() else None


def server(folder: Path, dimensions: int, served_as: str, log_path: Path, exe: Path,
           extra: Sequence[str] = ()) -> Server:
    """The fastembed server on `folder` (model_folder), answering to `served_as`."""
    program = [str(exe), str(SERVER_SCRIPT), "--model-dir", str(folder),
               "--dim", str(dimensions), "--served-as", served_as]
    # fastembed would otherwise look for its cache under /tmp and may try the network.
    env = {"HF_HUB_OFFLINE": "1", "FASTEMBED_CACHE_PATH": str(folder.parent / ".fastembed-cache")}
    return Server(folder, log_path, extra, program=program, env=env)
