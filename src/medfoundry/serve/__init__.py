"""``medfoundry serve``: the web viewer and its HTTP API around the same predictors as the CLI.

:class:`~medfoundry.serve.workbench.Workbench` holds uploads and loaded models (plain Python);
:func:`~medfoundry.serve.app.create_app` puts FastAPI routes and the viewer page around it.
"""
