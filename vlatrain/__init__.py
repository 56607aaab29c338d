"""vlatrain: a lean streaming trainer for vision-language-action policies on vlakit stores.

``vlatrain run CONFIG [key=value ...]`` (``vlatrain.recipes.train.run``) trains; the parts are
library code: ``config`` (typed sections; ``typed`` builds them), ``spec`` (what a policy knows
of its data), ``model`` (backbone + policy head interfaces, the embedded backbone, the heads),
``losses``, ``optim``, ``augment`` (device-side batch preparation), ``data`` (the only module
that reads stores), ``prefetch``, ``loop``, ``checkpoint``, ``evaluate``, ``distributed`` and
``logging``.
"""
