"""Tools, function calling and intents.

- `registry`: the daemon's tool registry and executor (schema validation, timeouts,
  result limits, metrics), over the tools plugins register plus WebAssembly tools.
- `calculator`, `clock`, `units`, `device`, `rag`, `web`, `subprocess`: the built-in
  tools (registered by the built-in plugin `rustaid.builtin.tools`).
- `wasm`: sandboxed WebAssembly tool plugins (`plugins/*.wasm`, wasmtime).
- `calling`: how tools are shown to a model and how its calls are constrained
  (a GBNF grammar made from the tools' JSON Schemas) and parsed.
- `agent`: the RunAgent loop.
- `nlu`: intent classification and entity extraction.

Importing this package is cheap: jsonschema, wasmtime, llama_cpp, onnxruntime and
tokenizers are imported on first use.
"""
