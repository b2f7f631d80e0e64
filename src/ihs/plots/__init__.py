"""Matplotlib figures of each analysis (PNG/SVG/PDF files). Computing code never imports these; workflows
write figures through them when saving a result, and the HTML report embeds the files."""
