"""The HTML selection report (``html``) and its figures (``plots``)."""
