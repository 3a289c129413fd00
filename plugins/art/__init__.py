"""ptk's ART-backed plugins: one module per plugin (``backdoor``, ``clean_label_backdoor``, ``sleeper_agent``,
``gradient_matching``, ``bullseye_polytope``, ``spectral``, ``strip``, ``roni``) and the private helpers they
share: ``_bridge`` (a ptk model and its images as ART takes them), ``_poison`` (ART's poisons back to ptk's
uint8 images, budgets and schedules), ``_triggers`` (ART's backdoor triggers) and ``_activation_defence``
(``activation-clustering.backend=art``).

Nothing is imported here: ART itself is imported only when a plugin runs, so ``ptk plugins`` stays fast.
"""
