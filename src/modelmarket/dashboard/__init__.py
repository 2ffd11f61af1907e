"""The web dashboard served by the gateway at ``/``: server-rendered (Jinja2 and htmx), every asset local."""
