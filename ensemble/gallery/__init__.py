"""Searchable galleries: embeddings of a gallery in a persisted faiss index, with rows and model identity."""
