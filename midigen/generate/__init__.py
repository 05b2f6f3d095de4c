"""One decoding engine for every generation task: continue a song, write it from nothing, infill a
span, arrange new parts.

The tasks differ only in what is given (the prompt tokens), what may be written (the grammar's mask)
and where writing stops (EOS, a time target, a token budget); ``engine.decode`` runs the one batched,
KV-cached loop for all of them.
"""
