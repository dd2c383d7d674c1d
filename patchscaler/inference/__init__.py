"""The inference path of one call, LR in → HR rows out: the plan of patches and bands,
the memory budget, the pipeline (GRM → patches → sampler → blend → decode), the latent
codec, what happened per image (the group map) and the buffer the HR rows land in.

Nothing is imported here, so that importing a submodule imports only what it needs.
"""
