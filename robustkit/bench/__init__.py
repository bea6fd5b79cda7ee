"""The accuracy-matched benchmark: specs (:mod:`.spec`), cells (:mod:`.cells`), runs (:mod:`.runner`),
the gradient-masking audit (:mod:`.audit`), analysis (:mod:`.analysis`) and reports (:mod:`.report`).

Kept import-light: plugins import :mod:`.presets` at registration time.
"""
