"""`midigen studio`: a web page and a JSON API over one loaded model.

The parts, each in its own module:

* ``server``     FastAPI app: the page, the API routes, error mapping; ``run`` binds and serves.
* ``schemas``    the typed request and response bodies (they are the API's OpenAPI documentation).
* ``workspace``  pieces and their versions on disk (atomic writes, ids the server makes, limits).
* ``upload``     client MIDI bytes, read in a child process with ``prepare``'s limits.
* ``jobs``       the engine adapter (every call into the generators) and the single worker + queue.
* ``roll``       a score as piano-roll JSON for the page; streamed tokens as notes.
* ``audio``      WAV rendering (the `--wav` soundfont), cached per version.
* ``static/``    the page: HTML, CSS and JS, no build step, nothing fetched from elsewhere.
"""
