"""Reports: static HTML and the small figures in it."""
