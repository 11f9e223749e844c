"""One module per dashboard view: ``TAB`` (value, label), ``layout()`` and ``register(app, root)``.

Callbacks stay small: they validate what the browser sent, call pure data-access functions
(``app.runs``, ``app.stores``) and a figure builder of ``workbench.figures``, and turn every expected
problem into a message on the page.
"""
