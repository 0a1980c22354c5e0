"""maskkit.masks: the generated mask templates (RGBA PNG + anchor JSON) and their generator."""
