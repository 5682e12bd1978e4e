"""Commands that orchestrate several layers (build, serve and loadtest together); nothing below imports them."""
