"""Retrieval-augmented generation: embeddings, collections of chunked documents in a
vector store, search and grounded answers.

The daemon owns one `rustaid.rag.manager.Rag`; the gRPC RagService is a thin layer over
it. Engines (embedding models, vector stores, document parsers) are plugins.
"""
